"""The Account page's Update section: the version running, the last update's outcome in staff words, and a release
archive uploaded from a phone and handed to the updater (kiosk.update.spool), which installs it as root and switches
back by itself when the new release does not start.

A release may be far larger than any other form (up to MAX_BYTES), so it is never read into memory: the guard
(app.py) reads only the form's first field, its CSRF token, with `open_upload`, and the handler streams the file
into a temp file in the spool directory (the hand-over renames it, so it must be on the same file system) and
removes it whatever happens unless the updater was handed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, MultipartReader, web

from kiosk import __version__
from kiosk.errors import KioskError
from kiosk.staff.common import BACKEND, BODY_TIMEOUT_S, FORM, render, tokens_match
from kiosk.update import spool
from kiosk.update.archive import MAX_ARCHIVE_BYTES, BadRelease
from kiosk.update.rollout import RECORD, read_record
from kiosk.web.server import LONGER_BODY

log = logging.getLogger(__name__)

routes = web.RouteTableDef()

PATH = "/account/update"
#: The forms whose body the guard leaves to their handler (it checks their CSRF token with open_upload first).
STREAMED = (PATH,)
FIELD = "release"
#: Read from the network and written this much at a time.
CHUNK = 256 * 1024
#: No release is larger (the updater refuses one that is); a larger upload is refused as it arrives.
MAX_BYTES = MAX_ARCHIVE_BYTES
#: A release over a museum's Wi-Fi may take minutes (64 MB at 2 Mbit/s is over four): once the page's token has been
#: checked, the upload has this long in all, and at most UPLOAD_IDLE_S between two pieces (as the fleet's download).
UPLOAD_S = 300.0
UPLOAD_IDLE_S = 30.0
#: A temp file this old is left from an upload that never ended (a power cut): removed at the next upload.
STALE_S = 3600.0
_PARTIAL = ".upload-"
#: The spool holds one update at a time; hand_over's check and its rename are not one step, so uploads on this
#: service wait for each other's (a thread lock: hand_over runs in a worker thread).
_ONE_AT_A_TIME = threading.Lock()


async def open_upload(request: web.Request, csrf: str) -> MultipartReader:
    """The upload's multipart reader once its first field, `csrf`, matched `csrf`: the guard's CSRF check for a
    form whose body is too large to read before the handler. 4xx for anything else, nothing read past the token."""
    if request.content_type != "multipart/form-data":
        raise web.HTTPBadRequest(text="send the release with the page's form, as a file")
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            reader = await request.multipart()
            part = await reader.next()
            given = await part.read() if isinstance(part, BodyPartReader) and part.name == "csrf" else b""
    except TimeoutError:
        raise web.HTTPRequestTimeout(text="the form did not arrive in time") from None
    except web.HTTPException:
        raise  # a token field past the app's size limit: 413
    except Exception as exc:  # aiohttp's multipart parser raises many kinds on malformed input
        log.info("unreadable upload from %s: %s", request.remote, type(exc).__name__)
        raise web.HTTPBadRequest(text="the form could not be read; reload the page") from None
    if not tokens_match(bytes(given).decode("ascii", "replace"), csrf):
        raise web.HTTPForbidden(text="missing or wrong CSRF token; reload the page")
    return reader


@routes.post(PATH)
async def upload_release(request: web.Request) -> web.Response:
    reader: MultipartReader = request[FORM]
    request.get(LONGER_BODY, lambda seconds: None)(UPLOAD_S)  # signed in, token checked: past the guard's 10 s
    state = spool.state_dir(request.app[BACKEND].cfg.staff.settings_file)
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            part = await reader.next()
    except TimeoutError:
        return await _answer(request, "the file did not arrive in time; try again", 408)
    except Exception as exc:
        log.info("unreadable upload from %s: %s", request.remote, type(exc).__name__)
        return await _answer(request, "the form could not be read; reload the page", 400)
    if not isinstance(part, BodyPartReader) or part.name != FIELD or not part.filename:
        return await _answer(request, "choose a release file (kiosk-….tar) to upload", 400)
    name = _shown_name(part.filename)
    try:
        upload = await asyncio.to_thread(_new_upload_file, state)
    except OSError as exc:
        log.warning("the spool for updates cannot be used: %s", exc)
        return await _answer(request, f"the speaker cannot keep the file ({exc.strerror or exc})", 503)
    try:
        try:
            async with asyncio.timeout(UPLOAD_S):
                size = await _receive(part, upload, MAX_BYTES)
        except TimeoutError:
            return await _answer(request, f"{name} did not arrive in time; try again", 408)
        except OSError as exc:
            return await _answer(request, f"the speaker cannot keep the file ({exc.strerror or exc})", 503)
        except Exception as exc:  # a broken multipart body
            log.info("unreadable upload from %s: %s", request.remote, type(exc).__name__)
            return await _answer(request, f"{name} could not be read; try again", 400)
        if size is None:
            return await _answer(request, f"{name} is larger than {_size(MAX_BYTES)}, so it is not a release", 413)
        if size == 0:
            return await _answer(request, f"{name} is empty; choose the release file (kiosk-….tar)", 400)
        try:
            release = await asyncio.to_thread(_hand_over, upload, state)
        except BadRelease as exc:
            log.info("staff upload of %s refused: %s", name, exc)
            return await _answer(request, str(exc).replace(upload.name, name), 400)
        except (KioskError, OSError) as exc:
            log.warning("staff upload of %s could not be handed over: %s", name, exc)
            why = _no_paths(exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc))
            return await _answer(request, f"the speaker cannot pass the file on ({why})", 503)
    finally:
        with contextlib.suppress(FileNotFoundError):
            upload.unlink()  # gone already once handed over
    log.warning("staff page: %s handed to the updater from %s", release.version, request.remote)
    accepted = (
        f"{release.version} is being installed; the speaker restarts on it within a minute, and goes back to "
        f"{__version__} by itself if it does not start."
    )
    return await _answer(request, None, 200, accepted=accepted)


async def _answer(request: web.Request, error: str | None, status: int, accepted: str | None = None) -> web.Response:
    """The Account page with the upload's outcome in its Update section; nothing else on it changed."""
    errors = {FIELD: _sentence(error) + " Nothing was changed."} if error else {}
    update = await section(request, accepted=accepted)
    return render("account.html", request, status=status, errors=errors, notice=None, values={}, update=update)


