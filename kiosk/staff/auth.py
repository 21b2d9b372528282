"""Staff access: a scrypt password file, sliding server-side sessions with CSRF tokens, a login lockout.

There is no default password: until `kiosk passwd` has written one, the staff page only says how to set it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from kiosk.errors import ConfigError
from kiosk.fileio import write_atomically
from kiosk.staff.session_store import SessionStore, StoredSession, token_digest

# scrypt at N=2^14, r=8 (the parameters RFC 7914 suggests for interactive logins) needs 16 MiB and about
# 0.13 s on a 2-core x86 machine: slow for a guesser, quick enough for a login. Checked off the event loop.
_N, _R, _P = 2**14, 8, 1
_MAXMEM = 64 * 1024 * 1024
MIN_PASSWORD_CHARS = 10
#: What a stored hash may ask of a login: a file asking more is damaged, not obeyed (scrypt with p = 10^9 would
#: hold a login for hours; N and r are held to _MAXMEM by scrypt itself).
_MAX_P, _MAX_R, _MAX_BYTES_B64 = 4, 64, 128
#: A digest this short (one cut short) would let through other passwords: scrypt's output is a stream, and its first
#: bytes match for the right password at any length. Ours are 64 bytes; salts 16.
_MIN_DIGEST, _MIN_SALT = 32, 16
_MAX_FILE_BYTES = 1024  # a stored hash is some 110 bytes; a larger file is not read into memory


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, maxmem=_MAXMEM)
    return "$".join(["scrypt", str(_N), str(_R), str(_P), _b64(salt), _b64(digest)])


def check_password(password: str, stored: str) -> bool:
    parsed = parse_hash(stored)
    if parsed is None:
        return False
    n, r, p, salt, expected = parsed
    try:
        got = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=len(expected))
    except (ValueError, OverflowError, MemoryError):  # a lone surrogate typed; costs over _MAXMEM
        return False
    return hmac.compare_digest(got, expected)


def parse_hash(stored: str) -> tuple[int, int, int, bytes, bytes] | None:
    """(n, r, p, salt, digest) of a stored scrypt hash; None for anything else, or for costs no login should pay."""
    try:
        scheme, n, r, p, salt, digest = stored.strip().split("$")
        if scheme != "scrypt" or max(len(salt), len(digest)) > _MAX_BYTES_B64:
            return None
        costs = int(n), int(r), int(p)
        salt_bytes, digest_bytes = base64.b64decode(salt, validate=True), base64.b64decode(digest, validate=True)
    except ValueError:  # too few or many fields, a number or base64 that is none (binascii.Error is a ValueError)
        return None
    n, r, p = costs
    if not (n > 1 and n & (n - 1) == 0 and 0 < r <= _MAX_R and 0 < p <= _MAX_P):
        return None
    if len(salt_bytes) < _MIN_SALT or len(digest_bytes) < _MIN_DIGEST:
        return None
    return n, r, p, salt_bytes, digest_bytes


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def password_problem(password: str) -> str | None:
    if len(password) < MIN_PASSWORD_CHARS:
        return f"use at least {MIN_PASSWORD_CHARS} characters"
    return None


class PasswordFile:
    """The staff password's scrypt hash, in a file only the service user can read."""

    def __init__(self, path: Path):
        self.path = path

    def is_set(self) -> bool:
        """Whether the file holds a usable password hash; a damaged one counts as none, so the staff page asks for
        a new password (`kiosk passwd`) instead of refusing every login."""
        return self._read()[0] is not None

    def problem(self) -> str | None:
        """Why the file, where there is one, holds no usable password, in words; None when it does or is absent."""
        stored, why = self._read()
        return None if stored is not None or not self.path.exists() else why

    def set(self, password: str) -> None:
        problem = password_problem(password)
        if problem:
            raise ConfigError([f"password: {problem}"])
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self.path, hash_password(password).encode() + b"\n", mode=0o600)
            _give_to_directory_owner(self.path)
        except OSError as exc:
            raise ConfigError([f"staff.password_file: cannot write {self.path} ({exc.strerror or exc})"]) from exc

    def check(self, password: str) -> bool:
        stored, _ = self._read()
        return stored is not None and check_password(password, stored)

    def _read(self) -> tuple[str | None, str]:
        """(the stored hash, "") or (None, why there is none). Any content, of any size, is only read."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read(_MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return None, "no staff password is set yet"
        except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
            return None, f"the staff password file {self.path} cannot be read ({getattr(exc, 'strerror', None) or exc})"
        stored = raw.decode("ascii", "replace")
        if len(raw) > _MAX_FILE_BYTES or parse_hash(stored) is None:
            return None, f"the staff password file {self.path} is damaged (it holds no password hash)"
        return stored, ""


def _give_to_directory_owner(path: Path) -> None:
    """Run as root, `kiosk passwd` hands the file to the owner of its directory (the service user), which
    could not read a root-owned 0600 file otherwise."""
    if os.geteuid() != 0:
        return
    owner = path.parent.stat()
    if owner.st_uid != 0:
        os.chown(path, owner.st_uid, owner.st_gid)


#: A session unused this long ends, whatever its lifetime: a phone left logged in on a bench does not stay so.
IDLE_S = 2 * 3600


@dataclass
class Session:
    token: str
    csrf: str
    expires: float  # the absolute end (staff.session_hours after login): activity never moves it
    idle_until: float  # the end if nothing more is asked of the page; each request moves it on


class Sessions:
    """Server-side sessions that slide with activity: a session ends `idle_s` after its last request, and in any
    case `lifetime_s` after login. The cookie holds only a random token; with a `store`, sessions outlive a restart
    of the service (see kiosk.staff.session_store), not a reboot or a new password."""

    #: How often a request's moving on of its idle deadline is written down (each login and logout at once).
    SAVE_TOUCH_EVERY_S = 300.0

    def __init__(
        self,
        lifetime_s: float,
        clock: Callable[[], float] = time.monotonic,
        idle_s: float = IDLE_S,
        store: SessionStore | None = None,
    ):
        self.lifetime_s = lifetime_s
        self.idle_s = min(idle_s, lifetime_s)
        self._clock = clock
        self._store = store
        self._saved_at = clock()
        stored = store.load() if store else []
        self._sessions: dict[str, Session] = {  # by the token's digest: a restored session's token is unknown
            s.digest: Session("", s.csrf, s.expires, s.idle_until) for s in stored if _alive(s, clock())
        }

    def create(self) -> Session:
        self._expire()
        now = self._clock()
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        session = Session(token, csrf, now + self.lifetime_s, now + self.idle_s)
        self._sessions[token_digest(token)] = session
        self._save()
        return session

    def get(self, token: str | None, *, touch: bool = True) -> Session | None:
        """The live session for `token`, or None. `touch` (a request staff made) moves its idle deadline on; a
        page polling in the background passes False, so an open tab alone does not keep a session alive."""
        if not token:
            return None
        digest = token_digest(token)
        session = self._sessions.get(digest)
        now = self._clock()
        if session is None or not _alive(session, now):
            if self._sessions.pop(digest, None) is not None:
                self._save()
            return None
        if touch:
            session.idle_until = min(now + self.idle_s, session.expires)
            if now - self._saved_at >= self.SAVE_TOUCH_EVERY_S:
                self._save()
        return session

    def end_all_but(self, token: str) -> None:
        """Every other session ends (after a password change)."""
        keep = token_digest(token)
        self._sessions = {d: s for d, s in self._sessions.items() if d == keep}
        self._save()

    def end(self, token: str | None) -> None:
        if token and self._sessions.pop(token_digest(token), None) is not None:
            self._save()

    def _expire(self) -> None:
        now = self._clock()
        for digest in [d for d, s in self._sessions.items() if not _alive(s, now)]:
            del self._sessions[digest]

    def _save(self) -> None:
        self._saved_at = self._clock()
        if self._store is not None:
            self._store.save([StoredSession(d, s.csrf, s.expires, s.idle_until) for d, s in self._sessions.items()])


def _alive(session: Session | StoredSession, now: float) -> bool:
    return now < session.expires and now < session.idle_until


class LoginLimiter:
    """After `attempts` failed logins from one address within `window_s`, refuse it for `lockout_s`.

    An attempt is counted when it starts, before its password is checked: guesses sent in parallel each take a
    slot, so 300 at once from one address get at most `attempts` checks and the rest are refused at once.
    """

    def __init__(
        self,
        attempts: int = 5,
        window_s: float = 600,
        lockout_s: float = 300,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.attempts, self.window_s, self.lockout_s = attempts, window_s, lockout_s
        self._clock = clock
        self._failures: dict[str, list[float]] = {}
        self._checking: dict[str, int] = {}
        self._locked_until: dict[str, float] = {}

    def begin(self, address: str) -> float:
        """Start an attempt from `address`: 0 when it may go ahead (it must then end with `failed` or
        `succeeded`), else the seconds it must wait."""
        wait = self.locked_for(address)
        if wait:
            return wait
        if len(self._recent(address)) + self._checking.get(address, 0) >= self.attempts:
            return self.lockout_s
        self._checking[address] = self._checking.get(address, 0) + 1
        return 0.0

    def locked_for(self, address: str) -> float:
        """Seconds this address must still wait (0 when it may try)."""
        left = self._locked_until.get(address, 0) - self._clock()
        if left <= 0:
            self._locked_until.pop(address, None)
            return 0.0
        return left

    def failed(self, address: str) -> bool:
        """Count a failed attempt; True when this one locked the address out."""
        self._end(address)
        recent = [*self._recent(address), self._clock()]
        locked = len(recent) >= self.attempts
        if locked:
            self._locked_until[address] = self._clock() + self.lockout_s
            recent = []
        self._failures[address] = recent
        if len(self._failures) > 10_000:  # bound memory against a spray of addresses
            self._failures.clear()
        return locked

    def abandoned(self, address: str) -> None:
        """An attempt that was never checked (the checker was busy): it counts neither way."""
        self._end(address)

    def succeeded(self, address: str) -> None:
        self._end(address)
        self._failures.pop(address, None)

    def _recent(self, address: str) -> list[float]:
        now = self._clock()
        return [t for t in self._failures.get(address, []) if now - t < self.window_s]

    def _end(self, address: str) -> None:
        left = self._checking.get(address, 0) - 1
        if left > 0:
            self._checking[address] = left
        else:
            self._checking.pop(address, None)


class CheckerBusy(Exception):
    """Too many password checks are waiting already; the client should try again shortly."""


class PasswordChecker:
    """Checks passwords on threads of their own (scrypt takes ~0.1 s of CPU and 16 MiB each), never on the
    event loop nor on the pool that cache reads use, with a bounded queue: a flood of logins from many addresses
    is refused rather than left to pile up."""

    def __init__(self, passwords: Callable[[], PasswordFile], *, workers: int = 1, max_waiting: int = 4):
        self._passwords = passwords
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="password")
        self._max_waiting = max_waiting
        self._waiting = 0

    async def check(self, password: str) -> bool:
        if self._waiting >= self._max_waiting:
            raise CheckerBusy("too many logins at once")
        self._waiting += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, self._passwords().check, password)
        finally:
            self._waiting -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
