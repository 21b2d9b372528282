"""What is reached over the network by HTTP: `api:` (the local trigger and status API), `staff:` (the staff web
page) and the host names both answer to (`hostnames:`, a top-level key)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kiosk.config.fields import _bounded, _choice

#: What `hostnames:` (a top-level key, see Config.hostnames) accepts: one host name, lowercase.
_HOSTNAME = {
    "pattern": re.compile(r"(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*"),
    "pattern_help": "a host name (lowercase letters, digits, '-' and '.')",
}


@dataclass(frozen=True)
class ApiConfig:
    """The local HTTP trigger and status API."""

    bind: str = "127.0.0.1"
    port: int = _bounded(8080, 0, 65535)  # 0: any free port
    token_file: Path | None = None
    allow_text: bool = False
    when_busy: str = _choice("queue", "restart", "ignore")
    rate_limit_per_min: int = _bounded(30, 1, 100_000)


@dataclass(frozen=True)
class StaffConfig:
    """The staff web page: lines, buttons, voice, volume, status."""

    enabled: bool = True
    bind: str = "0.0.0.0"
    port: int = _bounded(8000, 0, 65535)  # 0: any free port
    password_file: Path = Path("/var/lib/kiosk/staff.passwd")
    settings_file: Path = Path("/var/lib/kiosk/staff-settings.yaml")
    session_hours: float = _bounded(8.0, 0.05, 720)
    # The button (its GPIO pin) staff hold 5 s for a spoken setup code; None: the first configured button.
    setup_button: int | None = _bounded(None, 0, 53)
