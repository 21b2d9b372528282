"""Serve an aiohttp Application with bounded resources: capped connections, request deadlines, a raised fd limit.

A flood of idle or slow ("slowloris") connections, or of bodies sent one byte at a time, must never starve a real
client nor exhaust file descriptors:
- aiohttp's own keep-alive timer (`keepalive_timeout`) closes a connection that has not delivered a complete
  request's headers within `idle_timeout_s` of connecting or of its last response. In aiohttp 3.14 the timer is
  armed in `RequestHandler.connection_made` and after each response, `data_received` never pushes it back, and
  `_process_keepalive` closes the connection when the handler is still waiting for a message — so trickling
  header bytes does not keep a connection alive.
- A `ConnectionGuard` caps the connections per server and per client address, and watches every request whose
  body is still arriving when its handler starts (whichever handler reads it, however it reads it):
  - the whole request, headers and body, is due within `request_timeout_s` of connecting or of the last response;
    past that the socket is cut at once (no 408 that would then wait for the rest of the body). Once the answer
    has begun (a WAV stream, say) the request has been received: the deadline no longer applies;
  - a body still arriving `body_grace_s` after its headers is slow; an address may have
    `max_slow_bodies_per_address` of them, and a further one is cut as soon as it turns slow. The grace is a few
    seconds, not less: each connection cut after living that long is garbage for a full (slow) collection, and
    the fewer of those a flood makes, the fewer pauses a press meets;
  - over the per-address cap a newcomer takes the place of its own address's longest-idle or slow connection;
    at the server's cap it takes the place of a connection of the address holding the most (idle first, then a
    slow body, then any body still arriving), provided that address holds at least twice as many as the
    newcomer's will. So a few machines can never take every slot from a new one, and flooding machines, which
    hold about as many each, never take each other's (which would only have them connect again, at once).
    A connection whose request has fully arrived and is being answered is never closed; when nothing may go,
    the newcomer is refused: held unread for `refuse_after_s` (`refuse_again_after_s` for a machine whose last
    refusals are still held), then closed (a machine that connects again the moment it is closed would otherwise
    cost thousands of connections a second, and their garbage full collections that stall the loop).
  Each closure is counted, never logged with a traceback.
- What a client sends wrongly (a body that cannot be decoded, a request aiohttp's parser refuses) is a 400 or one
  INFO line, never a traceback (kiosk.web.client_faults).
"""

from __future__ import annotations

import asyncio
import functools
import resource
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from kiosk.errors import KioskError
from kiosk.web.client_faults import refuse_unreadable_bodies, request_log

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_Middleware = Callable[[web.Request, _Handler], Awaitable[web.StreamResponse]]


#: Set on each request the guard watches: a handler that knows who is sending (a signed-in staff upload, which may
#: rightly take minutes over a museum's Wi-Fi) calls `request[LONGER_BODY](seconds)`; never for an unknown sender.
LONGER_BODY = web.RequestKey("longer_body", Callable[[float], None])


@dataclass(frozen=True)
class ConnectionLimits:
    """How many connections a server keeps open, and how long a client may take to send a request."""

    max_connections: int = 256  # per server
    max_per_address: int = 32  # per client IP
    idle_timeout_s: float = 10.0  # whole request headers due within this long of connecting / of the last response
    request_timeout_s: float = 10.0  # headers and body due within this long (same clock); then the socket is cut
    body_grace_s: float = 3.0  # a body still arriving this long after its headers is slow
    max_slow_bodies_per_address: int = 4  # per client IP; a further slow body is cut
    refuse_after_s: float = 0.5  # a refused connection is held this long, unread, before it is closed
    refuse_again_after_s: float = 5.0  # or this long, from an address with refused connections still held
    max_held: int = 2048  # refused connections held at once (each costs a descriptor); beyond: closed at once
    body_timeout_s: float = 10.0  # handlers' own bound on reading a body, for an app served without the guard


@dataclass
class _Connection:
    address: str
    transport: Any  # asyncio.Transport
    waiting_since: float  # loop time it connected or its last request ended
    requests_in_progress: int = 0
    receiving: web.BaseRequest | None = None  # a request whose body was still arriving, until its answer begins
    receiving_since: float = 0.0
    deadline: float = 0.0
    check: asyncio.TimerHandle | None = None

    def reading_body(self) -> bool:
        """True while the body of the request being received is still arriving (and has not failed)."""
        body = self.receiving.content if self.receiving is not None else None
        return body is not None and not body.is_eof() and body.exception() is None

    def slow(self, now: float, grace_s: float) -> bool:
        return self.reading_body() and now - self.receiving_since >= grace_s

    def idle(self) -> bool:
        return self.requests_in_progress == 0


