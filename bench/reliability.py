"""Under attack and abuse: a cached press's response time during floods, a trickling engine, SIGTERM after start.

    .venv/bin/python bench/reliability.py              # about a minute
    .venv/bin/python bench/reliability.py --presses 40 --idle 1000 --guesses 300

Runs the real service in this process (buttons on gpiozero's MockFactory, audio to ALSA's `null` device, the
loopback OpenAI-compatible test server) and attacks it from a separate process, so the attacker does not share
the service's event loop. Prints a table and writes --out (JSON). Figures are press → first audio as the service
records it: from the press handed to the event loop to the first frame accepted by the device.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's loopback server, reused rather than copied

from fake_openai import FakeOpenAI  # noqa: E402
from gpiozero.pins.mock import MockFactory  # noqa: E402

from kiosk.config import load_config  # noqa: E402
from kiosk.service import Service  # noqa: E402
from kiosk.staff.auth import PasswordFile  # noqa: E402
from kiosk.status import press_to_audio  # noqa: E402
from kiosk.systemd import Notifier  # noqa: E402

PASSWORD = "bench password, long enough"
LONG_LINE = " ".join(["The hall of minerals holds four thousand specimens from every continent."] * 8)

# The attacker: a separate process, so that its work is not done on the service's event loop.
ATTACKER = textwrap.dedent(
    """
    import asyncio, json, sys, time
    import aiohttp

    async def guesses(base, count, seconds):
        # Waves of `count` wrong passwords at once, one wave after another, for `seconds`.
        jar = aiohttp.CookieJar(unsafe=True)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(base, cookie_jar=jar, connector=connector, headers={"Origin": base}) as http:
            async with http.get("/login") as r:
                token = (await r.text()).split('name="csrf" value="')[1].split('"')[0]
            async def one(i):
                try:
                    async with http.post("/login", data={"csrf": token, "password": f"guess {i}"}) as r:
                        return r.status
                except aiohttp.ClientError:
                    return 0
            print("ready", flush=True)
            statuses, waves, end = [], 0, time.monotonic() + seconds
            while time.monotonic() < end:
                statuses += await asyncio.gather(*(one(i) for i in range(count)))
                waves += 1
            answers = {str(s): statuses.count(s) for s in sorted(set(statuses))}
            print(json.dumps({"waves": waves, "answers": answers}), flush=True)

    async def idle(port, count, seconds):
        # `count` connections that send nothing; each one the server closes is opened again at once.
        end = time.monotonic() + seconds
        opened = 0
        async def hold():
            nonlocal opened
            while time.monotonic() < end:
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.01)
                    continue
                opened += 1
                try:
                    await asyncio.wait_for(reader.read(), max(0.01, end - time.monotonic()))
                except (OSError, asyncio.TimeoutError):
                    pass
                writer.close()
        holders = [asyncio.create_task(hold()) for _ in range(count)]
        await asyncio.sleep(1)
        print("ready", opened, flush=True)
        await asyncio.gather(*holders)
        print(opened, flush=True)

    kind, target, count, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    asyncio.run(guesses(target, count, seconds) if kind == "guesses" else idle(int(target), count, seconds))
    """
)


def write_config(tmp: Path, server_url: str) -> Path:
    path = tmp / "kiosk.yaml"
    path.write_text(
        f"openai:\n  base_url: {server_url}/v1\ncache:\n  dir: {tmp / 'cache'}\n"
        f"history:\n  file: {tmp / 'cache'}.history.sqlite3\n"
        "audio:\n  device: 'null'\napi:\n  port: 0\n  allow_text: true\n  rate_limit_per_min: 100000\n"
        f"staff:\n  bind: 127.0.0.1\n  port: 0\n  password_file: {tmp / 'pw'}\n  settings_file: {tmp / 'staff.yaml'}\n"
        "buttons:\n  - pin: 17\n    phrase: welcome\n    cooldown_ms: 0\n"
        f"phrases:\n  welcome: {LONG_LINE}\n"
    )
    return path


async def presses(service: Service, pins: MockFactory, count: int, gap_s: float = 0.15) -> list[float]:
    """Press the button `count` times; press → first audio of each (ms)."""
    figures = []
    for _ in range(count):
        pins.pin(17).drive_low()
        pins.pin(17).drive_high()
        await asyncio.sleep(gap_s)
        service.speaker.stop()
        await asyncio.wait_for(service.speaker.idle(), 10)
        last = next(r for r in reversed(service.speaker.history.values()) if r.origin == "button:17")
        if press_to_audio(last) is not None:
            figures.append(press_to_audio(last))
    return figures


def summary(figures: list[float]) -> dict:
    if not figures:
        return {"n": 0}
    ordered = sorted(figures)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"n": len(figures), "p50_ms": round(statistics.median(figures), 1), "p95_ms": round(p95, 1)}


async def attacker(*args: str) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", ATTACKER, *args, stdout=asyncio.subprocess.PIPE)
    ready = await asyncio.wait_for(proc.stdout.readline(), 60)
    assert ready.startswith(b"ready"), ready
    return proc, ready.decode().strip()


async def during_login_flood(service, pins, guesses: int, count: int) -> dict:
    seconds = count * 0.25 + 2
    proc, _ = await attacker("guesses", f"http://127.0.0.1:{service.staff_port}", str(guesses), str(seconds))
    figures = await presses(service, pins, count)
    flood = json.loads(await asyncio.wait_for(proc.stdout.readline(), 120))
    await proc.wait()
    return {**summary(figures), "waves_of_guesses": flood["waves"], "login_answers": flood["answers"]}


async def during_idle_flood(service, pins, connections: int, count: int) -> dict:
    seconds = count * 0.25 + 3
    proc, _ = await attacker("idle", str(service.port), str(connections), str(seconds))
    figures = await presses(service, pins, count)
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    status_line = await asyncio.wait_for(reader.readline(), 10)
    health_ms = round((time.monotonic() - started) * 1000, 1)
    writer.close()
    opened = int((await asyncio.wait_for(proc.stdout.readline(), seconds + 30)).decode())
    await proc.wait()
    guard = service._runners[0].guard
    return {
        **summary(figures),
        "healthz": status_line.decode().strip(),
        "healthz_ms": health_ms,
        "connections_opened_by_attacker": opened,
        "peak_open": guard.peak,
        "evicted": guard.evicted,
        "refused": guard.refused,
    }


async def trickle(service, server, trials: int) -> dict:
    """An engine that sends its first byte at once, then one byte a second: how soon the fallback speaks. After
    three such failures in a row the engine is paused, and later lines go straight to the local voice."""
    server.behaviour.chunk_sizes = [1]
    server.behaviour.realtime_factor = 1 / 48_000  # one byte a second
    results = []
    for i in range(trials):
        req = service.play(phrase=None, text=f"Trickle number {i}: the gift shop closes soon.", origin="api")
        await asyncio.wait_for(service.speaker.idle(), 60)
        t = req.trace
        results.append({"first_byte_ms": t.first_byte_ms, "first_audio_ms": t.first_audio_ms, "engine": t.engine})
    server.behaviour.chunk_sizes, server.behaviour.realtime_factor = [4096], None
    failed_over = [r for r in results if r["engine"] != "openai" and r["first_audio_ms"] - r["first_byte_ms"] > 100]
    return {
        "trials": results,
        "first_byte_to_fallback_audio_ms": summary([r["first_audio_ms"] - r["first_byte_ms"] for r in failed_over]),
    }


def sigterm_after_start(tmp: Path, server_url: str, trials: int) -> dict:
    """`kiosk run` as systemd starts it; SIGTERM the moment it says it is running (the local voice still loading)."""
    config = write_config(tmp, server_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "NOTIFY_", "WATCHDOG_"))}
    times = []
    for _ in range(trials):
        proc = subprocess.Popen(
            [sys.executable, "-m", "kiosk", "run", "--config", str(config), "--port", "0"],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        deadline = time.monotonic() + 30
        for line in proc.stderr:
            if "running; API on" in line or time.monotonic() > deadline:
                break
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
        times.append(round((time.monotonic() - sent) * 1000))
        assert code == 0, code
    return {"ms": times, "max_ms": max(times)}


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presses", type=int, default=20)
    parser.add_argument("--guesses", type=int, default=300)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "reliability.json")
    args = parser.parse_args()
    os.environ["OPENAI_API_KEY"] = "bench-key"
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        async with FakeOpenAI() as server:
            config = write_config(tmp, server.url)
            PasswordFile(tmp / "pw").set(PASSWORD)
            pins = MockFactory()
            service = Service(load_config(config), config_path=config, pin_factory=pins, notifier=Notifier({}))
            await service.start()
            try:
                await service.announcer.prepare(LONG_LINE)
                results["quiet"] = summary(await presses(service, pins, args.presses))
                results["login_flood"] = await during_login_flood(service, pins, args.guesses, args.presses)
                results["idle_flood"] = await during_idle_flood(service, pins, args.idle, args.presses)
                results["trickle"] = await trickle(service, server, args.trials)
            finally:
                await service.stop()
            (tmp / "run").mkdir()
            results["sigterm_after_start"] = sigterm_after_start(tmp / "run", server.url, args.trials)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
