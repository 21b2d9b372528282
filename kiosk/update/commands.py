"""`kiosk release` (make a release archive from a checkout) and `kiosk update FILE | --rollback | --spool`."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from kiosk.errors import KioskError
from kiosk.update.archive import build_release
from kiosk.update.releases import Releases
from kiosk.update.rollout import RECORD, Updater, read_record
from kiosk.update.spool import state_dir, take
from kiosk.update.systemctl import Systemd

DEFAULT_PROGRAM_DIR = Path("/opt/kiosk")


def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    release = commands.add_parser("release", help="make a release archive of a checkout, for 'kiosk update'")
    release.add_argument("--source", type=Path, default=Path.cwd(), help="the checkout (default: this directory)")
    release.add_argument("--out", type=Path, default=Path("dist"), help="where to write it (default: %(default)s)")
    release.add_argument("--version", dest="release_version", metavar="V", help="set this version (like 1.4.0)")
    release.set_defaults(func=cmd_release)

    update = commands.add_parser("update", parents=[common], help="install a release; it rolls back if it fails")
    what = update.add_mutually_exclusive_group(required=True)
    what.add_argument("file", nargs="?", type=Path, help="a release archive made by 'kiosk release'")
    what.add_argument("--rollback", action="store_true", help="go back to the previous release")
    what.add_argument("--spool", action="store_true", help="install what the staff page or the fleet left waiting")
    what.add_argument("--status", action="store_true", help="the releases installed and the last update's outcome")
    update.add_argument(
        "--program-dir", type=Path, default=_program_dir(), help="where the releases are (default: %(default)s)"
    )
    update.add_argument("--unit", default="kiosk.service", help="the service's systemd unit (default: %(default)s)")
    update.set_defaults(func=cmd_update)


def _program_dir() -> Path:
    """The releases this program is one of (…/releases/<version>), else the installed place."""
    here = Path(sys.prefix).resolve()
    return here.parent.parent if here.parent.name == "releases" else DEFAULT_PROGRAM_DIR


def cmd_release(args: argparse.Namespace) -> int:
    source = args.source.resolve()
    if not (source / "pyproject.toml").is_file() or not (source / "kiosk").is_dir():
        raise KioskError(f"release: {source} is not a kiosk checkout (no pyproject.toml and kiosk/ there)")
    archive = build_release(source, args.out, args.release_version)
    print(archive)
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    state = _state_dir(args.config)
    record = state / RECORD
    releases = Releases(args.program_dir)
    if args.status:
        return _print_status(releases, record)
    if not os.access(args.program_dir, os.W_OK):
        raise KioskError(f"update: {args.program_dir} is not writable here: run it with sudo")
    updater = Updater(releases, Systemd(args.unit), record)
    if args.rollback:
        print(updater.rollback())
        return 0
    if args.spool:
        with tempfile.TemporaryDirectory(prefix="kiosk-update-") as work:
            return 0 if updater.update(take(state, Path(work))) else 1
    return 0 if updater.update(args.file) else 1


def _state_dir(config: Path) -> Path:
    """The state directory the config names; the default one when the config cannot be read (an update may be
    what mends it)."""
    from kiosk.config import load_config
    from kiosk.config.web import StaffConfig
    from kiosk.errors import ConfigError

    try:
        return state_dir(load_config(config).staff.settings_file)
    except (ConfigError, OSError):
        return state_dir(StaffConfig().settings_file)


def _print_status(releases: Releases, record: Path) -> int:
    current, previous = releases.current(), releases.previous()
    for version in releases.installed():
        mark = " (running)" if version == current else " (previous)" if version == previous else ""
        print(f"{version}{mark}")
    last = read_record(record)
    print(f"last update: {last['message']}" if last else "last update: none")
    return 0
