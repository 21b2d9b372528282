"""`kiosk` as a staff member or script runs it: a real process, real ALSA file plugin, the loopback test server."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_openai import Behaviour, ThreadedFakeOpenAI, pcm_for

EXAMPLE = Path(__file__).parent.parent / "config" / "kiosk.yaml"
WELCOME = "Welcome to the hall of minerals."
TRACE_FIELDS = {"source", "first_byte_ms", "first_audio_ms", "frames", "underruns", "duration_ms"}


@pytest.fixture(scope="module")
def server():
    with ThreadedFakeOpenAI() as fake:
        yield fake


@pytest.fixture
def env(server):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "KIOSK_"))}
    env.update(OPENAI_API_KEY="sk-cli-test-secret", OPENAI_BASE_URL=f"{server.url}/v1")
    server.behaviour = Behaviour()
    return env


def kiosk(*args, env, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "kiosk", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def say(tmp_path, env, *args, config=EXAMPLE):
    out = tmp_path / "out.raw"
    return kiosk(
        "say",
        "--config",
        str(config),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--device",
        f"file:FILE={out},FORMAT=raw",
        "--trace",
        *args,
        env=env,
    ), out


def test_say_phrase_then_again_from_cache_with_trace(tmp_path, env, server):
    first, out = say(tmp_path, env, "--phrase", "welcome")
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert len(lines) == 1
    trace = json.loads(lines[0])
    assert trace.keys() >= TRACE_FIELDS
    assert trace["source"] == "openai" and trace["first_byte_ms"] > 0 and trace["first_audio_ms"] > 0
    assert trace["frames"] == len(pcm_for(WELCOME)) // 2 and trace["underruns"] == 0
    assert out.read_bytes().startswith(pcm_for(WELCOME))

    again, _ = say(tmp_path, env, "--phrase", "welcome")
    trace = json.loads(again.stdout)
    assert trace["source"] == "cache" and trace["first_byte_ms"] is None and trace["first_audio_ms"] >= 0


def test_say_free_text_and_cache_commands(tmp_path, env):
    result, _ = say(tmp_path, env, "The gift shop closes in ten minutes.")
    assert result.returncode == 0, result.stderr
    listing = kiosk("cache", "list", "--config", str(EXAMPLE), "--cache-dir", str(tmp_path / "cache"), env=env)
    assert listing.returncode == 0
    assert "The gift shop closes in ten minutes." in listing.stdout and "1 entries" in listing.stdout

    verify = kiosk("cache", "verify", "--config", str(EXAMPLE), "--cache-dir", str(tmp_path / "cache"), env=env)
    assert verify.returncode == 0 and "1 entries ok, 0 corrupt" in verify.stdout
    entry = next((tmp_path / "cache").glob("*.pcm"))
    entry.write_bytes(entry.read_bytes()[:-2])
    verify = kiosk("cache", "verify", "--config", str(EXAMPLE), "--cache-dir", str(tmp_path / "cache"), env=env)
    assert verify.returncode == 1 and "0 entries ok, 1 corrupt entries removed" in verify.stdout

    say(tmp_path, env, "Another announcement.")
    prune = kiosk(
        "cache", "prune", "--max-mb", "0", "--config", str(EXAMPLE), "--cache-dir", str(tmp_path / "cache"), env=env
    )
    assert prune.returncode == 0 and "evicted 1 entries" in prune.stdout


def test_pinned_exhibit_lines_survive_prune(tmp_path, env):
    say(tmp_path, env, "--phrase", "welcome")
    say(tmp_path, env, "An ad-hoc line.")
    prune = kiosk(
        "cache", "prune", "--max-mb", "0", "--config", str(EXAMPLE), "--cache-dir", str(tmp_path / "cache"), env=env
    )
    assert "evicted 1 entries" in prune.stdout
    listing = kiosk("cache", "list", "--config", str(EXAMPLE), "--cache-dir", str(tmp_path / "cache"), env=env)
    assert WELCOME in listing.stdout and "yes" in listing.stdout and "ad-hoc" not in listing.stdout


def assert_one_line_error(result, code, *fragments):
    assert result.returncode == code
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("kiosk: error") or "config:" in line]
    assert errors, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr
    assert "sk-cli-test-secret" not in result.stderr + result.stdout


def test_expected_faults_are_one_clear_line(tmp_path, env, server):
    no_key = {k: v for k, v in env.items() if k != "OPENAI_API_KEY"}
    openai_only = tmp_path / "openai-only.yaml"  # no local voice to fall back on
    openai_only.write_text(
        EXAMPLE.read_text()
        .replace("  engine: auto\n", "  engine: openai\n")
        .replace("  fallback: auto\n", "  fallback: none\n")
    )
    result = kiosk("say", "--config", str(openai_only), "--cache-dir", str(tmp_path / "c"), "Hello", env=no_key)
    assert_one_line_error(result, 1, "no OpenAI API key")

    bad_device = kiosk(
        "say", "--config", str(EXAMPLE), "--cache-dir", str(tmp_path / "c"), "--device", "hw:CARD=Nope", "Hi", env=env
    )
    assert_one_line_error(bad_device, 1, "cannot open ALSA device 'hw:CARD=Nope'", "Sound cards:")

    down = dict(env, OPENAI_BASE_URL="http://127.0.0.1:9/v1")
    assert_one_line_error(say(tmp_path, down, "Hello", config=openai_only)[0], 1, "cannot connect")

    server.behaviour = Behaviour(status=401)
    assert_one_line_error(say(tmp_path, env, "Hello", config=openai_only)[0], 1, "API key was refused")
    result, _ = say(tmp_path, env, "Hello")  # with the local voice standing by, the line is still spoken
    trace = json.loads(result.stdout)
    assert result.returncode == 0 and trace["source"] == "piper" and "API key was refused" in trace["failover"][0]

    assert_one_line_error(say(tmp_path, env, "--phrase", "nope")[0], 2, "no phrase 'nope'", "known: goodbye")
    missing = kiosk("say", "--config", str(tmp_path / "none.yaml"), "Hi", env=env)
    assert_one_line_error(missing, 2, "cannot read config file")
    bad = tmp_path / "bad.yaml"
    bad.write_text("audio:\n  preroll: 100\n  period_ms: 1\n")
    assert_one_line_error(
        kiosk("say", "--config", str(bad), "Hi", env=env),
        2,
        "did you mean 'preroll_ms'",
        "audio.period_ms: 1 is out of range",
    )
    twice = tmp_path / "twice.yaml"
    twice.write_text("audio:\n  device: hw:0\naudio:\n  device: hw:1\n")
    assert_one_line_error(kiosk("say", "--config", str(twice), "Hi", env=env), 2, "duplicate key 'audio'")


def test_wav_output_when_there_is_no_sound_card(tmp_path, env):
    wav = tmp_path / "line.wav"
    result = kiosk(
        "say", "--config", str(EXAMPLE), "--cache-dir", str(tmp_path / "c"), "--wav", str(wav), "Hello", env=env
    )
    assert result.returncode == 0, result.stderr
    import wave

    with wave.open(str(wav)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24_000, 1, 2)
        assert w.readframes(w.getnframes()).startswith(pcm_for("Hello"))
