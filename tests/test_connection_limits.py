"""Real servers on 127.0.0.1 under idle floods and slowloris: the caps hold, a health check still gets through."""

from __future__ import annotations

import asyncio
import resource
import time
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from kiosk.errors import KioskError
from kiosk.web import server as server_module
from kiosk.web.server import ConnectionLimits, GuardedRunner, raise_open_file_limit, serve

SMALL = ConnectionLimits(max_connections=20, max_per_address=10, idle_timeout_s=1.0)
SLOW_S = 1.0


@dataclass
class SlowRequests:
    in_flight: int = 0
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)


SLOW_REQUESTS = web.AppKey("slow_requests", SlowRequests)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def slow(request: web.Request) -> web.Response:
    state = request.app[SLOW_REQUESTS]
    state.in_flight += 1
    try:
        await asyncio.sleep(SLOW_S)
    except asyncio.CancelledError:
        state.cancelled.set()
        raise
    finally:
        state.in_flight -= 1
    return web.json_response({"slow": True})


def make_app() -> web.Application:
    app = web.Application()
    app[SLOW_REQUESTS] = SlowRequests()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/slow", slow)
    return app


@pytest.fixture
async def start():
    """Serve a fresh test app with the given limits on a free loopback port; stopped after the test."""
    runners: list[GuardedRunner] = []

    async def start(limits: ConnectionLimits) -> tuple[GuardedRunner, int]:
        runner, port = await serve(make_app(), "127.0.0.1", 0, limits)
        runners.append(runner)
        return runner, port

    yield start
    for runner in runners:
        await asyncio.wait_for(runner.cleanup(), timeout=5)


async def open_idle_connections(port: int, count: int, batch: int = 50):
    """Connect in batches so the listen backlog never overflows (an overflow costs a 1 s SYN retry)."""
    connections = []
    for start in range(0, count, batch):
        opening = (asyncio.open_connection("127.0.0.1", port) for _ in range(start, min(count, start + batch)))
        connections += await asyncio.wait_for(asyncio.gather(*opening), timeout=5)
    return connections


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        return await reader.read(1) == b""
    except ConnectionResetError:
        return True


def close_all(connections) -> None:
    for _, writer in connections:
        writer.close()


