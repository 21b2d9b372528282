"""Durable file replacement: write a temp file, fsync it, rename it over the target, fsync the directory.

After a crash or power cut the target holds either the old content or the new, never a torn mix.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def temp_path_for(path: Path) -> Path:
    """A hidden temp name beside `path` carrying the writer's pid (so leftovers of dead writers can be found)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def write_atomically(path: Path, *parts: bytes, mode: int = 0o644, backup: bool = False) -> None:
    """Replace `path` with `parts` durably; with `backup`, the previous content is kept as `<path>.bak`."""
    tmp = temp_path_for(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            for part in parts:
                f.write(part)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # O_CREAT's mode is filtered by the umask
        if backup and path.exists():
            _keep_backup(path, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_directory(path.parent)


def _keep_backup(path: Path, mode: int) -> None:
    bak = path.with_name(path.name + ".bak")
    write_atomically(bak, path.read_bytes(), mode=mode)


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
