"""What the captions server's modules share: the speaker as they see it (`CaptionsBackend`) and the app keys it is
kept under. A module of its own so that web.py (which builds the app) and the page modules (which read it) need
not import each other."""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from kiosk.captions.feed import CaptionFeed
from kiosk.config import Config
from kiosk.web.hosts import HostNames


class CaptionsBackend(Protocol):
    """What the captions pages need of the speaker (kiosk.app.App)."""

    cfg: Config

    @property
    def captions(self) -> CaptionFeed: ...


BACKEND = web.AppKey("captions_backend", CaptionsBackend)
HOSTS = web.AppKey("captions_hosts", HostNames)
