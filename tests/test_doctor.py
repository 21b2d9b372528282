import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_openai import Behaviour, ThreadedFakeOpenAI

EXAMPLE = Path(__file__).parent.parent / "config" / "kiosk.yaml"


@pytest.fixture(scope="module")
def server():
    with ThreadedFakeOpenAI() as fake:
        yield fake


def doctor(tmp_path, env, *args):
    return subprocess.run(
        [sys.executable, "-m", "kiosk", "doctor", "--config", str(EXAMPLE), "--cache-dir", str(tmp_path / "c"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def base_env(server):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "KIOSK_"))}
    return dict(env, OPENAI_API_KEY="sk-doctor-secret", OPENAI_BASE_URL=f"{server.url}/v1")


def test_healthy_setup_is_all_ok(tmp_path, server, alsa_file):
    server.behaviour = Behaviour()
    result = doctor(tmp_path, dict(base_env(server), GPIOZERO_PIN_FACTORY="mock"), "--device", alsa_file[0])
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0].split(None, 1)[1] for line in lines] == [
        "config",
        "audio device",
        "mixer",
        "GPIO",
        "clock",
        "API key",
        "speech engine",
        "cache",
        "disk",
    ]
    clock = lines.pop(4)  # this machine's clock is not synchronized: see tests/test_clock.py
    assert clock == "OK    clock: synchronized" or clock.startswith("WARN  clock: clock not set:")
    gpio = lines.pop(3)
    assert gpio.startswith("WARN  GPIO: mock pin factory: buttons are simulated")
    assert all(line.startswith("OK") for line in lines)
    assert "sk-doctor-secret" not in result.stdout + result.stderr


def test_problems_are_explained_one_line_each(tmp_path, server):
    server.behaviour = Behaviour(api_key="sk-the-right-one")  # ours is refused
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kiosk",
            "doctor",
            "--config",
            str(EXAMPLE),
            "--cache-dir",
            str(blocker / "c"),
            "--device",
            "hw:CARD=Nope",
        ],
        env=base_env(server),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    out = result.stdout
    assert "FAIL  audio device: cannot open ALSA device 'hw:CARD=Nope'" in out and "Playback devices include" in out
    assert "FAIL  speech engine: OpenAI: the API key was refused (401)" in out
    assert "FAIL  cache:" in out and "not writable" in out
    assert "FAIL  GPIO: no GPIO pin factory" in out
    assert "FAIL  GPIO: no GPIO pin factory" in out
