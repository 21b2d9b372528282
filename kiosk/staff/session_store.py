"""Staff sessions kept across a restart of the service (not across a reboot, nor a new password).

The file holds, per session, a hash of its token (never the token itself: a copy of the file logs nobody in), its
CSRF token and its deadlines on the monotonic clock, which keeps counting while the service restarts but begins
again at a reboot: the file names the boot it was written in, and is ignored after another. It also names the
password file's fingerprint: sessions from before a new password (set with `kiosk passwd`, or with a setup code)
end.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kiosk.fileio import write_atomically

log = logging.getLogger(__name__)

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
MAX_BYTES = 256 * 1024
MAX_SESSIONS = 200


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class StoredSession:
    digest: str
    csrf: str
    expires: float
    idle_until: float


class SessionStore:
    def __init__(self, path: Path, password_file: Callable[[], Path], boot_id: Path = BOOT_ID):
        self.path = path
        self._password_file = password_file
        self._boot_id = boot_id

    def load(self) -> list[StoredSession]:
        """The sessions kept by this boot's earlier run under the same password; [] for anything else."""
        try:
            with open(self.path, "rb") as f:
                data = json.loads(f.read(MAX_BYTES + 1)[:MAX_BYTES])
        except FileNotFoundError:
            return []
        except (OSError, ValueError, RecursionError) as exc:
            log.warning("staff sessions %s cannot be read (%s): everyone logs in again", self.path, exc)
            return []
        if not isinstance(data, dict) or data.get("boot") != self._boot() or data.get("password") != self._password():
            return []
        kept = []
        for item in data.get("sessions", [])[:MAX_SESSIONS] if isinstance(data.get("sessions"), list) else []:
            with contextlib.suppress(TypeError, ValueError, KeyError):
                kept.append(_stored(item))
        return kept

    def save(self, sessions: list[StoredSession]) -> None:
        boot = self._boot()
        if boot is None:
            return
        body = {
            "boot": boot,
            "password": self._password(),
            "sessions": [s.__dict__ for s in sessions[-MAX_SESSIONS:]],
        }
        try:
            write_atomically(self.path, json.dumps(body).encode(), mode=0o600)
        except OSError as exc:  # a full or read-only disk: sessions then end at the next restart, as before
            log.warning("staff sessions cannot be kept in %s: %s", self.path, exc)

    def _boot(self) -> str | None:
        try:
            return self._boot_id.read_text().strip() or None
        except OSError:
            return None

    def _password(self) -> str | None:
        try:
            return hashlib.sha256(self._password_file().read_bytes()).hexdigest()
        except OSError:
            return None


def _stored(item: dict) -> StoredSession:
    digest, csrf = item["digest"], item["csrf"]
    if not (isinstance(digest, str) and len(digest) == 64 and isinstance(csrf, str) and 0 < len(csrf) <= 100):
        raise ValueError("not a session")
    expires, idle = float(item["expires"]), float(item["idle_until"])
    if not (expires == expires and idle == idle):  # NaN
        raise ValueError("not a time")
    return StoredSession(digest, csrf, expires, idle)
