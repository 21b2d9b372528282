"""What a client sends wrongly is its fault, not the service's: a 400 that says so, or one INFO line in the log, never
a 500 or a traceback.

- A body that cannot be decoded (a bad `Content-Encoding` or chunk): a handler that reads it answers 400 saying so
  (`refuse_unreadable_bodies`), and aiohttp's own attempt to drain it afterwards is logged at INFO in one line.
- A request aiohttp's parser refuses (no Host, a control character in a header, a line too long) is answered 400
  by aiohttp and logged at INFO in one line (`request_log`).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def refuse_unreadable_bodies(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """A body the client sent wrongly (not valid for its `Content-Encoding`, a bad chunk) is a 400 that says so:
    aiohttp raises it from `request.read()`/`post()`/`json()`, and left alone it would be a 500 with a traceback."""
    try:
        return await handler(request)
    except (RequestPayloadError, HttpProcessingError) as exc:
        raise web.HTTPBadRequest(text=f"the request body could not be read: {_client_fault(exc)}") from None


def _client_fault(exc: BaseException) -> str:
    """aiohttp's own words for what the client did wrong, in one line."""
    cause = exc if isinstance(exc, HttpProcessingError) else exc.__cause__
    text = cause.message if isinstance(cause, HttpProcessingError) else str(exc)
    return (text.strip().splitlines() or ["malformed"])[0].rstrip(":")


class _ClientFaults(logging.Filter):
    """aiohttp logs at ERROR with a traceback what is a client's doing: a request its parser refuses, a body it
    cannot decode while draining it after the answer, a `100 Continue` to a client that has already hung up. One
    INFO line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        address = record.args[0] if isinstance(record.args, tuple) and record.args else "a client"
        if isinstance(exc, (HttpProcessingError, RequestPayloadError)):
            record.msg, record.args = "refused a malformed request from %s: %s", (address, _client_fault(exc))
        elif isinstance(exc, ConnectionResetError) and _in_expect_handler(exc):
            record.msg, record.args = "%s hung up before its 100 Continue", (address,)
        else:
            return True
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.exc_info = record.exc_text = None
        return True


def _in_expect_handler(exc: BaseException) -> bool:
    # aiohttp answers `Expect: 100-continue` before any middleware runs, so only its traceback tells it apart.
    return any(frame.f_code.co_name == "handle_expect_header" for frame, _ in traceback.walk_tb(exc.__traceback__))


def request_log() -> logging.Logger:
    log = logging.getLogger("kiosk.web.requests")
    if not any(isinstance(f, _ClientFaults) for f in log.filters):
        log.addFilter(_ClientFaults())
    return log
