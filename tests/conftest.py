"""Shared fixtures: real ALSA through its `file` plugin, and a clocked PulseAudio null sink."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI

from kiosk.alsa_output import AlsaOutput
from kiosk.pcm import AudioFormat


@pytest.fixture
async def server():
    """The OpenAI-compatible test server on loopback, well behaved until a test changes `server.behaviour`."""
    async with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def alsa_file(tmp_path: Path):
    """An ALSA device string that captures exactly the bytes written, and the file they land in."""
    out = tmp_path / "alsa-out.raw"
    return f"file:FILE={out},FORMAT=raw", out


def file_sink_opener(device: str, period_ms: int = 40, buffer_periods: int = 4):
    def open_sink(fmt: AudioFormat) -> AlsaOutput:
        return AlsaOutput(device, fmt, period_ms, buffer_periods)

    return open_sink


@pytest.fixture(scope="session")
def pulse_device(tmp_path_factory):
    """ALSA device "pulse" backed by a PulseAudio null sink: a device that keeps time and really underruns."""
    binary = shutil.which("pulseaudio")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("pulseaudio is not installed (apt install pulseaudio libasound2-plugins)")
        pytest.skip("pulseaudio is not installed")
    runtime = tmp_path_factory.mktemp("pulse")
    socket = runtime / "native"
    env = dict(os.environ, PULSE_RUNTIME_PATH=str(runtime), HOME=str(runtime))
    proc = subprocess.Popen(
        [
            binary,
            "--daemonize=no",
            "--exit-idle-time=-1",
            "-n",
            "--use-pid-file=no",
            "--disallow-exit",
            "--load=module-null-sink sink_name=kiosk_test_sink",
            f"--load=module-native-protocol-unix auth-anonymous=1 socket={socket}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 15
    while not socket.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"pulseaudio did not start: {proc.stderr.read().decode()[-500:]}")
        time.sleep(0.05)
    saved = os.environ.get("PULSE_SERVER")
    os.environ["PULSE_SERVER"] = f"unix:{socket}"
    yield "pulse"
    if saved is None:
        os.environ.pop("PULSE_SERVER", None)
    else:
        os.environ["PULSE_SERVER"] = saved
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
