"""Serve an aiohttp Application with bounded resources: capped connections, idle timeouts, a raised fd limit.

A flood of idle or slow ("slowloris") connections must never starve a real client nor exhaust file descriptors:
- aiohttp's own keep-alive timer (`keepalive_timeout`) closes a connection that has not delivered a complete
  request's headers within `idle_timeout_s` of connecting or of its last response. In aiohttp 3.14 the timer is
  armed in `RequestHandler.connection_made` and after each response, `data_received` never pushes it back, and
  `_process_keepalive` closes the connection when the handler is still waiting for a message — so trickling
  header bytes does not keep a connection alive.
- A `ConnectionGuard` caps the connections per server and per client address. Over a cap it closes the
  connection that has been idle longest (no request being handled on it) so the newcomer — often a health
  check from the same address as the flood — is served; if every connection over the cap is busy, it closes
  the newcomer instead. Each closure is counted, never logged with a traceback.
- A request aiohttp's parser refuses (no Host, a control character in a header, a line too long) is answered 400
  and logged at INFO in one line: it is the client's mistake, not a fault of the service.
"""

from __future__ import annotations

import logging
import resource
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from kiosk.errors import KioskError

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class ConnectionLimits:
    """How many connections a server keeps open, and how long a connection may take to say something."""

    max_connections: int = 256  # per server
    max_per_address: int = 32  # per client IP
    idle_timeout_s: float = 10.0  # whole request headers due within this long of connecting / of the last response
    body_timeout_s: float = 10.0  # for handlers that read bodies: wrap request.read() in asyncio.timeout(...)


@dataclass
class _Connection:
    address: str
    transport: Any  # asyncio.Transport
    requests_in_progress: int = 0


class ConnectionGuard:
    """Enforces `ConnectionLimits` on one aiohttp `web.Server`; its counters are for tests and status.

    `open`: connections tracked now; `peak`: most ever open at once; `evicted`: idle connections closed to make
    room; `refused`: new connections closed because every connection over the cap was busy.
    """

    def __init__(self, limits: ConnectionLimits):
        self.limits = limits
        self.peak = 0
        self.evicted = 0
        self.refused = 0
        # Insertion order is "idle longest first": a connection moves to the end when a request on it ends.
        self._connections: dict[RequestHandler, _Connection] = {}
        self.middleware = self._make_middleware()

    @property
    def open(self) -> int:
        """Connections open now (evicted and refused ones no longer count: their close is already under way)."""
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
            self._connections.pop(handler, None)
            connection_lost(handler, exc)

        server.connection_made = on_connection_made  # type: ignore[method-assign]
        server.connection_lost = on_connection_lost  # type: ignore[method-assign]

    def _admit(self, handler: RequestHandler, transport: Any) -> None:
        address = _peer_address(transport)
        same_address = [c for c in self._connections if self._connections[c].address == address]
        if len(same_address) >= self.limits.max_per_address and not self._evict_idlest(same_address):
            self._refuse(transport)
            return
        if len(self._connections) >= self.limits.max_connections and not self._evict_idlest(self._connections):
            self._refuse(transport)
            return
        self._connections[handler] = _Connection(address, transport)
        self.peak = max(self.peak, len(self._connections))

    def _evict_idlest(self, candidates: Any) -> bool:
        """Close the candidate idle longest; False when every candidate is handling a request."""
        for handler in candidates:
            connection = self._connections[handler]
            if connection.requests_in_progress == 0:
                del self._connections[handler]
                connection.transport.close()
                self.evicted += 1
                return True
        return False

    def _refuse(self, transport: Any) -> None:
        # aiohttp goes on to start its handler task; the close makes connection_lost cancel it quietly.
        transport.close()
        self.refused += 1

    def _make_middleware(self) -> Callable[[web.Request, _Handler], Awaitable[web.StreamResponse]]:
        @web.middleware
        async def mark_connection_busy(request: web.Request, handler: _Handler) -> web.StreamResponse:
            """While a handler runs (a streaming one writes its body meanwhile) its connection is not evictable."""
            connection = self._connections.get(request.protocol)
            if connection is None:  # already closed, or not a connection this guard tracks
                return await handler(request)
            connection.requests_in_progress += 1
            try:
                return await handler(request)
            finally:
                connection.requests_in_progress -= 1
                self._mark_recently_used(request.protocol)

        return mark_connection_busy

    def _mark_recently_used(self, handler: RequestHandler) -> None:
        connection = self._connections.pop(handler, None)
        if connection is not None:
            self._connections[handler] = connection


class GuardedRunner(web.AppRunner):
    """A `web.AppRunner` whose server is capped by `guard` (a `ConnectionGuard`) once `setup()` has run."""

    def __init__(self, app: web.Application, limits: ConnectionLimits, **kwargs: Any):
        super().__init__(app, **kwargs)
        self.guard = ConnectionGuard(limits)

    async def setup(self) -> None:
        # Outermost middleware, so "busy" spans every other middleware too; it must go in before setup freezes
        # the app.
        self.app.middlewares.insert(0, self.guard.middleware)
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
        logger=_request_log(),
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, bind, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise KioskError(f"cannot listen on {bind}:{port}: {exc.strerror or exc}") from exc
    return runner, runner.addresses[0][1]


class _ClientFaults(logging.Filter):
    """aiohttp logs a request its parser refuses at ERROR with the parser's traceback; one INFO line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            address = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "refused a malformed request from %s: %s", (address, exc.message)
            record.exc_info = record.exc_text = None
        return True


def _request_log() -> logging.Logger:
    log = logging.getLogger("kiosk.web.requests")
    if not any(isinstance(f, _ClientFaults) for f in log.filters):
        log.addFilter(_ClientFaults())
    return log


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