async def section(request: web.Request, accepted: str | None = None) -> dict[str, Any]:
    """What the Update section shows: the version running, the last update's outcome, whether one waits."""
    state = spool.state_dir(request.app[BACKEND].cfg.staff.settings_file)
    record, waiting = await asyncio.to_thread(lambda: (read_record(state / RECORD), spool.incoming(state).exists()))
    kind, outcome = outcome_words(record) if record else (None, None)
    return {
        "version": __version__,
        "outcome": outcome,
        "kind": kind,
        "waiting": waiting,
        "accepted": accepted,
        "most": _size(MAX_BYTES),
    }


def outcome_words(record: dict, now: datetime | None = None) -> tuple[str, str]:
    """The last update (a record as read_record gives it) in staff words, with how it went: "ok", "busy" or
    "attention". No file paths: the record is the updater's, written for whoever reads its log too."""
    result, version = record.get("result"), record.get("version") or "the new release"
    message = _no_paths(str(record.get("message", ""))).rstrip(".")
    when = _when(record.get("time"), now or datetime.now())
    if result == "updated":
        return "ok", f"Updated to {version}{when}."
    if result == "installing":
        return "busy", f"{version} is being installed (started{when})." if when else f"{version} is being installed."
    switched = f"{version} was switched back to "
    if result == "rolled back" and message.startswith(switched):
        previous, _, why = message.removeprefix(switched).partition(": ")
        why = f": {why}" if why else ""
        return "attention", f"{version} did not start and was switched back to {previous}{when}{why}."
    if result == "refused":
        why = re.sub(r"^[\w.-]+\.tar: ", "", message)  # the spool's own file name says nothing to staff
        return "attention", f"An update was refused{when}: {why}. Nothing was changed."
    if result == "failed":
        return "attention", f"An update failed{when}: {message}."
    return ("attention" if result == "rolled back" else "ok"), f"{_sentence(message).rstrip('.')}{when}."


def _when(moment: Any, now: datetime) -> str:
    if not isinstance(moment, int | float):
        return ""
    try:
        at = datetime.fromtimestamp(moment)
    except (OverflowError, OSError, ValueError):
        return ""
    year = f" {at.year}" if at.year != now.year else ""
    return f" on {at.day} {at:%b}{year} {at:%H:%M}"


def _no_paths(text: str) -> str:
    """`text` with every absolute file path made "a file on the speaker"."""
    return re.sub(r"(?<![\w.:/])/[\w.@+-]+(?:/[\w.@+-]*)*", "a file on the speaker", text)


def _sentence(text: str) -> str:
    """`text` as a sentence: a capital first (unless it starts with a file's name, kept as it is) and a full stop."""
    text = text.strip().rstrip(".")
    if not text or "." in text.split(" ", 1)[0].rstrip(":"):
        return f"{text}." if text else ""
    return text[:1].upper() + text[1:] + "."


def _size(limit: int) -> str:
    return f"{limit // (1024 * 1024)} MB" if limit >= 1024 * 1024 else f"{limit // 1024} KB"


def _shown_name(filename: str) -> str:
    """The uploaded file's own name as staff chose it (no folder), short enough for a sentence."""
    name = re.split(r"[/\\]", filename)[-1].strip() or "The file"
    return name if len(name) <= 60 else name[:57] + "…"


def _new_upload_file(state: Path) -> Path:
    """An empty temp file of ours in the spool directory (made if missing), after removing stale ones."""
    directory = state / spool.SPOOL_DIR
    directory.mkdir(mode=0o750, parents=True, exist_ok=True)
    for old in directory.glob(f"{_PARTIAL}*"):
        with contextlib.suppress(OSError):
            if time.time() - old.stat().st_mtime > STALE_S:
                old.unlink()
    fd, name = tempfile.mkstemp(prefix=_PARTIAL, suffix=".tar", dir=directory)
    os.close(fd)
    return Path(name)


async def _receive(part: BodyPartReader, path: Path, limit: int) -> int | None:
    """Write the part into `path` as it arrives and make it durable: its size, or None once it passes `limit`
    (nothing more is read)."""
    size = 0
    with open(path, "wb") as f:
        while chunk := await asyncio.wait_for(part.read_chunk(CHUNK), UPLOAD_IDLE_S):
            size += len(chunk)
            if size > limit:
                return None
            await asyncio.to_thread(f.write, chunk)
        await asyncio.to_thread(_flush, f)
    return size


def _flush(f) -> None:
    f.flush()
    os.fsync(f.fileno())


def _hand_over(upload: Path, state: Path):
    with _ONE_AT_A_TIME:
        return spool.hand_over(upload, state)
