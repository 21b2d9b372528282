"""The captions label: a printable card for the exhibit with a QR code that opens the live captions on a visitor's
phone, the address written under it for anyone who cannot scan.

The only module that imports `segno` (QR codes drawn as SVG in pure Python). The address is the one the staff
member's own browser used to reach this page (a name or address that already passed the host-name check), unless
the operator configured a name under `hostnames:`, which is used instead (it stays right when the address
changes); with the captions turned off, or answering on the speaker itself only, there is no code to print and the
page says what to change.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import segno
from aiohttp import web
from markupsafe import Markup

from kiosk.config import Config
from kiosk.staff.common import BACKEND, render

routes = web.RouteTableDef()

#: A host name as DNS spells one: labels of letters, digits and hyphens.
_NAME = re.compile(r"(?=.{1,253}\Z)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")
_LOOPBACK_NAMES = ("localhost", "localhost.localdomain")
_WILDCARDS = ("", "0.0.0.0", "::")


@dataclass(frozen=True)
class Label:
    url: str | None  # None: no code can be printed, `problem` says why
    problem: str = ""
    fix: str = ""


@routes.get("/label")
async def label_page(request: web.Request) -> web.Response:
    cfg = request.app[BACKEND].cfg
    label = captions_label(cfg, request.host)
    svg = qr_svg(label.url) if label.url else None
    return render("label.html", request, label=label, qr=svg, title=cfg.captions.title.strip())


def captions_label(cfg: Config, host_header: str) -> Label:
    """Where visitors' phones find the captions, or why they cannot."""
    captions = cfg.captions
    if not captions.enabled:
        return Label(
            None,
            "Visitors' phones cannot open the captions: the captions are turned off.",
            "To turn them on, set enabled: true under captions: in kiosk.yaml and restart the speaker.",
        )
    if is_loopback(captions.bind):
        return Label(
            None,
            "Visitors' phones cannot open the captions: they are shown only on the speaker itself "
            f"(captions: bind: {captions.bind}), for a screen plugged into it.",
            "To let phones on the exhibit's network open them, set bind: 0.0.0.0 under captions: in kiosk.yaml "
            "and restart the speaker.",
        )
    if captions.port == 0:
        return Label(
            None,
            "The captions' port is chosen anew each time the speaker starts (captions: port: 0), so a printed "
            "code would stop working.",
            "Set a fixed port under captions: in kiosk.yaml (8081 is the usual one) and restart the speaker.",
        )
    host = _host_for_phones(cfg, host_header)
    if host is None:
        return Label(
            None,
            "This page was opened on the speaker itself, so it cannot tell the address phones would use.",
            "Open this page from a phone or computer on the exhibit's network, or name the speaker under "
            "hostnames: in kiosk.yaml.",
        )
    return Label(f"http://{host}:{captions.port}/captions")


def _host_for_phones(cfg: Config, host_header: str) -> str | None:
    """The configured name if there is one; else a specific address the captions are bound to; else the host the
    staff member's browser reached this page by (it passed the staff app's host check); None for a loopback one."""
    for name in cfg.hostnames:
        name = name.lower().rstrip(".")
        if _NAME.fullmatch(name) and not is_loopback(name):
            return name
    bind = cfg.captions.bind.strip()
    if bind not in _WILDCARDS and _is_address(bind):
        return _url_host(bind)
    host = _host_only(host_header)
    if not host or is_loopback(host) or not (_is_address(host) or _NAME.fullmatch(host)):
        return None
    return _url_host(host)


def is_loopback(host: str) -> bool:
    host = host.strip().lower().rstrip(".").strip("[]")
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host  # an IPv6 address in a URL is bracketed


def _host_only(host_header: str) -> str:
    """The host part of a Host header: `name`, `name:port`, `[v6]:port` → name or address, lower case."""
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else ""
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def qr_svg(url: str) -> Markup:
    """The QR code for `url` as inline SVG: drawn in black on a white square with the standard quiet zone around
    it, sized by the page's CSS (a viewBox, no width or height). segno writes presentation attributes only (no
    style attribute, no script), so the staff pages' Content-Security-Policy holds."""
    code = segno.make(url, error="m", micro=False)
    svg = code.svg_inline(
        scale=1, border=4, omitsize=True, dark="#000", light="#fff", svgclass="qr", lineclass=None, title=None
    )
    return Markup(svg)  # made here from a URL segno encodes, never from text a client sent as markup