async def wait_until(predicate, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_health_check_is_served_through_an_idle_flood(start):
    runner, port = await start(SMALL)
    flood = await open_idle_connections(port, 200)
    try:
        async with (
            aiohttp.ClientSession() as session,
            asyncio.timeout(2),
            session.get(f"http://127.0.0.1:{port}/healthz") as response,
        ):
            assert response.status == 200
            assert await response.json() == {"ok": True}
        guard = runner.guard
        assert guard.peak <= SMALL.max_per_address  # every client is 127.0.0.1
        assert guard.evicted >= 200 - SMALL.max_per_address
        assert guard.refused == 0

        closing = (closed_by_server(reader) for reader, _ in flood)
        assert all(await asyncio.wait_for(asyncio.gather(*closing), timeout=SMALL.idle_timeout_s + 1.5))
        await wait_until(lambda: guard.open == 0, timeout=2)
    finally:
        close_all(flood)


async def slowloris(port: int) -> float:
    """Trickle one header byte every 0.2 s; returns the seconds until the server closed the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    began = time.monotonic()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    closed = asyncio.ensure_future(closed_by_server(reader))
    try:
        while not closed.done():
            try:
                writer.write(b"X")
                await writer.drain()
            except ConnectionError:
                break
            await asyncio.wait({closed}, timeout=0.2)
        assert await closed
        return time.monotonic() - began
    finally:
        closed.cancel()
        writer.close()


async def test_slowloris_connections_are_closed_after_the_idle_timeout(start):
    limits = ConnectionLimits(max_connections=64, max_per_address=64, idle_timeout_s=1.0)
    runner, port = await start(limits)
    lifetimes = await asyncio.wait_for(
        asyncio.gather(*(slowloris(port) for _ in range(30))), timeout=limits.idle_timeout_s + 3
    )
    assert all(0.8 <= lifetime <= limits.idle_timeout_s + 1 for lifetime in lifetimes), lifetimes
    assert runner.guard.evicted == runner.guard.refused == 0  # the idle timeout closed them, not the caps


async def test_busy_connections_are_not_evicted(start):
    limits = ConnectionLimits(max_connections=20, max_per_address=2, idle_timeout_s=1.0)
    runner, port = await start(limits)
    state = runner.app[SLOW_REQUESTS]

    async def get_slow(session: aiohttp.ClientSession) -> int:
        async with session.get(f"http://127.0.0.1:{port}/slow") as response:
            await response.read()
            return response.status

    async with aiohttp.ClientSession() as session:
        slow_requests = asyncio.gather(get_slow(session), get_slow(session))
        try:
            await wait_until(lambda: state.in_flight == 2, timeout=2)
            [(reader, writer)] = await open_idle_connections(port, 1)
            try:
                assert await asyncio.wait_for(closed_by_server(reader), timeout=limits.refuse_after_s + 0.5)
            finally:
                writer.close()
            assert (runner.guard.refused, runner.guard.evicted) == (1, 0)
            assert state.in_flight == 2
            assert await asyncio.wait_for(slow_requests, timeout=SLOW_S + 2) == [200, 200]
        finally:
            slow_requests.cancel()


async def test_a_refused_connection_is_held_a_moment_then_closed(start):
    # A flood that connects again the moment it is closed is slowed down, the more so while its last refusals are
    # still held; only max_held are held at once.
    limits = ConnectionLimits(
        max_connections=2, max_per_address=2, refuse_after_s=0.5, refuse_again_after_s=1.0, max_held=2
    )
    runner, port = await start(limits)
    state = runner.app[SLOW_REQUESTS]

    async def lifetime(reader: asyncio.StreamReader, began: float) -> float:
        assert await closed_by_server(reader)
        return time.monotonic() - began

    async with aiohttp.ClientSession() as session:
        busy = [asyncio.ensure_future(session.get(f"http://127.0.0.1:{port}/slow")) for _ in range(2)]
        try:
            await wait_until(lambda: state.in_flight == 2, timeout=2)
            began = time.monotonic()
            refused = await open_idle_connections(port, 3)
            try:
                lifetimes = await asyncio.wait_for(
                    asyncio.gather(*(lifetime(reader, began) for reader, _ in refused)), timeout=2
                )
            finally:
                close_all(refused)
        finally:
            for request in busy:
                request.cancel()
    short, held, held_again = sorted(lifetimes)
    assert short < 0.2 and 0.45 <= held <= 0.8 and 0.95 <= held_again <= 1.3, lifetimes
    assert runner.guard.refused == 3


async def test_client_hanging_up_cancels_its_handler(start):
    runner, port = await start(SMALL)
    state = runner.app[SLOW_REQUESTS]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    await wait_until(lambda: state.in_flight == 1, timeout=2)
    writer.close()
    await asyncio.wait_for(state.cancelled.wait(), timeout=SLOW_S / 2)


async def test_a_port_in_use_is_a_kiosk_error(start):
    _, port = await start(SMALL)
    with pytest.raises(KioskError, match=f"cannot listen on 127.0.0.1:{port}: "):
        await serve(make_app(), "127.0.0.1", port)


def test_raise_open_file_limit_lifts_soft_to_hard():
    soft, hard = raise_open_file_limit()
    assert soft == hard
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (soft, hard)


def test_raise_open_file_limit_never_raises(monkeypatch):
    def refuse(*args):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(server_module.resource, "getrlimit", lambda _: (100, 200))
    monkeypatch.setattr(server_module.resource, "setrlimit", refuse)
    assert raise_open_file_limit() == (100, 200)
    monkeypatch.setattr(server_module.resource, "getrlimit", refuse)
    assert raise_open_file_limit() == (-1, -1)
