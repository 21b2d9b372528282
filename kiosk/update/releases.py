"""The program's releases on the speaker: `<root>/releases/<version>`, each a virtualenv, the link `<root>/current`
naming the one that runs, and `<root>/previous` the one it replaced (where a rollback goes).

A new release is a copy of the running one's virtualenv made of hard links (nothing is copied, and the running
release is never touched: pip replaces files, it never writes into them), with the new wheel installed over it.
Its dependencies are the running release's, so an update needs no network.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from kiosk.errors import KioskError
from kiosk.update.archive import BadRelease, Release, version_order

#: Releases kept besides the current and previous ones, newest first.
KEEP = 3
#: Inside a release still being installed; a release with it is unfinished and is removed before a new attempt.
INSTALLING = ".installing"
#: Files of a virtualenv that name its own path: its scripts' #! lines, activate scripts, pyvenv.cfg.
_MAX_RETARGET_BYTES = 1 << 20


class Releases:
    def __init__(self, root: Path):
        self.root = root
        self.dir = root / "releases"

    def path(self, version: str) -> Path:
        return self.dir / version

    def current(self) -> str | None:
        return self._link("current")

    def previous(self) -> str | None:
        return self._link("previous")

    def _link(self, name: str) -> str | None:
        try:
            target = Path(os.readlink(self.root / name))
        except OSError:
            return None
        return target.name if (self.dir / target.name).is_dir() else None

    def installed(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        found = [p.name for p in self.dir.iterdir() if p.is_dir() and not (p / INSTALLING).exists()]
        return sorted(found, key=version_order, reverse=True)

    def install(self, release: Release, work_dir: Path) -> Path:
        """Install `release` as releases/<version> beside the running one; KioskError (nothing left behind) when
        it cannot be installed or does not start its command line."""
        current = self.current()
        if current is None:
            raise KioskError(f"no current release in {self.root} (install.sh sets one up)")
        if release.version == current:
            raise BadRelease(f"{release.version} is the release running now")
        target = self.path(release.version)
        if target.exists():  # an earlier attempt, or a release rolled back from: made again from this archive
            self.remove(release.version)
        copy_venv(self.path(current), target)
        (target / INSTALLING).touch()
        try:
            wheel = release.extract_wheel(work_dir)
            _pip_install(target, wheel)
            _check_runs(target, release.version)
            (target / INSTALLING).unlink()
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        return target

    def switch(self, version: str) -> None:
        """Make `version` current, the current one previous. Each link is replaced in one rename."""
        if not self.path(version).is_dir():
            raise KioskError(f"release {version} is not installed in {self.dir}")
        current = self.current()
        if current is not None and current != version:
            _link(self.root / "previous", current)
        _link(self.root / "current", version)

    def rollback(self) -> tuple[str, str]:
        """Make the previous release current again, and the current one previous: (from, to)."""
        current, previous = self.current(), self.previous()
        if previous is None or current is None:
            raise KioskError("there is no earlier release to go back to")
        self.switch(previous)
        return current, previous

    def restore(self, current: str, previous: str | None) -> None:
        """Put both links back as they were before an update that failed."""
        _link(self.root / "current", current)
        if previous is None:
            (self.root / "previous").unlink(missing_ok=True)
        else:
            _link(self.root / "previous", previous)

    def prune(self, keep: int = KEEP) -> list[str]:
        """Remove all but the newest `keep` releases besides the current and previous ones (never removed), and
        any left unfinished by an install that was cut off (a power cut)."""
        protected = {self.current(), self.previous()}
        leftovers = [p.name for p in self.dir.iterdir() if p.is_dir() and (p / INSTALLING).exists()]
        old = [v for v in self.installed() if v not in protected][keep:]
        for version in old + leftovers:
            self.remove(version)
        return old

    def remove(self, version: str) -> None:
        if version == self.current():
            raise KioskError(f"release {version} is running and is not removed")
        shutil.rmtree(self.path(version))


def _link(link: Path, version: str) -> None:
    tmp = link.with_name(f".{link.name}.new")
    tmp.unlink(missing_ok=True)
    os.symlink(f"releases/{version}", tmp)  # relative: the tree may be looked at from elsewhere (install --root)
    os.replace(tmp, link)


def copy_venv(source: Path, target: Path) -> None:
    """A copy of the virtualenv `source` at `target` made of hard links, with the files that name its path
    rewritten (each written anew, so that the shared original is never changed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copytree(source, target, symlinks=True, copy_function=os.link)
    except (OSError, shutil.Error) as exc:  # another file system: hard links are impossible, so copy
        shutil.rmtree(target, ignore_errors=True)
        if not _cross_device(exc):
            raise KioskError(f"cannot copy {source} to {target}: {exc}") from exc
        shutil.copytree(source, target, symlinks=True)
    old, new = os.fsencode(source.resolve()), os.fsencode(target.resolve())
    candidates = [target / "pyvenv.cfg", *sorted((target / "bin").iterdir())]
    for path in candidates:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > _MAX_RETARGET_BYTES:
            continue
        data = path.read_bytes()
        if old in data:
            tmp = path.with_name(f".{path.name}.retarget")
            tmp.write_bytes(data.replace(old, new))
            shutil.copymode(path, tmp)
            os.replace(tmp, path)


def _cross_device(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno == 18  # EXDEV
    return "Invalid cross-device link" in str(exc)


def _pip_install(venv: Path, wheel: Path) -> None:
    # No index: the dependencies are those of the release it was copied from (PIP_FIND_LINKS may offer more).
    command = [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-index", "--no-input", "-q"]
    command += ["--disable-pip-version-check", "--no-cache-dir", str(wheel)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        missing = [line for line in lines if "No matching distribution found for" in line]
        if missing:
            needs = missing[0].rsplit("for", 1)[1].strip()
            raise KioskError(f"the release needs {needs}, which this speaker does not have; run install.sh from it")
        raise KioskError(f"pip could not install the release: {' / '.join(lines[-3:])[:600]}")


def _check_runs(venv: Path, version: str) -> None:
    """The new release's own command line starts and says its version (its imports work)."""
    try:
        done = subprocess.run([str(venv / "bin" / "kiosk"), "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KioskError(f"release {version} does not start its command line ({exc})") from exc
    if done.returncode != 0 or done.stdout.strip() != f"kiosk {version}":
        said = (done.stderr.strip().splitlines() or [done.stdout.strip()])[-1:]
        raise KioskError(f"release {version} does not start its command line: {' '.join(said)[:300]}")
