"""Under attack and abuse: a cached press's response time during floods, a trickling engine, SIGTERM after start.

    .venv/bin/python bench/reliability.py              # about a minute
    .venv/bin/python bench/reliability.py --presses 40 --idle 1000 --guesses 300
    .venv/bin/python bench/reliability.py --only slow-body --slow-addresses 12 --slow-per-address 32
    .venv/bin/python bench/reliability.py --only sse-flood --sse 1000 --sse-addresses 63

Runs the real service in this process (buttons on gpiozero's MockFactory, audio to ALSA's `null` device, the
loopback OpenAI-compatible test server) and attacks it from a separate process, so the attacker does not share
the service's event loop. Prints a table and writes --out (JSON). Figures are press → first audio as the service
records it: from the press handed to the event loop to the first frame accepted by the device. During the
slow-body flood a third process, from an address of its own, times `/healthz` on the API and `/login` on the staff
page, each on a fresh connection. During the caption-events flood the attacker holds idle `/captions/events` streams
that it never reads (the socket is not read at all) from many loopback addresses, and a fresh address then follows
the captions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
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

import aiohttp  # noqa: E402
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

    def slow_head(port, path, extra):
        head = f"POST {path} HTTP/1.1\\r\\nHost: 127.0.0.1:{port}\\r\\n{extra}Content-Length: 1000\\r\\n\\r\\n"
        return head.encode()

    async def slow(api_port, staff_port, addresses, per_address, seconds, gap):
        # From each of `addresses` source addresses, `per_address` connections to each server, each sending its body
        # one byte every `gap` s; each one the server closes is opened again at once.
        end = time.monotonic() + seconds
        counts = {"opened": 0, "answered": 0}
        api = slow_head(api_port, "/api/play", "Content-Type: application/json\\r\\n")
        form = f"Origin: http://127.0.0.1:{staff_port}\\r\\nContent-Type: application/x-www-form-urlencoded\\r\\n"
        staff = slow_head(staff_port, "/login", form)
        async def hold(port, head, source):
            while time.monotonic() < end:
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
                except OSError:
                    await asyncio.sleep(0.01)
                    continue
                counts["opened"] += 1
                writer.write(head)
                closed = asyncio.ensure_future(reader.read(1))
                try:
                    while time.monotonic() < end and not closed.done():
                        writer.write(b"x")
                        await asyncio.wait({closed}, timeout=min(gap, max(0.01, end - time.monotonic())))
                    counts["answered"] += closed.done() and not closed.exception() and bool(closed.result())
                except OSError:
                    pass
                finally:
                    closed.cancel()
                    writer.close()
        sources = [f"127.0.0.{2 + i}" for i in range(addresses)]
        targets = [(api_port, api), (staff_port, staff)]
        holders = [hold(p, h, s) for s in sources for p, h in targets for _ in range(per_address)]
        holding = asyncio.gather(*holders)
        await asyncio.sleep(4)  # every slot taken, and past the slow-body grace (3 s)
        print("ready", counts["opened"], flush=True)
        await holding
        print(json.dumps(counts), flush=True)

    async def probe(api_port, staff_port, seconds, source, timeout):
        # /healthz and /login in turn, each on a fresh connection from `source`: ms, or None when not answered 200.
        async def one(url):
            connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
            began = time.monotonic()
            try:
                limit = aiohttp.ClientTimeout(total=timeout)
                async with aiohttp.ClientSession(connector=connector, timeout=limit) as http:
                    async with http.get(url) as r:
                        await r.read()
                        return round((time.monotonic() - began) * 1000, 2) if r.status == 200 else None
            except (aiohttp.ClientError, asyncio.TimeoutError):
                return None
        print("ready", flush=True)
        results, end = {"healthz": [], "login": []}, time.monotonic() + seconds
        while time.monotonic() < end:
            results["healthz"].append(await one(f"http://127.0.0.1:{api_port}/healthz"))
            results["login"].append(await one(f"http://127.0.0.1:{staff_port}/login"))
            await asyncio.sleep(0.05)
        print(json.dumps(results), flush=True)

    async def sse(port, count, addresses, seconds):
        # `count` connections from `addresses` source addresses taking turns, each asking for the caption events and
        # then reading nothing: its socket is not read, what the server sends stays in the kernel's buffers. One the
        # server closes (seen in the socket's TCP state, without reading) is opened again at once.
        import socket
        end = time.monotonic() + seconds
        counts = {"opened": 0, "closed_by_server": 0}
        held = []
        head = f"GET /captions/events HTTP/1.1\\r\\nHost: 127.0.0.1:{port}\\r\\nAccept: text/event-stream\\r\\n\\r\\n"
        async def hold(source):
            while time.monotonic() < end:
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
                except OSError:
                    await asyncio.sleep(0.01)
                    continue
                counts["opened"] += 1
                writer.transport.pause_reading()
                writer.write(head.encode())
                sock = writer.get_extra_info("socket")
                established = lambda: sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == 1
                while time.monotonic() < end and established():
                    await asyncio.sleep(0.1)
                if time.monotonic() < end:
                    counts["closed_by_server"] += 1
                    writer.close()
                else:
                    held.append((reader, writer))
        async def answer(reader, writer):
            # At the end, what each connection still open was answered: read only now.
            writer.transport.resume_reading()
            try:
                line = await asyncio.wait_for(reader.readline(), 2)
            except (OSError, asyncio.TimeoutError):
                line = b""
            writer.close()
            return line.split()[1].decode() if line.startswith(b"HTTP/1.1 ") else "none"
        sources = [f"127.0.0.{2 + i}" for i in range(addresses)]
        holding = asyncio.gather(*(hold(sources[i % addresses]) for i in range(count)))
        await asyncio.sleep(3)  # every connection made once, and the refused ones made again
        print("ready", counts["opened"], flush=True)
        await holding
        answers = await asyncio.gather(*(answer(r, w) for r, w in held))
        counts["open_at_end"] = {a: answers.count(a) for a in sorted(set(answers))}
        print(json.dumps(counts), flush=True)

    kind, args = sys.argv[1], sys.argv[2:]
    if kind == "sse":
        asyncio.run(sse(*map(int, args[:3]), float(args[3])))
    elif kind == "slow":
        asyncio.run(slow(*map(int, args[:4]), float(args[4]), float(args[5])))
    elif kind == "probe":
        asyncio.run(probe(int(args[0]), int(args[1]), float(args[2]), args[3], float(args[4])))
    else:
        target, count, seconds = args[0], int(args[1]), float(args[2])
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
        "captions:\n  bind: 127.0.0.1\n  port: 0\n"
        "buttons:\n  - pin: 17\n    phrase: welcome\n    cooldown_ms: 0\n"
        f"phrases:\n  welcome: {LONG_LINE}\n"
    )
    return path


PROBE_TIMEOUT_S = 2.0  # a probe not answered 200 within this is "not answered"
PRESS_WINDOW_S = 0.15  # each press is stopped this long after it: one with no audio by then is "late"


async def presses(service: Service, pins: MockFactory, count: int, gap_s: float = PRESS_WINDOW_S) -> list[float | None]:
    """Press the button `count` times; press → first audio of each (ms), None for one with no audio within gap_s."""
    figures: list[float | None] = []
    for _ in range(count):
        pins.pin(17).drive_low()
        pins.pin(17).drive_high()
        await asyncio.sleep(gap_s)
        service.speaker.stop()
        await asyncio.wait_for(service.speaker.idle(), 10)
        last = next(r for r in reversed(service.speaker.history.values()) if r.origin == "button:17")
        figures.append(press_to_audio(last))
    return figures


def summary(figures: list[float | None], window_ms: float = PRESS_WINDOW_S * 1000) -> dict:
    """n, p50 and p95 in ms; a figure of None (no audio, no answer within window_ms) counts as slower than any, so
    that leaving it out cannot flatter a percentile."""
    if not figures:
        return {"n": 0}
    late = figures.count(None)
    ordered = sorted(f for f in figures if f is not None) + [math.inf] * late
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    result = {"n": len(figures), "p50_ms": _ms(statistics.median(ordered), window_ms), "p95_ms": _ms(p95, window_ms)}
    return {**result, "late": late} if late else result


def _ms(value: float, window_ms: float) -> float | str:
    return round(value, 1) if value < math.inf else f"> {window_ms:g}"


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


async def during_slow_body_flood(service, pins, addresses: int, per_address: int, gap_s: float, count: int) -> dict:
    """Bodies sent one byte at a time from `addresses` machines to both servers; meanwhile presses, and a fresh
    address asking the API for /healthz and the staff page for /login."""
    seconds = count * 0.25 + 4
    guards = [runner.guard for runner in service._runners]
    before = [_counters(g) for g in guards]
    ports = (str(service.port), str(service.staff_port))
    flood, ready = await attacker("slow", *ports, str(addresses), str(per_address), str(seconds + 3), str(gap_s))
    prober, _ = await attacker("probe", *ports, str(seconds), "127.0.0.200", str(PROBE_TIMEOUT_S))
    figures = await presses(service, pins, count)
    probes = json.loads(await asyncio.wait_for(prober.stdout.readline(), seconds + 30))
    opened = json.loads(await asyncio.wait_for(flood.stdout.readline(), seconds + 60))
    await asyncio.wait_for(asyncio.gather(prober.wait(), flood.wait()), 30)
    closed = [{k: v - was[k] for k, v in _counters(g).items()} for g, was in zip(guards, before, strict=True)]
    return {
        **summary(figures),
        "flood": f"{addresses} addresses x {per_address} connections to each server, a byte every {gap_s:g} s",
        "slow_connections_at_ready": int(ready.split()[1]),
        **{f"slow_{k}": v for k, v in opened.items()},
        "healthz": probe_summary(probes["healthz"]),
        "login": probe_summary(probes["login"]),
        "api_guard": {"peak_open": guards[0].peak, **closed[0]},
        "staff_guard": {"peak_open": guards[1].peak, **closed[1]},
    }


async def during_sse_flood(service, pins, connections: int, addresses: int, count: int) -> dict:
    """`connections` caption streams that are never read, from `addresses` machines; meanwhile presses (each line's
    captions go to every stream), then a fresh address following the captions."""
    seconds = count * 0.25 + 4
    port = service.parts.captions_port
    guard = next(r.guard for r in service._runners if r.addresses[0][1] == port)
    before = _counters(guard)
    feed, peak = service.captions, [0]

    async def sample() -> None:
        while True:
            peak[0] = max(peak[0], feed.followers)
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    try:
        flood, ready = await attacker("sse", str(port), str(connections), str(addresses), str(seconds))
        followers_at_ready = feed.followers
        figures = await presses(service, pins, count)
        newcomer = [await first_state(f"http://127.0.0.1:{port}/captions/events") for _ in range(5)]
        held = json.loads(await asyncio.wait_for(flood.stdout.readline(), seconds + 60))
        await asyncio.wait_for(flood.wait(), 30)
    finally:
        sampler.cancel()
    closed = {k: v - before[k] for k, v in _counters(guard).items()}
    return {
        **summary(figures),
        "flood": f"{connections} never-read /captions/events streams from {addresses} addresses, reopened when closed",
        "attacker_connections_at_ready": int(ready.split()[1]),
        "followers_at_ready": followers_at_ready,
        "followers_peak": peak[0],
        "attacker": held,
        "captions_guard": {"peak_open": guard.peak, **closed},
        "newcomer_first_state": probe_summary(newcomer),
    }


async def first_state(url: str, source: str = "127.0.0.200") -> float | None:
    """Follow the captions from a fresh address: ms to the first state, None when not sent within PROBE_TIMEOUT_S."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    began = time.monotonic()
    try:
        limit = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
        async with aiohttp.ClientSession(connector=connector, timeout=limit) as http, http.get(url) as response:
            if response.status == 200:
                async for line in response.content:
                    if line.startswith(b"data: "):
                        return round((time.monotonic() - began) * 1000, 2)
    except (aiohttp.ClientError, TimeoutError):
        pass
    return None


