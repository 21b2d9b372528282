"""Release archives: how one is made from a source tree (`kiosk release`) and how one is checked before anything
on the speaker changes.

An archive is an uncompressed tar of exactly two members: `manifest.json` and the wheel it names. The manifest
gives the format, the program's name and version, the wheel's file name and its SHA-256; the wheel's own metadata
must say the same name and version. Any other shape is refused with one sentence saying what is wrong.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path

from packaging.version import InvalidVersion, Version

from kiosk.errors import KioskError

MANIFEST = "manifest.json"
FORMAT = 1
NAME = "kiosk"
#: A release is the program alone (a few hundred KB); anything near this is not one.
MAX_ARCHIVE_BYTES = 64 * 1024 * 1024
MAX_MANIFEST_BYTES = 16 * 1024
WHEEL_NAME = re.compile(r"kiosk-([0-9A-Za-z.+!_]+)-py3-none-any\.whl")
SHA256 = re.compile(r"[0-9a-f]{64}")
#: What of a source tree makes the program (tests, bench and docs are not shipped).
SOURCE_FILES = ("pyproject.toml", "README.md")


class BadRelease(KioskError):
    """The file is not a release this speaker can install; nothing was changed."""


@dataclass(frozen=True)
class Release:
    version: str
    wheel_name: str
    sha256: str
    archive: Path

    def extract_wheel(self, directory: Path) -> Path:
        """Write the wheel into `directory`, checked against the manifest's SHA-256 once more (the archive may
        have changed since it was read)."""
        target = directory / self.wheel_name
        with _open_tar(self.archive) as tar:
            data = _member_bytes(tar, self.wheel_name, MAX_ARCHIVE_BYTES)
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise BadRelease(f"{self.archive.name}: the wheel changed while it was being installed")
        target.write_bytes(data)
        return target


def read_release(path: Path) -> Release:
    """The release in the archive at `path`, every part of it checked; BadRelease says what is wrong."""
    name = path.name
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise BadRelease(f"{name}: cannot be read ({exc.strerror})") from exc
    if size > MAX_ARCHIVE_BYTES:
        raise BadRelease(f"{name}: {size // (1024 * 1024)} MB is too large for a release (at most 64 MB)")
    with _open_tar(path) as tar:
        names = [member.name for member in tar.getmembers()]
        manifest = _manifest(_member_bytes(tar, MANIFEST, MAX_MANIFEST_BYTES), name)
        wheel = _member_bytes(tar, manifest["wheel"], MAX_ARCHIVE_BYTES)
        extra = sorted(set(names) - {MANIFEST, manifest["wheel"]})
        if extra or len(names) != 2:
            shown = ", ".join(repr(e[:80]) for e in extra[:3]) or "the same file twice"
            raise BadRelease(f"{name}: a release holds only {MANIFEST} and its wheel, not {shown}")
    if hashlib.sha256(wheel).hexdigest() != manifest["sha256"]:
        raise BadRelease(f"{name}: the wheel's SHA-256 is not the manifest's: the file is damaged")
    _check_wheel_metadata(wheel, manifest["version"], name)
    return Release(manifest["version"], manifest["wheel"], manifest["sha256"], path)


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:")  # uncompressed only: no decompression bomb
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BadRelease(f"{path.name}: not a release archive (a tar file made by 'kiosk release')") from exc


def _member_bytes(tar: tarfile.TarFile, member: str, limit: int) -> bytes:
    try:
        info = tar.getmember(member)
    except KeyError:
        raise BadRelease(
            f"{Path(tar.name or '?').name}: {member} is missing: the file is incomplete or damaged"
        ) from None
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BadRelease(f"{Path(tar.name or '?').name}: the archive is damaged ({exc})") from exc
    if not info.isfile() or info.size > limit:
        raise BadRelease(f"{Path(tar.name or '?').name}: {member} is not a plain file of at most {limit} bytes")
    try:
        f = tar.extractfile(info)
        data = f.read() if f else b""
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BadRelease(f"{Path(tar.name or '?').name}: the archive is damaged ({exc})") from exc
    if len(data) != info.size:
        raise BadRelease(f"{Path(tar.name or '?').name}: {member} is cut short: the file is damaged")
    return data


def _manifest(raw: bytes, name: str) -> dict:
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadRelease(f"{name}: {MANIFEST} is not JSON: the file is damaged") from exc
    if not isinstance(manifest, dict):
        raise BadRelease(f"{name}: {MANIFEST} is not a JSON object")
    if manifest.get("format") != FORMAT:
        raise BadRelease(f"{name}: {MANIFEST} has format {manifest.get('format')!r}; this speaker reads {FORMAT}")
    if manifest.get("name") != NAME:
        raise BadRelease(f"{name}: this is a release of {str(manifest.get('name'))[:40]!r}, not of {NAME}")
    version, wheel, sha = manifest.get("version"), manifest.get("wheel"), manifest.get("sha256")
    if not isinstance(version, str) or not _is_version(version):
        raise BadRelease(f"{name}: {MANIFEST} has no valid version")
    if not isinstance(wheel, str) or WHEEL_NAME.fullmatch(wheel) is None:
        raise BadRelease(f"{name}: {MANIFEST} does not name a kiosk wheel")
    if not isinstance(sha, str) or SHA256.fullmatch(sha) is None:
        raise BadRelease(f"{name}: {MANIFEST} has no SHA-256 of the wheel")
    return manifest


def _is_version(text: str) -> bool:
    try:
        Version(text)
    except InvalidVersion:
        return False
    return len(text) <= 64


def _check_wheel_metadata(wheel: bytes, version: str, name: str) -> None:
    try:
        with zipfile.ZipFile(io.BytesIO(wheel)) as zf:
            metadata_names = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1]
            if len(metadata_names) != 1:
                raise BadRelease(f"{name}: the wheel has no metadata")
            headers = HeaderParser().parsestr(zf.read(metadata_names[0]).decode("utf-8", "replace"))
            damaged = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise BadRelease(f"{name}: the wheel is damaged ({exc})") from exc
    if damaged is not None:
        raise BadRelease(f"{name}: the wheel is damaged ({damaged})")
    if headers.get("Name") != NAME or headers.get("Version") != version:
        raise BadRelease(f"{name}: the wheel is {headers.get('Name')} {headers.get('Version')}, not {NAME} {version}")


def newer(version: str, than: str) -> bool:
    return Version(version) > Version(than)


def version_order(version: str) -> tuple:
    """A sort key: releases by version (1.10 after 1.9), names that are no version first."""
    try:
        return (1, Version(version))
    except InvalidVersion:
        return (0, version)


def build_release(source: Path, out_dir: Path, version: str | None = None) -> Path:
    """Build `kiosk-<version>.tar` in `out_dir` from the source tree `source` (a checkout), with the version set
    to `version` when given. pip builds the wheel from a clean copy, so nothing is written into the checkout."""
    if version is not None and not _is_version(version):
        raise KioskError(f"release: {version!r} is not a version (like 1.4.0)")
    with tempfile.TemporaryDirectory(prefix="kiosk-release-") as tmp:
        tree = Path(tmp) / "src"
        tree.mkdir()
        shutil.copytree(source / "kiosk", tree / "kiosk", ignore=shutil.ignore_patterns("__pycache__"))
        for file in SOURCE_FILES:
            shutil.copy2(source / file, tree / file)
        if version is not None:
            _set_version(tree, version)
        wheels = Path(tmp) / "wheels"
        done = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(tree)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise KioskError(f"release: pip could not build the wheel:\n{done.stderr.strip()[-2000:]}")
        (wheel,) = wheels.glob("kiosk-*.whl")
        return _write_archive(wheel, out_dir)


def _set_version(tree: Path, version: str) -> None:
    pyproject = tree / "pyproject.toml"
    text, count = re.subn(r'(?m)^version = "[^"]*"$', f'version = "{version}"', pyproject.read_text("utf-8"), count=1)
    if count != 1:
        raise KioskError("release: pyproject.toml has no version line to set")
    pyproject.write_text(text, "utf-8")


def _write_archive(wheel: Path, out_dir: Path) -> Path:
    match = WHEEL_NAME.fullmatch(wheel.name)
    if match is None:
        raise KioskError(f"release: pip built {wheel.name}, not a pure-Python kiosk wheel")
    data = wheel.read_bytes()
    manifest = {
        "format": FORMAT,
        "name": NAME,
        "version": match.group(1),
        "wheel": wheel.name,
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"kiosk-{match.group(1)}.tar"
    partial = target.with_name(target.name + ".partial")
    with tarfile.open(partial, "w:", format=tarfile.PAX_FORMAT) as tar:
        for member, body in ((MANIFEST, json.dumps(manifest, indent=1).encode() + b"\n"), (wheel.name, data)):
            info = tarfile.TarInfo(member)
            info.size, info.mode = len(body), 0o644
            tar.addfile(info, io.BytesIO(body))
    partial.replace(target)
    return target
