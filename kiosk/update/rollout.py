"""An update from start to end: check the archive, install it beside the running release, switch, restart, and
switch back by itself when the new release is not ready and healthy within a minute. Each outcome is kept in the
update record (`update.json` in the state directory) for the staff page, the API and MQTT to show.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kiosk.errors import KioskError
from kiosk.fileio import write_atomically
from kiosk.update.archive import BadRelease, newer, read_release
from kiosk.update.releases import Releases

log = logging.getLogger("kiosk.update")

#: How long a new release has to become ready and healthy before it is switched back.
HEALTH_LIMIT_S = 60.0
#: How long it must then keep running as the same process: past the watchdog's 20 s, so a hung loop is caught.
SETTLE_S = 25.0
POLL_S = 0.5
RECORD = "update.json"
MAX_RECORD_BYTES = 16 * 1024


@dataclass(frozen=True)
class ServiceState:
    ready: bool  # started and said it is ready (systemd: active)
    run_id: str | None  # one value per start of the main process (systemd: InvocationID), None when not running
    detail: str  # in a person's words, for the record: "active (running)", "failed (exit-code)"


class ServiceControl(Protocol):
    """What an update needs of the service manager (kiosk.update.systemctl for systemd)."""

    def restart(self) -> None: ...
    def state(self) -> ServiceState: ...


class Updater:
    def __init__(
        self,
        releases: Releases,
        control: ServiceControl,
        record: Path,
        *,
        limit_s: float = HEALTH_LIMIT_S,
        settle_s: float = SETTLE_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        say: Callable[[str], None] = print,
    ):
        self.releases = releases
        self._control = control
        self._record = record
        self._limit_s, self._settle_s = limit_s, settle_s
        self._clock, self._sleep, self._say = clock, sleep, say

    def update(self, archive: Path) -> bool:
        """Install and start the release in `archive`: True when it runs, False when it was switched back.
        BadRelease or KioskError (recorded, nothing changed) when it could not be installed."""
        try:
            release = read_release(archive)
            running = self.releases.current()
            if running is None:
                raise KioskError(f"no current release in {self.releases.root}: run install.sh once to set one up")
            if not newer(release.version, running):
                raise BadRelease(f"{release.version} is not newer than {running}, which runs now")
            self._note("installing", release.version, f"installing {release.version} beside {running}")
            with tempfile.TemporaryDirectory(prefix="kiosk-update-") as work:
                self.releases.install(release, Path(work))
        except KioskError as exc:
            self._note("refused", None, f"{archive.name}: {exc}" if isinstance(exc, BadRelease) else str(exc))
            raise
        self._say(f"installed {release.version}; starting it (up to {self._limit_s:.0f} s)")
        before = self.releases.previous()
        self.releases.switch(release.version)
        problem = self._restart_and_watch()
        if problem is None:
            self.releases.prune()
            self._note("updated", release.version, f"updated from {running} to {release.version}")
            return True
        # Back as before: the failed release is removed, so that a rollback by hand never lands on it.
        self.releases.restore(running, before)
        self.releases.remove(release.version)
        again = self._restart_and_watch()
        after = "" if again is None else f"; {running} did not start either: {again}"
        message = f"{release.version} was switched back to {running}: {problem}{after}"
        self._note("rolled back", release.version, message)
        return False

    def rollback(self) -> str:
        """Go back to the previous release by hand; the sentence recorded."""
        went_from, went_to = self.releases.rollback()
        problem = self._restart_and_watch()
        if problem is None:
            return self._note("rolled back", went_from, f"went back from {went_from} to {went_to} by hand")
        self.releases.rollback()  # forward again: the release that ran stays the one that runs
        again = self._restart_and_watch()
        after = f"; back on {went_from}" if again is None else f"; {went_from} did not start again either: {again}"
        message = f"did not go back from {went_from} to {went_to}, which does not run: {problem}{after}"
        self._note("failed", went_to, message)
        raise KioskError(message)

    def _restart_and_watch(self) -> str | None:
        """Restart the service and watch it: None once it has been ready for the settling time as one process,
        else what went wrong."""
        before = self._control.state().run_id
        self._control.restart()
        deadline = self._clock() + self._limit_s
        ours: str | None = None  # the run our restart started
        ready_since: float | None = None
        state = self._control.state()
        # Ready within the limit, then still the same process for the settling time.
        while self._clock() < (deadline if ready_since is None else ready_since + self._settle_s):
            state = self._control.state()
            if ours is None and state.run_id not in (None, before):
                ours = state.run_id
            elif ours is not None and state.run_id != ours:
                return f"it stopped after starting ({state.detail})"
            if ours is not None and state.ready and ready_since is None:
                ready_since = self._clock()
            elif ready_since is not None and not state.ready:
                return f"it stopped being ready ({state.detail})"
            self._sleep(POLL_S)
        if ready_since is not None:
            return None
        return f"it was not ready within {self._limit_s:.0f} s ({state.detail})"

    def _note(self, result: str, version: str | None, message: str) -> str:
        self._say(message)
        write_record(self._record, result, version, self.releases.current(), message)
        return message


def write_record(path: Path, result: str, version: str | None, running: str | None, message: str) -> None:
    """Keep an update's step or outcome for the staff page, /api/status and MQTT; a write that fails is logged."""
    record = {"result": result, "version": version, "running": running, "time": time.time(), "message": message}
    try:
        write_atomically(path, json.dumps(record).encode() + b"\n", mode=0o644)
    except OSError as exc:
        log.warning("could not keep the update record %s: %s", path, exc)


def read_record(path: Path) -> dict | None:
    """The last update's record, or None (none yet, or unreadable: the update itself said why)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_RECORD_BYTES + 1)
        record = json.loads(data) if len(data) <= MAX_RECORD_BYTES else None
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("message"), str):
        return None
    moment = record.get("time")
    return {
        "result": str(record.get("result"))[:40],
        "version": str(record["version"])[:64] if isinstance(record.get("version"), str) else None,
        "message": record["message"][:1000],
        "time": float(moment) if isinstance(moment, int | float) and moment == moment else None,
    }
