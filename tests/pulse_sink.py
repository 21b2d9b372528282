"""A clocked audio device for a machine without a sound card: a PulseAudio null sink behind ALSA's `pulse` plugin.

The null sink consumes audio at its sample clock, so writes block, streams start and underruns (EPIPE) happen as
on a real card. One quirk needs care: with no stream asking for low latency the sink renders ahead in 2 s blocks,
so a new stream's audio can sit unplayed for up to 2 s. A "keeper" stream of silence at 10 ms latency keeps the
sink rendering in small blocks; the sink is ready once a probe stream is consumed at once.

Used by the test suite's `pulse_device` fixture and by the benchmark (bench/).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from kiosk.alsa_output import AlsaOutput
from kiosk.pcm import OPENAI_PCM

DEVICE = "pulse"
_START_TIMEOUT_S = 15.0
_KEEPER_LATENCY_MS = 10
_PROBE_PERIOD_MS = 40


class NullSink:
    """`pulseaudio` with one null sink, on a private socket; `start()` points PULSE_SERVER at it."""

    def __init__(self, runtime: Path):
        self.runtime = runtime
        self.socket = runtime / "native"
        self._procs: list[subprocess.Popen] = []
        self._saved_server: str | None = None

    @staticmethod
    def missing() -> str | None:
        """What is not installed, or None."""
        for tool, package in (("pulseaudio", "pulseaudio"), ("pacat", "pulseaudio-utils")):
            if shutil.which(tool) is None:
                return f"{tool} is not installed (apt install {package} libasound2-plugins)"
        return None

    def start(self) -> str:
        """Start the server and the keeper, wait until the sink plays new streams at once; returns the device."""
        env = dict(os.environ, PULSE_RUNTIME_PATH=str(self.runtime), HOME=str(self.runtime))
        self._spawn(
            [
                "pulseaudio",
                "--daemonize=no",
                "--exit-idle-time=-1",
                "-n",
                "--use-pid-file=no",
                "--disallow-exit",
                "--load=module-null-sink sink_name=kiosk_null_sink",
                f"--load=module-native-protocol-unix auth-anonymous=1 socket={self.socket}",
            ],
            env,
        )
        self._wait_for_socket()
        self._saved_server = os.environ.get("PULSE_SERVER")
        os.environ["PULSE_SERVER"] = f"unix:{self.socket}"
        self._spawn(
            [
                "pacat",
                f"--latency-msec={_KEEPER_LATENCY_MS}",
                "--raw",
                "--format=s16le",
                "--rate=24000",
                "--channels=1",
                "/dev/zero",
            ],
            dict(os.environ),
        )
        self._wait_until_prompt()
        return DEVICE

    def stop(self) -> None:
        if self._saved_server is None:
            os.environ.pop("PULSE_SERVER", None)
        else:
            os.environ["PULSE_SERVER"] = self._saved_server
        for proc in reversed(self._procs):
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self._procs.clear()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _spawn(self, argv: list[str], env: dict[str, str]) -> None:
        self._procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))

    def _wait_for_socket(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        server = self._procs[0]
        while not self.socket.exists():
            if server.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"pulseaudio did not start: {server.stderr.read().decode()[-500:]}")
            time.sleep(0.05)

    def _wait_until_prompt(self) -> None:
        """Probe until a fresh stream's buffer starts draining within a couple of periods of the first write."""
        deadline = time.monotonic() + _START_TIMEOUT_S
        while _probe_delay_s() > 3 * _PROBE_PERIOD_MS / 1000:
            if time.monotonic() > deadline or any(proc.poll() is not None for proc in self._procs):
                self.stop()
                raise RuntimeError("the PulseAudio null sink never started playing new streams promptly")
            time.sleep(0.1)


def _probe_delay_s() -> float:
    """Fill a fresh stream's buffer, then time how long one more period takes to be accepted."""
    out = AlsaOutput(DEVICE, OPENAI_PCM, _PROBE_PERIOD_MS, 4)
    try:
        silence = b"\0" * (out.period_frames * OPENAI_PCM.frame_bytes)
        for _ in range(out.buffer_frames // out.period_frames):
            out.write(silence)
        started = time.monotonic()
        out.write(silence)
        return time.monotonic() - started
    finally:
        out.drop()
        out.close()
