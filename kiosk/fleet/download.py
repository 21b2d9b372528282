"""The speaker's side of `kiosk fleet update`: the MQTT command `update` with {"url", "sha256", "version"}.

The command is checked at once (a refusal is the command's answer on the error topic); the release is then
downloaded in the background, streamed to a temp file in `<state>/updates/`, bounded in time and size, its SHA-256
compared with the command's, and handed over to the updater (kiosk.update.spool), which installs it, restarts
the service and rolls back by itself. Each step is written to the update record (`update.json`, as the updater
writes it) and the speaker's status is published at once, so the one record carries every outcome: a trickling or
hostile server, a redirect loop, a wrong hash or an over-size body is refused with a sentence, the temp file
removed, never a traceback. One update at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from kiosk import __version__
from kiosk.commands import CommandError, parse_body
from kiosk.errors import KioskError
from kiosk.update import rollout
from kiosk.update.archive import MAX_ARCHIVE_BYTES, newer
from kiosk.update.rollout import RECORD, read_record
from kiosk.update.spool import SPOOL_DIR, hand_over, incoming, state_dir

log = logging.getLogger(__name__)

#: The whole download, connecting included; a server that trickles is cut off here.
TOTAL_S = 300.0
#: The longest wait for the next bytes; a server that stalls is cut off here.
SOCK_READ_S = 30.0
CONNECT_S = 15.0
MAX_BYTES = MAX_ARCHIVE_BYTES
MAX_REDIRECTS = 3
CHUNK = 64 * 1024
MAX_URL = 2048
MAX_VERSION = 64
SHA256 = re.compile(r"[0-9a-fA-F]{64}")
TEMP_PREFIX = "download-"

# The results this side writes; the updater then writes installing, updated, rolled back, refused or failed.
DOWNLOADING = "downloading"
WAITING = "waiting to install"
REFUSED = "refused"


@dataclass(frozen=True)
class Order:
    url: str
    sha256: str
    version: str


def order_of(raw: bytes, running: str = __version__) -> Order:
    """The command's payload, checked strictly; CommandError says what is wrong in one sentence."""
    body = parse_body(raw, {"url", "sha256", "version"})
    url, sha, version = body.get("url"), body.get("sha256"), body.get("version")
    if not isinstance(url, str) or not _good_url(url):
        raise CommandError(400, f"'url' must be an http:// or https:// address with a host, at most {MAX_URL} long")
    if not isinstance(sha, str) or SHA256.fullmatch(sha) is None:
        raise CommandError(400, "'sha256' must be the archive's SHA-256: 64 hexadecimal digits")
    if not isinstance(version, str) or not version or len(version) > MAX_VERSION:
        raise CommandError(400, f"'version' must be a version string of at most {MAX_VERSION} characters")
    try:
        is_newer = newer(version, running)
    except ValueError:  # packaging's InvalidVersion
        raise CommandError(400, f"'version' {version[:MAX_VERSION]!r} is not a version (like 1.4.0)") from None
    if not is_newer:
        raise CommandError(409, f"{version} is not newer than {running}, which runs now")
    return Order(url, sha.lower(), version)


def _good_url(url: str) -> bool:
    if len(url) > MAX_URL or not url.isprintable() or " " in url:
        return False
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a bad port or IPv6 literal
        return False


def write_record(state: Path, result: str, version: str | None, message: str) -> None:
    """A download's step in the update record the updater then goes on writing."""
    rollout.write_record(state / RECORD, result, version, __version__, message)


