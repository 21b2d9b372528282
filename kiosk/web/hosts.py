"""Which Host and Origin values name this device, against DNS rebinding and cross-site requests.

A page on another site can make a browser send requests here in two ways: directly (its Origin is foreign) or by
pointing its own DNS name at this device's address (DNS rebinding: the Origin then looks same-site, but the Host
header carries the foreign name). Only names this device answers to are accepted: an IP address, `localhost`, the
machine's own host name (also with `.local`, as mDNS announces it) and the names staff configure.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit


class HostNames:
    def __init__(self, extra: Iterable[str] = (), hostname: str | None = None):
        self._own = (hostname or socket.gethostname()).lower().rstrip(".")
        self.configure(extra)

    def configure(self, extra: Iterable[str]) -> None:
        """The configured names (`hostnames:`), replacing the previous ones (a reload)."""
        own = self._own
        self._names = {"localhost", own, f"{own}.local", *(n.lower().rstrip(".") for n in extra)}

    def allows_host(self, host_header: str | None) -> bool:
        """True when a Host header (`name`, `name:port`, `[v6]:port`) names this device."""
        name = _host_only(host_header or "")
        if not name:
            return False
        if name in self._names or name.endswith(".localhost"):
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True  # an address: the browser's origin is that address itself, so no rebinding is possible

    def allows_origin(self, origin: str | None) -> bool:
        """True for no Origin (curl, show controllers) and for an Origin whose host names this device."""
        if origin is None:
            return True
        try:
            parts = urlsplit(origin)
        except ValueError:
            return False
        return parts.scheme in ("http", "https") and self.allows_host(parts.netloc)


def _host_only(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else ""
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")