class ConnectionGuard:
    """Enforces `ConnectionLimits` on one aiohttp `web.Server`; its counters are for tests and status.

    `open`: connections tracked now; `peak`: most ever open at once; `evicted`: connections closed to make room
    for a newcomer; `refused`: newcomers closed (after `refuse_after_s`) because no connection could make room,
    and not counted in `open`; `cut`: connections closed
    because their request's body was too slow (past the request deadline, or one slow body too many).
    """

    def __init__(self, limits: ConnectionLimits):
        self.limits = limits
        self.peak = self.evicted = self.refused = self.cut = 0
        self._held: Counter[str] = Counter()  # address → its refused connections not closed yet
        self._connections: dict[RequestHandler, _Connection] = {}
        # Per address, in "idle longest first" order: a connection moves to the end when a request on it ends.
        self._by_address: dict[str, dict[RequestHandler, _Connection]] = {}
        self.middleware = self._make_middleware()

    @property
    def open(self) -> int:
        """Connections open now (closed ones no longer count: their close is already under way)."""
        return len(self._connections)

    def attach(self, server: web.Server) -> None:
        """Hook `server`'s connection callbacks. Call after `runner.setup()`, before any site starts."""
        # Wrapping the instance's public `connection_made`/`connection_lost` (every RequestHandler calls them on
        # its manager) keeps aiohttp's own bookkeeping intact and needs no private runner method overridden.
        connection_made, connection_lost = server.connection_made, server.connection_lost

        def on_connection_made(handler: RequestHandler, transport: Any) -> None:
            connection_made(handler, transport)
            self._admit(handler, transport)

        def on_connection_lost(handler: RequestHandler, exc: BaseException | None = None) -> None:
            self._forget(handler)
            connection_lost(handler, exc)

        server.connection_made = on_connection_made  # type: ignore[method-assign]
        server.connection_lost = on_connection_lost  # type: ignore[method-assign]

    async def on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """For `app.on_response_prepare`: once the answer begins the request counts as received, so a stream may
        take as long as it needs."""
        connection = self._connections.get(request.protocol)
        if connection is not None:
            _stop_watching(connection)

    # -- admission

    def _admit(self, handler: RequestHandler, transport: Any) -> None:
        address = _peer_address(transport)
        own = len(self._by_address.get(address, ()))
        if own >= self.limits.max_per_address and not self._make_room(address, any_body=False):
            self._refuse(transport, address)
            return
        if len(self._connections) >= self.limits.max_connections and not self._make_room_at_cap(address, own):
            self._refuse(transport, address)
            return
        connection = _Connection(address, transport, asyncio.get_running_loop().time())
        self._connections[handler] = self._by_address.setdefault(address, {})[handler] = connection
        self.peak = max(self.peak, len(self._connections))

    def _make_room_at_cap(self, address: str, own: int) -> bool:
        """Take a slot from the address holding the most, if it holds at least twice as many as the newcomer's
        will. Flooding machines, which hold about as many each, thus never take each other's slots (which would
        only have them connect again at once, and again)."""
        for other in sorted(self._by_address, key=lambda a: len(self._by_address[a]), reverse=True):
            if len(self._by_address[other]) < 2 * (own + 1):
                return False
            if self._make_room(other, any_body=True):
                return True
        return False

    def _make_room(self, address: str, any_body: bool) -> bool:
        """Close one of `address`'s connections: the longest idle, else the longest slow body, else (`any_body`)
        any body still arriving. False when none of these is left."""
        connections = self._by_address.get(address, {})
        now = asyncio.get_running_loop().time()
        rules: list[Callable[[_Connection], bool]] = [_Connection.idle, lambda c: c.slow(now, self.limits.body_grace_s)]
        if any_body:
            rules.append(_Connection.reading_body)
        for rule in rules:
            victim = next((h for h, c in connections.items() if rule(c)), None)
            if victim is not None:
                self._close(victim)
                self.evicted += 1
                return True
        return False

    def _refuse(self, transport: Any, address: str) -> None:
        # A flooding machine connects again the moment it is closed: holding it (unread, so it costs nothing but
        # a descriptor) for a moment makes it cost a connection per refuse_after_s instead of thousands a second,
        # and a machine refused again while its last refusals are still held waits ten times longer. Only max_held
        # are held at once; beyond that, or with no hold, the close comes at once. aiohttp goes on to start its
        # handler task either way; the close makes connection_lost cancel it quietly.
        self.refused += 1
        if self.limits.refuse_after_s <= 0 or self._held.total() >= self.limits.max_held:
            transport.close()
            return
        hold_s = self.limits.refuse_again_after_s if self._held[address] else self.limits.refuse_after_s
        self._held[address] += 1
        transport.pause_reading()
        asyncio.get_running_loop().call_later(hold_s, self._release, transport, address)

    def _release(self, transport: Any, address: str) -> None:
        self._held[address] -= 1
        if self._held[address] <= 0:
            del self._held[address]
        transport.close()  # no-op if the client has gone already

    def _close(self, handler: RequestHandler) -> None:
        connection = self._forget(handler)
        if connection is None:
            return
        if connection.reading_body():  # nothing to flush: abort, so no byte more is read nor waited for
            connection.transport.abort()
        else:  # an idle connection may still be sending its last answer
            connection.transport.close()

    def _forget(self, handler: RequestHandler) -> _Connection | None:
        connection = self._connections.pop(handler, None)
        if connection is not None:
            _stop_watching(connection)
            same_address = self._by_address[connection.address]
            del same_address[handler]
            if not same_address:
                del self._by_address[connection.address]
        return connection

    # -- requests

    def _make_middleware(self) -> _Middleware:
        @web.middleware
        async def watch_requests(request: web.Request, handler: _Handler) -> web.StreamResponse:
            """While a handler runs its connection is busy; while its body is still arriving it is watched."""
            connection = self._connections.get(request.protocol)
            if connection is None:  # already closed, or not a connection this guard tracks
                return await handler(request)
            connection.requests_in_progress += 1
            self._watch(request.protocol, connection, request)
            request[LONGER_BODY] = functools.partial(self._give_longer, request.protocol)
            try:
                return await handler(request)
            finally:
                connection.requests_in_progress -= 1
                connection.waiting_since = asyncio.get_running_loop().time()
                self._mark_recently_used(request.protocol, connection)

        return watch_requests

    def _watch(self, handler: RequestHandler, connection: _Connection, request: web.Request) -> None:
        _stop_watching(connection)
        if request.content.is_eof():  # the whole body is here (or there is none): nothing to wait for
            return
        loop = asyncio.get_running_loop()
        connection.receiving, connection.receiving_since = request, loop.time()
        connection.deadline = connection.waiting_since + self.limits.request_timeout_s
        first_check = min(connection.receiving_since + self.limits.body_grace_s, connection.deadline)
        connection.check = loop.call_at(first_check, self._check_body, handler)

    def _give_longer(self, handler: RequestHandler, seconds: float) -> None:
        """`request[LONGER_BODY](seconds)`: the body still arriving has `seconds` from now, and is not cut as slow."""
        connection = self._connections.get(handler)
        if connection is None or not connection.reading_body():
            return
        loop = asyncio.get_running_loop()
        connection.deadline = max(connection.deadline, loop.time() + seconds)
        if connection.check is not None:
            connection.check.cancel()
        connection.check = loop.call_at(connection.deadline, self._check_body, handler)

    def _check_body(self, handler: RequestHandler) -> None:
        """At the end of the grace, and at the request deadline: cut a body that is one slow body too many for its
        address, or late."""
        connection = self._connections.get(handler)
        if connection is None or not connection.reading_body():
            return
        loop = asyncio.get_running_loop()
        now, grace = loop.time(), self.limits.body_grace_s
        others = self._by_address[connection.address].values()
        slow_others = sum(1 for c in others if c is not connection and c.slow(now, grace))
        if now >= connection.deadline or slow_others >= self.limits.max_slow_bodies_per_address:
            self._close(handler)
            self.cut += 1
        else:
            connection.check = loop.call_at(connection.deadline, self._check_body, handler)

    def _mark_recently_used(self, handler: RequestHandler, connection: _Connection) -> None:
        same_address = self._by_address.get(connection.address)
        if same_address is not None and same_address.pop(handler, None) is not None:
            same_address[handler] = connection


