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


class SinkRecorder:
    """What the null sink plays, recorded from its monitor with the wall-clock time each sample was played.

    `parec` reads the monitor in 10 ms fragments; each read is stamped with `time.time()`. A sample's play time is
    the earliest any read after it allows (the read's time less the samples since), so a late read never makes a
    sample look later than it was. Good to about one fragment: 10 ms.
    """

    FRAGMENT_BYTES = 480  # 10 ms of s16le mono at 24 kHz

    def __init__(self, rate: int = 24000):
        self.rate = rate
        self.pcm = bytearray()
        self._reads: list[tuple[float, int]] = []  # (wall time, samples received by then)
        self._proc: subprocess.Popen | None = None
        self._thread = None

    def __enter__(self) -> SinkRecorder:
        import threading

        self._proc = subprocess.Popen(
            [
                "parec",
                "-d",
                "kiosk_null_sink.monitor",
                "--raw",
                "--format=s16le",
                f"--rate={self.rate}",
                "--channels=1",
                "--latency-msec=10",
                "--process-time-msec=5",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self._reads:
            if time.monotonic() > deadline or self._proc.poll() is not None:
                raise RuntimeError("parec recorded nothing from the null sink's monitor")
            time.sleep(0.01)
        return self

    def _read(self) -> None:
        out = self._proc.stdout
        while True:
            chunk = out.read1(self.FRAGMENT_BYTES) if hasattr(out, "read1") else out.read(self.FRAGMENT_BYTES)
            if not chunk:
                return
            at = time.time()
            self.pcm += chunk
            self._reads.append((at, len(self.pcm) // 2))

    def __exit__(self, *exc_info: object) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        self._thread.join(timeout=5)

    def played_at(self, sample: int) -> float:
        """Wall-clock time at which sample number `sample` of the recording was played."""
        return min(at - (total - sample) / self.rate for at, total in self._reads if total > sample)

    def onsets(self, since: float, threshold: int = 1500, quiet_s: float = 0.02) -> list[float]:
        """Wall-clock times at which sound starts after at least `quiet_s` of silence, from `since` on."""
        samples = memoryview(bytes(self.pcm[: len(self.pcm) // 2 * 2])).cast("h")
        quiet_needed, quiet, found = round(quiet_s * self.rate), round(quiet_s * self.rate), []
        first = next((total for at, total in self._reads if at >= since), len(samples))
        first = max(0, first - round(0.2 * self.rate))
        for i in range(first, len(samples)):
            if abs(samples[i]) < threshold:
                quiet += 1
                continue
            if quiet >= quiet_needed:
                found.append(i)
            quiet = 0
        return [self.played_at(i) for i in found if self.played_at(i) >= since]
