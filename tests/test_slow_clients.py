"""Real servers on loopback under slow request bodies: a few machines trickling bodies never lock anyone out.

Each flooding machine is a distinct loopback address (127.0.0.2 … 127.0.0.12, all loopback on Linux); the newcomer
is 127.0.0.13. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from test_http_fuzz import running_service

from kiosk.web.server import ConnectionLimits, GuardedRunner, serve

NEWCOMER = "127.0.0.13"
FLOODERS = [f"127.0.0.{i}" for i in range(2, 13)]
BODY_BYTES = 1000
STREAM_S = 1.2


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def echo(request: web.Request) -> web.Response:
    return web.json_response({"read": len(await request.read())})


async def stream(request: web.Request) -> web.StreamResponse:
    """Streams for STREAM_S without reading the request body (a WAV stream does the same)."""
    response = web.StreamResponse()
    await response.prepare(request)
    for _ in range(12):
        await response.write(b"x" * 100)
        await asyncio.sleep(STREAM_S / 12)
    await response.write_eof()
    return response


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/echo", echo)
    app.router.add_route("*", "/stream", stream)
    return app


@pytest.fixture
async def start():
    """Serve the test app with the given limits on a free loopback port; stopped after the test."""
    runners: list[GuardedRunner] = []

    async def start(limits: ConnectionLimits) -> tuple[GuardedRunner, int]:
        runner, port = await serve(make_app(), "127.0.0.1", 0, limits)
        runners.append(runner)
        return runner, port

    yield start
    for runner in runners:
        await asyncio.wait_for(runner.cleanup(), timeout=5)


def head(method: str, path: str, port: int, extra: bytes = b"") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {BODY_BYTES}\r\n".encode()
        + extra
        + b"\r\n"
    )


async def slow_body(port: int, source: str, request_head: bytes, gap_s: float = 0.1) -> tuple[float, bytes]:
    """Send `request_head`, then its body one byte every `gap_s`; returns (seconds until the server closed the
    connection, what it answered). Cancel it to stop."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    began = time.monotonic()
    answer = asyncio.ensure_future(_read_all(reader))
    try:
        writer.write(request_head)
        for _ in range(BODY_BYTES - 1):  # never the last byte: the body is never complete
            with contextlib.suppress(ConnectionError):
                writer.write(b"x")
            await asyncio.wait({answer}, timeout=gap_s)
            if answer.done():
                break
        return time.monotonic() - began, await answer
    finally:
        answer.cancel()
        writer.close()


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    data = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(65536):
            data += chunk
    return data


@contextlib.asynccontextmanager
async def flood(port: int, addresses: list[str], per_address: int, request_head: bytes) -> AsyncIterator[list]:
    """`per_address` slow bodies from each address, each opened again as soon as the server closes it."""
    closed: list[tuple[float, bytes]] = []

    async def hold(source: str) -> None:
        while True:
            try:
                closed.append(await slow_body(port, source, request_head))
            except OSError:
                await asyncio.sleep(0.01)

    holders = [asyncio.create_task(hold(a)) for a in addresses for _ in range(per_address)]
    try:
        yield closed
    finally:
        for holder in holders:
            holder.cancel()
        await asyncio.wait_for(asyncio.gather(*holders, return_exceptions=True), timeout=5)