def _stop_watching(connection: _Connection) -> None:
    if connection.check is not None:
        connection.check.cancel()
    connection.receiving = connection.check = None


class GuardedRunner(web.AppRunner):
    """A `web.AppRunner` whose server is capped by `guard` (a `ConnectionGuard`) once `setup()` has run."""

    def __init__(self, app: web.Application, limits: ConnectionLimits, **kwargs: Any):
        super().__init__(app, **kwargs)
        self.guard = ConnectionGuard(limits)

    async def setup(self) -> None:
        # They must go in before setup freezes the app. The guard's middleware is outermost, so "busy" spans every
        # other middleware too; the body check innermost, so that the app's own error middleware shapes its 400.
        self.app.middlewares.insert(0, self.guard.middleware)
        self.app.middlewares.append(refuse_unreadable_bodies)
        self.app.on_response_prepare.append(self.guard.on_response_prepare)
        await super().setup()
        assert self.server is not None
        self.guard.attach(self.server)


async def serve(
    app: web.Application, bind: str, port: int, limits: ConnectionLimits = ConnectionLimits()
) -> tuple[GuardedRunner, int]:
    """Start `app` on bind:port (0 = any free port); returns the runner (call .cleanup() to stop) and the bound port.

    The runner's `guard` holds the connection counters. `app` must not have been started before (its middleware
    list is still open). Raises KioskError("cannot listen on HOST:PORT: reason") when the port cannot be bound.
    """
    runner = GuardedRunner(
        app,
        limits,
        access_log=None,
        shutdown_timeout=0.5,
        keepalive_timeout=limits.idle_timeout_s,
        handler_cancellation=True,  # a client that hangs up cancels its handler instead of leaving it running
        logger=request_log(),
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, bind, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise KioskError(f"cannot listen on {bind}:{port}: {exc.strerror or exc}") from exc
    return runner, runner.addresses[0][1]


def raise_open_file_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (resource module); returns (soft, hard) after. Never raises."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return -1, -1
    if soft == hard:
        return soft, hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError):  # e.g. an unlimited hard limit above the kernel's nr_open
        return soft, hard
    return hard, hard


def _peer_address(transport: Any) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""
