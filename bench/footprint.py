"""What `kiosk run` costs a small Pi when idle: resident memory, disk writes per cached press, the local voice's start.

    .venv/bin/python bench/footprint.py                 # about a minute
    .venv/bin/python bench/footprint.py --presses 50 --voice-trials 10 --out bench/results/footprint.json

Runs the real service (`python -m kiosk run`) as a child process, on ALSA's `null` device (so audio output costs no
disk write and no time), with the loopback OpenAI-compatible test server, and reads its /proc/PID files:

- idle RSS: VmRSS once it has been steady for 3 s after READY (and after warming the configured lines), without
  the local voice (OpenAI only, `speech.fallback: none`) and with it (OpenAI first, the local voice loaded as its
  fallback at start, as a Pi with a key runs); and with the local voice as the only engine after it has spoken.
- bytes written per cached press: /proc/PID/io `write_bytes` (bytes the process sent towards the disk) across N
  presses of cached lines (a 2 s and a 48 s line), with the history database on tmpfs (it records every press by
  design; run once more with it on disk for the total), plus how many files in the cache directory changed.
- the local voice's press → first audio for a 40-word sentence (uncached: the entry is removed before each try).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fake_openai import Behaviour, ThreadedFakeOpenAI  # noqa: E402
from profiles import LINES  # noqa: E402

#: 40 words, one sentence: what a label by an exhibit says.
VOICE_LINE = (
    "Carved from a single block of white marble in 1821, this sleeping lion once guarded the gate of a banker's "
    "house in Lucerne, and it was slowly carried over the mountains by boat, by cart and at last by hand."
)
READY_TIMEOUT_S = 120
HISTORY_WRITE_EVERY_S = 60  # history.write_every_s's default


class ServiceRun:
    """`kiosk run` in a child process with its own config, reached over its HTTP API."""

    def __init__(self, scratch: Path, name: str, config: str, env: dict | None = None):
        self.dir = scratch / name
        self.dir.mkdir(exist_ok=True)  # an existing one: a restart, with the cache it left
        self.cache = self.dir / "cache"
        (self.dir / "kiosk.yaml").write_text(config.format(dir=self.dir))
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        with contextlib.suppress(FileNotFoundError):  # left by the run before a restart
            (self.dir / "notify").unlink()
        self._notify.bind(str(self.dir / "notify"))
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "KIOSK_"))}
        environ.update(env or {}, NOTIFY_SOCKET=str(self.dir / "notify"))
        self._log = open(self.dir / "log", "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kiosk", "run", "--config", str(self.dir / "kiosk.yaml")],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=environ,
        )
        self.port = self._wait_ready()

    def _wait_ready(self) -> int:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            self._notify.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                message = self._notify.recv(4096).decode()
            except TimeoutError:
                break
            if "READY=1" in message:
                return int(message.split("API on port ")[1].split(",")[0])
        raise RuntimeError(f"kiosk run not ready within {READY_TIMEOUT_S} s:\n{(self.dir / 'log').read_text()}")

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())

    def wait_warm(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            cache = self.call("GET", "/api/status")["cache"]
            if cache["lines_ready"] == cache["lines_configured"]:
                return
            time.sleep(0.2)
        raise RuntimeError("the configured lines were not warmed in time")

    def play(self, poll_s: float = 0.02, **what: str) -> dict:
        """Trigger a line and wait until it has been spoken; its trace. Each poll is a request the service answers:
        where the service's CPU is scarce (bench/voice_pace.py), poll seldom."""
        playing = self.call("POST", "/api/play", what)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            answer = self.call("GET", f"/api/play/{playing['id']}")
            if answer.get("trace"):
                return answer["trace"]
            time.sleep(poll_s)
        raise RuntimeError(f"{what} did not finish")

    def proc_field(self, name: str, field: str) -> int:
        for line in Path(f"/proc/{self.proc.pid}/{name}").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
        raise KeyError(field)

    def rss_mb(self) -> float:
        return self.proc_field("status", "VmRSS:") / 1024

    def steady_rss_mb(self, steady_s: float = 3.0, timeout_s: float = 60) -> float:
        """VmRSS once it has stayed within 0.5 MB for `steady_s` (a voice still loading keeps growing)."""
        deadline = time.monotonic() + timeout_s
        last, since = self.rss_mb(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.25)
            now = self.rss_mb()
            if abs(now - last) > 0.5:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= steady_s:
                return now
        return self.rss_mb()

    def write_bytes(self) -> int:
        return self.proc_field("io", "write_bytes:")

    def cache_files(self) -> dict[str, tuple]:
        return {
            p.name: (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            for p in self.cache.iterdir()
            if (st := p.stat()) and p.is_file()
        }

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self._notify.close()
        self._log.close()


def config(server_url: str, *, engine: str, fallback: str, history_dir: str = "{dir}", allow_text=False) -> str:
    return (
        f"audio:\n  device: 'null'\nspeech:\n  engine: {engine}\n  fallback: {fallback}\n"
        f"openai:\n  base_url: {server_url}/v1\ncache:\n  dir: {{dir}}/cache\n"
        f"history:\n  file: {history_dir}/history.sqlite3\n"
        f"api:\n  port: 0\n  allow_text: {str(allow_text).lower()}\n  rate_limit_per_min: 100000\n"
        "staff:\n  bind: 127.0.0.1\n  port: 0\n  password_file: {dir}/pw\n  settings_file: {dir}/staff.yaml\n"
        f"phrases:\n  brief: {json.dumps(LINES['brief'])}\n  long: {json.dumps(LINES['long'])}\n"
    )


def cached_presses(run: ServiceRun, presses: int) -> dict:
    """Bytes written and cache files changed over `presses` presses of each cached line."""
    run.wait_warm()
    for phrase in ("brief", "long"):  # each line once, so that anything a first hit does is not counted
        run.play(phrase=phrase)
    time.sleep(1.5)  # the history database's batch of the presses above
    files_before, written_before = run.cache_files(), run.write_bytes()
    firsts = []
    for _ in range(presses):
        for phrase in ("brief", "long"):
            trace = run.play(phrase=phrase)
            assert trace["source"] == "cache", trace
            firsts.append(trace["first_audio_ms"])
    time.sleep(1.5)
    written = run.write_bytes() - written_before
    files_after = run.cache_files()
    names = files_after.keys() | files_before.keys()
    changed = sorted(name for name in names if files_after.get(name) != files_before.get(name))
    return {
        "presses": 2 * presses,
        "write_bytes": written,
        "bytes_per_press": written / (2 * presses),
        "cache_files_changed": changed,
        "first_audio_ms_p50": statistics.median(firsts),
    }


def history_writes(run: ServiceRun, presses: int, write_every_s: float) -> dict:
    """Bytes written during `presses` cached presses, then by the history's next commit of them."""
    during = cached_presses(run, presses)
    written_before = run.write_bytes() - during["write_bytes"]
    deadline = time.monotonic() + write_every_s + 15
    while run.write_bytes() == written_before + during["write_bytes"] and time.monotonic() < deadline:
        time.sleep(0.25)
    time.sleep(2)  # the rest of the commit (WAL frames, then the checkpoint)
    total = run.write_bytes() - written_before
    return {**during, "with_next_commit_bytes": total, "amortized_bytes_per_press": total / during["presses"]}


def local_voice_starts(run: ServiceRun, trials: int) -> list[float]:
    """Press → first audio of the 40-word sentence through the local voice, uncached each time."""
    firsts = []
    for _ in range(trials):
        for entry in run.cache.glob("*.pcm"):
            entry.unlink()
        trace = run.play(text=VOICE_LINE)
        assert trace["source"] == "piper" and not trace["error"], trace
        firsts.append(trace["first_audio_ms"])
    return firsts


def measure(args: argparse.Namespace) -> dict:
    results: dict = {}
    key = {"OPENAI_API_KEY": "bench-key"}
    fast = Behaviour(first_byte_delay_s=0.05, chunk_sizes=[4096])
    with tempfile.TemporaryDirectory(prefix="kiosk-footprint-") as scratch, ThreadedFakeOpenAI() as server:
        scratch = Path(scratch)
        server.behaviour = fast
        with tempfile.TemporaryDirectory(prefix="kiosk-footprint-", dir="/dev/shm") as shm:
            settings = config(server.url, engine="openai", fallback="none", history_dir=shm)
            run = ServiceRun(scratch, "openai", settings, key)
            try:  # the first start: the lines are synthesized, so the SDK is loaded
                run.wait_warm()
                results["idle_rss_mb_without_voice_first_start"] = run.steady_rss_mb()
            finally:
                run.close()
            run = ServiceRun(scratch, "openai", settings, key)
            try:  # every later start: the lines are in the cache
                results["idle_rss_mb_without_voice"] = run.steady_rss_mb()
                results["cached_press"] = cached_presses(run, args.presses)
                results["idle_rss_mb_without_voice_after_presses"] = run.steady_rss_mb()
            finally:
                run.close()
        run = ServiceRun(scratch, "openai-history", config(server.url, engine="openai", fallback="none"), key)
        try:
            results["cached_press_history_on_disk"] = history_writes(run, args.presses, HISTORY_WRITE_EVERY_S)
        finally:
            run.close()
        text = config(server.url, engine="openai", fallback="none", allow_text=True)
        run = ServiceRun(scratch, "openai-text", text, key)
        try:
            results["idle_rss_mb_without_voice_free_text"] = run.steady_rss_mb()  # the SDK is loaded ahead
        finally:
            run.close()
        run = ServiceRun(scratch, "fallback", config(server.url, engine="openai", fallback="piper"), key)
        try:
            results["idle_rss_mb_with_voice"] = run.steady_rss_mb()
        finally:
            run.close()
        run = ServiceRun(scratch, "piper", config(server.url, engine="piper", fallback="none", allow_text=True))
        try:
            results["idle_rss_mb_voice_only"] = run.steady_rss_mb()  # the voice loads at start
            firsts = local_voice_starts(run, args.voice_trials)
            results["local_voice_first_audio_ms"] = firsts
            results["idle_rss_mb_voice_after_speaking"] = run.steady_rss_mb()
        finally:
            run.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presses", type=int, default=20, help="presses of each cached line (default 20)")
    parser.add_argument("--voice-trials", type=int, default=5, help="uncached lines through the local voice")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "footprint.json")
    args = parser.parse_args(argv)
    started = time.monotonic()
    results = measure(args)
    results["command"] = "bench/footprint.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results["load_average"] = os.getloadavg()
    results["wall_s"] = round(time.monotonic() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(summary(results))
    return 0


def summary(r: dict) -> str:
    firsts = sorted(r["local_voice_first_audio_ms"])
    press, history = r["cached_press"], r["cached_press_history_on_disk"]
    return "\n".join(
        [
            f"Command: `{r['command'].strip()}` ({r['wall_s']} s); load average {r['load_average'][0]:.2f}.",
            "",
            "| figure | value |",
            "|---|--:|",
            f"| idle RSS, `kiosk run` without the local voice, first start (lines synthesized) | "
            f"{r['idle_rss_mb_without_voice_first_start']:.0f} MB |",
            f"| same, restarted with its lines in the cache | {r['idle_rss_mb_without_voice']:.0f} MB |",
            f"| idle RSS, same, after {press['presses']} cached presses | "
            f"{r['idle_rss_mb_without_voice_after_presses']:.0f} MB |",
            f"| idle RSS, with the local voice loaded (fallback) | {r['idle_rss_mb_with_voice']:.0f} MB |",
            f"| idle RSS, local voice only, loaded | {r['idle_rss_mb_voice_only']:.0f} MB |",
            f"| idle RSS, local voice only, after speaking {len(firsts)} lines | "
            f"{r['idle_rss_mb_voice_after_speaking']:.0f} MB |",
            f"| bytes written per cached press (history on tmpfs) | {press['bytes_per_press']:.0f} |",
            f"| cache files changed by {press['presses']} cached presses | {len(press['cache_files_changed'])} |",
            f"| idle RSS, without the local voice, free text allowed (SDK loaded ahead) | "
            f"{r['idle_rss_mb_without_voice_free_text']:.0f} MB |",
            f"| bytes written during {history['presses']} cached presses, history database on disk | "
            f"{history['write_bytes']} |",
            f"| same, with the history's next commit | {history['with_next_commit_bytes']} "
            f"({history['amortized_bytes_per_press']:.0f} per press) |",
            f"| local voice press → first audio, 40-word sentence, min / median / max of {len(firsts)} | "
            f"{firsts[0]:.0f} / {statistics.median(firsts):.0f} / {firsts[-1]:.0f} ms |",
        ]
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