def _counters(guard) -> dict:
    return {"evicted": guard.evicted, "refused": guard.refused, "cut": guard.cut}


def probe_summary(times: list[float | None]) -> dict:
    answered = sum(1 for t in times if t is not None)
    return {"answered": f"{answered}/{len(times)}", **summary(times, window_ms=PROBE_TIMEOUT_S * 1000)}


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
    parser.add_argument("--slow-addresses", type=int, default=12)
    parser.add_argument("--slow-per-address", type=int, default=32)
    parser.add_argument("--slow-gap", type=float, default=1.0, help="seconds between a slow body's bytes")
    parser.add_argument("--sse", type=int, default=1000, help="never-read caption streams held during the flood")
    parser.add_argument("--sse-addresses", type=int, default=63, help="machines they come from (127.0.0.2 on)")
    parser.add_argument(
        "--only", choices=("slow-body", "sse-flood"), help="run this condition alone (after the quiet presses)"
    )
    parser.add_argument("--out", type=Path, help="JSON results (default bench/results/reliability[-ONLY].json)")
    args = parser.parse_args()
    args.out = args.out or ROOT / "bench" / "results" / f"reliability{'-' + args.only if args.only else ''}.json"
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
                if args.only is None:
                    results["login_flood"] = await during_login_flood(service, pins, args.guesses, args.presses)
                    results["idle_flood"] = await during_idle_flood(service, pins, args.idle, args.presses)
                if args.only in (None, "slow-body"):
                    slow = (args.slow_addresses, args.slow_per_address, args.slow_gap, args.presses)
                    results["slow_body_flood"] = await during_slow_body_flood(service, pins, *slow)
                if args.only in (None, "sse-flood"):
                    sse = (args.sse, args.sse_addresses, args.presses)
                    results["sse_flood"] = await during_sse_flood(service, pins, *sse)
                if args.only is None:
                    results["trickle"] = await trickle(service, server, args.trials)
            finally:
                await service.stop()
            if args.only is None:
                (tmp / "run").mkdir()
                results["sigterm_after_start"] = sigterm_after_start(tmp / "run", server.url, args.trials)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
