"""SIGTERM → exit of `kiosk run`, idle and under load, on a clocked audio device.

    .venv/bin/python bench/shutdown.py                 # 10 trials each, about a minute
    .venv/bin/python bench/shutdown.py --trials 30 --out bench/results/shutdown.json

Each trial starts `kiosk run` as systemd would (its own process, the loopback OpenAI-compatible test server, a
PulseAudio null sink that keeps time), waits for it to be running, and then either sends SIGTERM at once ("idle")
or first loads it: a long uncached line streaming to the device, a listener on /api/speech, and a client polling
/api/status and /metrics without pause ("load"). The figure is the wall time from SIGTERM to the process's exit;
the goal is 1.5 s at most.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's loopback server and null sink, reused

from fake_openai import ThreadedFakeOpenAI  # noqa: E402
from mosquitto import Broker  # noqa: E402
from pulse_sink import NullSink  # noqa: E402

from kiosk.staff.auth import PasswordFile  # noqa: E402

LONG_LINE = " ".join(["The hall of minerals holds four thousand specimens from every continent."] * 6)
START_TIMEOUT_S = 30.0


def write_config(path: Path, cache_dir: Path, broker_port: int | None) -> None:
    """The service as tried in the field: free text on; with a broker, also the staff page (a password set), the
    MQTT link with discovery and OSC."""
    links = ""
    if broker_port is not None:
        password = cache_dir.parent / f"{cache_dir.name}.passwd"
        PasswordFile(password).set("bench password, long enough")
        links = (
            f"staff:\n  enabled: true\n  port: 0\n  bind: 127.0.0.1\n  password_file: {password}\n"
            f"  settings_file: {cache_dir}.settings.yaml\n"
            f"mqtt:\n  host: 127.0.0.1\n  port: {broker_port}\n  device_id: {cache_dir.name.lower()}\n"
            "osc:\n  enabled: true\n  port: 0\n"
        )
    else:
        links = "staff:\n  enabled: false\n"
    path.write_text(
        f"cache:\n  dir: {cache_dir}\nhistory:\n  file: {cache_dir}.history.sqlite3\n{links}"
        "api:\n  allow_text: true\nphrases:\n  welcome: Welcome to the hall of minerals.\n"
    )


class Speaker:
    """One `kiosk run` process; `url` once it says it is running."""

    def __init__(self, config: Path, env: dict, device: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kiosk", "run", "--config", str(config), "--port", "0", "--device", device],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.url = self._wait_running()
        threading.Thread(target=self._drain, daemon=True).start()

    def _wait_running(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        assert self.proc.stderr is not None
        seen = []
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            seen.append(line)
            if "running; API on" in line:
                return line.split("API on ")[1].strip()
        self.proc.kill()
        raise RuntimeError("kiosk run did not start: " + "".join(seen[-10:]))

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for _line in self.proc.stderr:
            pass

    def post(self, path: str, body: dict) -> int:
        req = urllib.request.Request(
            self.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(req, timeout=5) as response:
            return response.status

    def sigterm_to_exit_s(self) -> float:
        sent = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            return float("inf")
        return time.monotonic() - sent


def load(speaker: Speaker, stop: threading.Event) -> list[threading.Thread]:
    """Keep the speaker busy: a long line playing, a listener streaming, a client polling without pause."""

    def listen() -> None:
        query = urllib.parse.urlencode({"text": LONG_LINE + " Listen."})
        try:
            with urllib.request.urlopen(f"{speaker.url}/api/speech?{query}", timeout=10) as response:
                while not stop.is_set() and response.read(4096):
                    pass
        except (OSError, http.client.HTTPException):  # cut off by the SIGTERM: expected
            pass

    def poll() -> None:
        while not stop.is_set():
            for path in ("/api/status", "/metrics", "/healthz"):
                try:
                    with urllib.request.urlopen(speaker.url + path, timeout=2) as response:
                        response.read()
                except (OSError, http.client.HTTPException):
                    return

    speaker.post("/api/play", {"text": LONG_LINE})
    threads = [threading.Thread(target=job, daemon=True) for job in (listen, poll, poll)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)  # the line is playing and the listener is streaming
    return threads


def trial(tmp: Path, env: dict, device: str, loaded: bool, n: int, broker_port: int | None) -> float:
    config = tmp / f"kiosk-{n}-{loaded}.yaml"
    write_config(config, tmp / f"cache-{n}-{loaded}", broker_port)
    speaker = Speaker(config, env, device)
    stop = threading.Event()
    threads = load(speaker, stop) if loaded else []
    took = speaker.sigterm_to_exit_s()
    stop.set()
    for thread in threads:
        thread.join(timeout=5)
    return took


def summary(times: list[float]) -> dict:
    ordered = sorted(times)
    return {
        "trials": len(times),
        "p50_s": round(statistics.median(ordered), 3),
        "max_s": round(ordered[-1], 3),
        "over_1_5_s": sum(t > 1.5 for t in ordered),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--plain", action="store_true", help="API only: no staff page, MQTT link or OSC")
    parser.add_argument("--local-voice", action="store_true", help="no OpenAI key: the local Piper voice speaks")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kiosk-shutdown-") as tmp_name, ThreadedFakeOpenAI() as server:
        tmp = Path(tmp_name)
        sink = NullSink(tmp / "pulse")
        (tmp / "pulse").mkdir()
        device = sink.start()
        (tmp / "mqtt").mkdir()
        broker = None if args.plain else Broker(tmp / "mqtt").start()
        port = broker.port if broker else None
        try:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "NOTIFY_", "WATCHDOG_"))}
            if not args.local_voice:
                env.update(OPENAI_API_KEY="sk-bench", OPENAI_BASE_URL=f"{server.url}/v1")
            results = {}
            for mode, loaded in (("idle", False), ("load", True)):
                times = [trial(tmp, env, device, loaded, i, port) for i in range(args.trials)]
                results[mode] = summary(times)
                print(f"{mode:5}  " + "  ".join(f"{k} {v}" for k, v in results[mode].items()), flush=True)
        finally:
            sink.stop()
            if broker:
                broker.stop()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["max_s"] <= 1.5 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
