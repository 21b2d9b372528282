"""`kiosk run` as systemd runs it: a real process, signals, a clocked audio device."""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from fake_openai import ThreadedFakeOpenAI

LONG_LINE = " ".join(["The hall of minerals holds four thousand specimens from every continent."] * 3)


@pytest.fixture(scope="module")
def server():
    with ThreadedFakeOpenAI() as fake:
        yield fake


class Running:
    def __init__(self, config_path, env, *args):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kiosk", "run", "--config", str(config_path), "--port", "0", *args],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        line = self.wait_for("running; API on", timeout=20)
        self.url = line.split("API on ")[1].strip()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.put(line)

    def wait_for(self, fragment, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.log.append(line)
            if fragment in line:
                return line
        raise AssertionError(f"no {fragment!r} within {timeout} s; log: {''.join(self.log)[-2000:]}")

    def request(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if method == "POST" else {}
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


def write_config(path, cache_dir, phrases, extra=""):
    lines = "".join(f"  {k}: {v}\n" for k, v in phrases.items())
    path.write_text(
        f"cache:\n  dir: {cache_dir}\n"
        f"history:\n  file: {cache_dir}.history.sqlite3\n"
        f"staff:\n  enabled: false\napi:\n  allow_text: true\n{extra}phrases:\n{lines}"
    )


@pytest.fixture
def env(server):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "KIOSK_", "NOTIFY_", "WATCHDOG_"))}
    env.update(OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=f"{server.url}/v1")
    return env


def test_sigterm_stops_playback_and_exits_0_within_1_5_s(tmp_path, env, pulse_device):
    config = tmp_path / "kiosk.yaml"
    write_config(config, tmp_path / "cache", {"welcome": "Welcome."})
    env["PULSE_SERVER"] = os.environ["PULSE_SERVER"]
    running = Running(config, env, "--device", pulse_device)
    try:
        status, _body = running.request("POST", "/api/play", {"text": LONG_LINE})
        assert status == 202
        deadline = time.monotonic() + 10
        while running.request("GET", "/api/status")[1]["state"] != "speaking":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(2.5)  # well into the line (PulseAudio holds a new stream for up to 2 s)
        assert running.request("GET", "/api/status")[1]["state"] == "speaking"
        sent = time.monotonic()
        running.proc.send_signal(signal.SIGTERM)
        code = running.proc.wait(timeout=5)
        took = time.monotonic() - sent
        assert code == 0 and took < 1.5, f"exit {code} after {took:.2f} s"
    finally:
        running.kill()


def test_sighup_reloads_and_a_bad_config_keeps_the_running_one(tmp_path, env, alsa_file):
    config = tmp_path / "kiosk.yaml"
    write_config(config, tmp_path / "cache", {"welcome": "Welcome."})
    running = Running(config, env, "--device", alsa_file[0])
    try:
        assert running.request("POST", "/api/play", {"phrase": "quartz"})[0] == 404
        write_config(config, tmp_path / "cache", {"welcome": "Welcome.", "quartz": "Quartz is hard."})
        running.proc.send_signal(signal.SIGHUP)
        running.wait_for("config reloaded", timeout=10)
        assert running.request("POST", "/api/play", {"phrase": "quartz"})[0] == 202

        config.write_text("audio:\n  preroll_ms: lots\nphrases:\n  Bad Id: x\n")
        running.proc.send_signal(signal.SIGHUP)
        running.wait_for("audio.preroll_ms: must be a whole number", timeout=10)
        running.wait_for("keeping the running config", timeout=10)
        assert running.request("POST", "/api/play", {"phrase": "quartz"})[0] == 202
        assert running.proc.poll() is None
    finally:
        running.proc.send_signal(signal.SIGTERM)
        assert running.proc.wait(timeout=5) == 0
        running.kill()
