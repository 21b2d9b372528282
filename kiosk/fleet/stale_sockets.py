"""Keep a dropped MQTT connection from filling the log with a traceback that is no fault (kiosk.fleet.mqtt)."""

from __future__ import annotations

import asyncio
import errno
import logging

log = logging.getLogger(__name__)


def quiet(loop: asyncio.AbstractEventLoop) -> None:
    """aiomqtt registers paho's socket with the loop through call_soon_threadsafe; when the connection dropped
    (a keepalive timeout) in between, the socket is closed by then and asyncio logs a traceback ("Exception in
    callback ... add_writer(22, ...) OSError: [Errno 9] Bad file descriptor"). That is no fault, the reconnect
    deals with it: those become one debug line; anything else goes on to the handler there was."""
    previous = loop.get_exception_handler()
    if getattr(previous, "kiosk_mqtt", False):
        return

    def handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        exc, handle = context.get("exception"), context.get("handle")
        callback = getattr(handle, "_callback", None)
        if isinstance(exc, OSError) and exc.errno == errno.EBADF and callback in (loop.add_writer, loop.add_reader):
            log.debug("MQTT: a closed socket was not registered (%s)", exc)
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    handler.kiosk_mqtt = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)
