"""Release archives for tests, made without pip: a wheel holding only its metadata (enough for every check an
archive gets before anything is installed), and the same archive damaged in the ways a download or a person can."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import zipfile
from pathlib import Path


def wheel_bytes(version: str, name: str = "kiosk", padding: int = 0) -> bytes:
    """A wheel of `name` `version` holding only its metadata, and `padding` random bytes stored as they are (for an
    archive of a given size)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        info = f"{name}-{version}.dist-info"
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
        zf.writestr("kiosk/__init__.py", "")
        if padding:
            zf.writestr("kiosk/padding.bin", os.urandom(padding), compress_type=zipfile.ZIP_STORED)
    return buffer.getvalue()


def make_archive(
    directory: Path,
    version: str,
    *,
    wheel: bytes | None = None,
    manifest: dict | None = None,
    members: dict[str, bytes] | None = None,
) -> Path:
    """`kiosk-<version>.tar` in `directory`; `manifest` entries replace the right ones, `members` are added."""
    wheel = wheel_bytes(version) if wheel is None else wheel
    wheel_name = f"kiosk-{version}-py3-none-any.whl"
    body = {
        "format": 1,
        "name": "kiosk",
        "version": version,
        "wheel": wheel_name,
        "sha256": hashlib.sha256(wheel).hexdigest(),
        **(manifest or {}),
    }
    path = directory / f"kiosk-{version}.tar"
    with tarfile.open(path, "w:") as tar:
        for member, data in {"manifest.json": json.dumps(body).encode(), wheel_name: wheel, **(members or {})}.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def flip_byte(path: Path) -> Path:
    """The archive with one byte in the middle of its wheel changed, as a bad sector or a broken download would."""
    with tarfile.open(path, "r:") as tar:
        wheel = next(m for m in tar.getmembers() if m.name.endswith(".whl"))
    data = bytearray(path.read_bytes())
    data[wheel.offset_data + wheel.size // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return path
