"""systemd's notify protocol (sd_notify): READY (with STATUS), STOPPING, RELOADING and watchdog pings.

A dozen lines of socket code: the protocol is one datagram per message, so no library is needed.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    """Sends notifications to $NOTIFY_SOCKET; does nothing when not started by systemd."""

    def __init__(self, environ: dict[str, str] | None = None):
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + path[1:] if path.startswith("@") else path  # "@" marks an abstract socket
        self.watchdog_s = _watchdog_interval(env)

    def send(self, *fields: str) -> None:
        if not self._address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            log.warning("systemd notify failed: %s", exc)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, text: str) -> None:
        """StatusText in `systemctl status`, changed while running."""
        self.send(f"STATUS={text}")

    def reloading(self, monotonic_usec: int) -> None:
        self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")


def _watchdog_interval(env) -> float | None:
    """The watchdog timeout in seconds, if systemd asked this process for pings."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    return usec / 1_000_000 if usec > 0 else None