async def get(url: str, source: str = NEWCOMER, timeout: float = 1.0) -> tuple[int | None, float]:
    """GET `url` on a fresh connection from `source`: (status or None when refused or too slow, seconds)."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    began = time.monotonic()
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as http,
            http.get(url) as response,
        ):
            await response.read()
            return response.status, time.monotonic() - began
    except (aiohttp.ClientError, TimeoutError):
        return None, time.monotonic() - began


async def wait_until(predicate, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_a_newcomer_is_served_while_slow_bodies_fill_every_slot(start):
    limits = ConnectionLimits(max_connections=48, max_per_address=16, body_grace_s=0.3)
    runner, port = await start(limits)
    async with flood(port, FLOODERS[:6], 16, head("POST", "/echo", port)):  # 96 wanted, 48 slots
        await wait_until(lambda: runner.guard.open >= limits.max_connections, timeout=3)
        await asyncio.sleep(limits.body_grace_s * 2)
        answers = [await get(f"http://127.0.0.1:{port}/healthz") for _ in range(20)]
    assert [status for status, _ in answers] == [200] * 20, answers
    assert max(seconds for _, seconds in answers) < 0.5, answers


async def test_at_the_cap_only_a_lighter_address_takes_a_slot(start):
    limits = ConnectionLimits(max_connections=16, max_per_address=16, body_grace_s=5.0)
    runner, port = await start(limits)
    guard = runner.guard
    bodies = [slow_body(port, a, head("POST", "/echo", port)) for a in FLOODERS[:2] for _ in range(8)]
    flood_tasks = [asyncio.create_task(body) for body in bodies]
    try:
        await wait_until(lambda: guard.open == 16, timeout=3)
        # A third body from a flooding machine would only push out its twin's: it is refused.
        extra = asyncio.create_task(slow_body(port, FLOODERS[0], head("POST", "/echo", port)))
        await wait_until(lambda: guard.refused == 1, timeout=2)
        assert (await asyncio.wait_for(extra, timeout=2))[1] == b""
        assert guard.evicted == 0
        # A newcomer from elsewhere takes the place of a body still arriving from the busiest machine.
        assert (await get(f"http://127.0.0.1:{port}/healthz"))[0] == 200
        assert (guard.evicted, guard.refused, guard.open) == (1, 1, 15)
    finally:
        for task in flood_tasks:
            task.cancel()


async def test_an_address_may_keep_only_a_few_slow_bodies(start):
    limits = ConnectionLimits(max_slow_bodies_per_address=4, body_grace_s=0.3)
    runner, port = await start(limits)
    bodies = [asyncio.create_task(slow_body(port, FLOODERS[0], head("POST", "/echo", port))) for _ in range(10)]
    try:
        done, _ = await asyncio.wait(bodies, timeout=limits.body_grace_s + 1)
        assert len(done) == 6  # cut as soon as they were slow; the four oldest go on to the request deadline
        assert all(answer == b"" for _, answer in (t.result() for t in done))  # closed at once, no 408
        assert runner.guard.cut == 6
    finally:
        for body in bodies:
            body.cancel()


async def test_a_slow_body_is_cut_at_the_request_deadline_without_an_answer(start):
    limits = ConnectionLimits(request_timeout_s=1.0, body_grace_s=0.2)
    runner, port = await start(limits)
    lifetime, answer = await asyncio.wait_for(
        slow_body(port, FLOODERS[0], head("POST", "/echo", port)), timeout=limits.request_timeout_s + 2
    )
    assert limits.request_timeout_s - 0.1 <= lifetime <= limits.request_timeout_s + 0.5, lifetime
    assert answer == b""
    assert runner.guard.cut == 1


async def test_the_deadline_counts_the_headers_time_too(start):
    limits = ConnectionLimits(request_timeout_s=1.0, body_grace_s=0.2)
    _, port = await start(limits)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(FLOODERS[0], 0))
    try:
        began = time.monotonic()
        writer.write(b"POST /echo HTTP/1.1\r\n")
        await asyncio.sleep(0.7)  # headers late, then a body that never ends
        writer.write(head("POST", "/echo", port).split(b"\r\n", 1)[1] + b"x")
        assert await asyncio.wait_for(_read_all(reader), timeout=2) == b""
        assert time.monotonic() - began <= limits.request_timeout_s + 0.3
    finally:
        writer.close()


async def test_a_streaming_answer_outlives_the_request_deadline(start):
    limits = ConnectionLimits(request_timeout_s=0.4, body_grace_s=0.1)
    runner, port = await start(limits)
    # A stream asked for with a body that never ends: once the answer has begun the request counts as received.
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(FLOODERS[0], 0))
    try:
        writer.write(head("POST", "/stream", port) + b"x" * 10)
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n0\r\n\r\n"), timeout=STREAM_S + 2)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200") and answer.count(b"x" * 100) == 12, answer[-200:]
    assert runner.guard.cut == 0
    status, seconds = await get(f"http://127.0.0.1:{port}/stream", timeout=STREAM_S + 2)
    assert status == 200 and seconds >= STREAM_S - 0.1


async def test_parallel_quick_posts_from_one_address_all_pass(start):
    limits = ConnectionLimits(max_slow_bodies_per_address=2, body_grace_s=0.2)
    runner, port = await start(limits)

    async def post(http: aiohttp.ClientSession) -> int:
        async with http.post(f"http://127.0.0.1:{port}/echo", data=b"y" * 200_000) as response:
            return (await response.json())["read"]

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=5)) as http:
        assert await asyncio.gather(*(post(http) for _ in range(30))) == [200_000] * 30
    assert runner.guard.cut == runner.guard.refused == 0


async def test_api_and_staff_page_answer_a_newcomer_through_a_slow_body_flood(tmp_path, server, alsa_file):
    # The finding: 8 addresses x 32 connections trickling bodies held all 256 slots of each server.
    async with running_service(tmp_path, server, alsa_file[0]) as target:
        api, staff = target.api_port, target.staff_port
        api_head = head("POST", "/api/play", api, b"Content-Type: application/json\r\n")
        origin = f"Origin: http://127.0.0.1:{staff}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        staff_head = head("POST", "/login", staff, origin.encode())
        async with (
            flood(api, FLOODERS[:8], 32, api_head),
            flood(staff, FLOODERS[:8], 32, staff_head),
        ):
            guards = [r.guard for r in target.service._runners[:2]]  # the API's and the staff page's
            await wait_until(lambda: all(g.peak >= 200 for g in guards), timeout=5)
            health = [await get(f"http://127.0.0.1:{api}/healthz") for _ in range(20)]
            login = [await get(f"http://127.0.0.1:{staff}/login") for _ in range(20)]
    assert [s for s, _ in health] == [200] * 20, health
    assert [s for s, _ in login] == [200] * 20, login