class Updates:
    """One speaker's fleet updates: `start` checks a command and downloads in the background."""

    def __init__(self, settings_file: Callable[[], Path], on_change: Callable[[], None] = lambda: None):
        self._settings_file = settings_file  # read each time: a reload may change it
        self._on_change = on_change
        self._task: asyncio.Task | None = None
        self._busy: str | None = None  # the version being downloaded; None again before its outcome is written
        self._notes = asyncio.Lock()  # records written in the order of the steps

    def state(self) -> Path:
        return state_dir(self._settings_file())

    def record(self) -> dict | None:
        """The last update's record, for the status."""
        return read_record(self.state() / RECORD)

    def order_of(self, raw: bytes) -> Order:
        return order_of(raw)

    def start(self, order: Order) -> dict:
        """Start the download of a checked order; CommandError (nothing started) when one runs or waits."""
        if self._busy is not None:
            raise CommandError(409, f"an update to {self._busy} is being downloaded; one update at a time")
        if incoming(self.state()).exists():
            raise CommandError(409, "another update is waiting to be installed; try again in a minute")
        self._busy = order.version
        self._task = asyncio.create_task(self._run(order), name="fleet-update")
        return {"update": order.version, "state": DOWNLOADING}

    async def wait(self) -> None:
        """Until the download running now (if any) has ended; for tests and shutdown."""
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def stop(self) -> None:
        """The service stops: a download still running is stopped (its temp file removed, the record saying so)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        await self.wait()

    async def _run(self, order: Order) -> None:
        state = self.state()
        await self._note(state, DOWNLOADING, order.version, f"downloading {order.version} from {order.url[:200]}")
        temp: Path | None = None
        try:
            temp = await asyncio.to_thread(_temp_file, state)
            size = await download(order, temp)
            release = await asyncio.to_thread(hand_over, temp, state)
            temp = None  # it is the updater's now
            result = WAITING
            message = f"{release.version} downloaded ({size // 1024} KB) and waiting to be installed"
        except KioskError as exc:
            result, message = REFUSED, f"update to {order.version} refused: {exc}"
        except asyncio.CancelledError:
            self._busy = None
            _remove(temp)
            write_record(state, REFUSED, order.version, f"the download of {order.version} was stopped")
            raise
        except Exception as exc:  # never a traceback from a command
            log.error("fleet update to %s failed: %s", order.version, _plain(exc))
            result, message = REFUSED, f"update to {order.version} failed: {_plain(exc)}"
        _remove(temp)  # before the record says it ended
        self._busy = None  # a command that sees the outcome may start the next one
        await self._note(state, result, order.version, message)

    async def _note(self, state: Path, result: str, version: str, message: str) -> None:
        log.info("%s", message)
        async with self._notes:
            await asyncio.to_thread(write_record, state, result, version, message)
        self._on_change()


def _remove(temp: Path | None) -> None:
    if temp is not None:
        with contextlib.suppress(OSError):
            temp.unlink()


def _temp_file(state: Path) -> Path:
    """A new private temp file in the spool directory (the updater's file system, so the hand-over is a rename)."""
    spool = state / SPOOL_DIR
    try:
        spool.mkdir(mode=0o750, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".partial", dir=spool)
    except OSError as exc:
        raise KioskError(f"no room for the download in {spool} ({exc.strerror})") from exc
    os.close(fd)
    return Path(name)


async def download(order: Order, target: Path) -> int:
    """Stream `order.url` into `target`, bounded in time and size, its SHA-256 checked: the size, or KioskError
    with a sentence (the caller removes the file)."""
    where = urlsplit(order.url).hostname
    timeout = aiohttp.ClientTimeout(total=TOTAL_S, sock_connect=CONNECT_S, sock_read=SOCK_READ_S)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout, auto_decompress=False, trust_env=False) as session,
            session.get(order.url, max_redirects=MAX_REDIRECTS) as response,
        ):
            if response.status != 200:
                raise KioskError(f"{where} answered {response.status} {response.reason or ''}".rstrip())
            if (response.content_length or 0) > MAX_BYTES:
                raise KioskError(f"{where} offers {response.content_length} bytes; a release is at most {MAX_BYTES}")
            digest, size = await _save(response, target, where)
    except aiohttp.TooManyRedirects:
        raise KioskError(f"{where} redirected more than {MAX_REDIRECTS} times") from None
    except TimeoutError:
        raise KioskError(f"{where} was too slow: the download was cut off (at most {TOTAL_S:.0f} s)") from None
    except aiohttp.ClientError as exc:
        raise KioskError(f"the download from {where} failed ({_plain(exc)})") from None
    except OSError as exc:
        raise KioskError(f"the download could not be written ({exc.strerror or exc})") from None
    if digest != order.sha256:
        raise KioskError("the download's SHA-256 is not the command's: the file is damaged or not the one sent")
    return size


async def _save(response: aiohttp.ClientResponse, target: Path, where: str | None) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(target, "wb") as f:
        async for chunk in response.content.iter_chunked(CHUNK):
            size += len(chunk)
            if size > MAX_BYTES:
                raise KioskError(f"{where} sent more than {MAX_BYTES} bytes; a release is not that large")
            digest.update(chunk)
            f.write(chunk)
        await asyncio.to_thread(_sync, f)
    return digest.hexdigest(), size


def _sync(f) -> None:
    f.flush()
    os.fsync(f.fileno())


def _plain(exc: BaseException) -> str:
    return (str(exc).strip() or type(exc).__name__)[:300]
