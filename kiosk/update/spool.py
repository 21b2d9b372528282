"""The hand-over of a release archive from the service (the staff page's upload, a fleet download), which runs as
the unprivileged user kiosk, to the updater, which runs as root in kiosk-update.service.

The service checks the archive, then renames it to `<state dir>/updates/incoming.tar`; the unit kiosk-update.path
starts the updater when that file appears. The updater takes the file (a private copy, the spool emptied) before it
reads it, and never follows a link there.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from kiosk import __version__
from kiosk.errors import KioskError
from kiosk.fileio import fsync_directory
from kiosk.update.archive import MAX_ARCHIVE_BYTES, BadRelease, Release, newer, read_release

SPOOL_DIR = "updates"
INCOMING = "incoming.tar"


def state_dir(settings_file: Path) -> Path:
    """Where the update record and the spool live: the service's state directory, beside the staff settings."""
    return settings_file.parent


def incoming(state: Path) -> Path:
    return state / SPOOL_DIR / INCOMING


def hand_over(upload: Path, state: Path, running: str = __version__) -> Release:
    """Check the archive at `upload` (a temp file of the caller's, on the state directory's file system) and pass
    it to the updater. BadRelease, with nothing changed, for a damaged, wrong or not newer file, or while another
    update waits."""
    release = read_release(upload)
    if not newer(release.version, running):
        raise BadRelease(f"{release.version} is not newer than {running}, which runs now")
    target = incoming(state)
    target.parent.mkdir(mode=0o750, exist_ok=True)
    try:
        os.link(upload, target)  # never over another waiting update, even one handed over this instant
    except FileExistsError:
        raise BadRelease("another update is waiting to be installed; try again in a minute") from None
    upload.unlink()
    fsync_directory(target.parent)
    return release


def take(state: Path, work_dir: Path) -> Path:
    """Move the waiting archive into `work_dir` (the updater's own): the spool is empty afterwards, whatever the
    file was. KioskError when there is none, or it is not a plain file."""
    source = incoming(state)
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise KioskError(f"no update is waiting in {source.parent}") from None
    except OSError as exc:  # ELOOP: a link, which is never followed
        _discard(source)
        raise BadRelease(f"{source.name}: not a plain file ({exc.strerror})") from exc
    copy = work_dir / INCOMING
    try:
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise BadRelease(f"{source.name}: not a plain file")
            with open(copy, "wb") as out:
                copied = _copy_at_most(f, out, MAX_ARCHIVE_BYTES + 1)
            if copied > MAX_ARCHIVE_BYTES:
                raise BadRelease(f"{source.name}: too large for a release (at most 64 MB)")
    finally:
        _discard(source)
    return copy


def _copy_at_most(source, target, limit: int) -> int:
    copied = 0
    while copied < limit and (chunk := source.read(min(1 << 20, limit - copied))):
        target.write(chunk)
        copied += len(chunk)
    return copied


def _discard(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
