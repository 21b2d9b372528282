"""What the speaker keeps on disk: `cache:` (the phrase cache) and `history:` (presses and outcomes)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kiosk.config.fields import _bounded


@dataclass(frozen=True)
class CacheConfig:
    """The on-disk phrase cache."""

    dir: Path = Path("/var/cache/kiosk")
    max_mb: float = _bounded(500.0, 1, 1_000_000)


@dataclass(frozen=True)
class HistoryConfig:
    """Every press and trigger with its outcome, and the events staff see, kept on the device (SQLite)."""

    file: Path = Path("/var/lib/kiosk/history.sqlite3")
    keep_days: int = _bounded(400, 1, 3650)
    write_every_s: float = _bounded(60.0, 1, 3600)  # presses are written together: fewer writes to the SD card
