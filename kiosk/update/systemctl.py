"""The service manager, as an update sees it: systemd, through systemctl."""

from __future__ import annotations

import subprocess

from kiosk.errors import KioskError
from kiosk.update.rollout import ServiceState

_PROPERTIES = "ActiveState,SubState,InvocationID,Result,ExecMainStatus"


class Systemd:
    """kiosk.update.rollout.ServiceControl for a systemd unit (Type=notify: active means it said READY=1)."""

    def __init__(self, unit: str = "kiosk.service", systemctl: str = "systemctl"):
        self.unit = unit
        self._systemctl = systemctl

    def restart(self) -> None:
        # --no-block: the update watches the start itself, with its own limit, instead of systemd's start timeout.
        self._run("restart", "--no-block", self.unit)

    def state(self) -> ServiceState:
        shown = dict(
            line.split("=", 1) for line in self._run("show", "-p", _PROPERTIES, self.unit).splitlines() if "=" in line
        )
        active, sub = shown.get("ActiveState", "?"), shown.get("SubState", "?")
        detail = f"{active} ({sub})"
        if shown.get("Result") not in (None, "", "success"):
            detail += f", last result {shown['Result']}, exit status {shown.get('ExecMainStatus', '?')}"
        running = active in ("active", "activating", "reloading", "deactivating") and sub != "auto-restart"
        return ServiceState(
            ready=active in ("active", "reloading") and sub == "running",
            run_id=(shown.get("InvocationID") or None) if running else None,
            detail=detail,
        )

    def _run(self, *args: str) -> str:
        try:
            done = subprocess.run([self._systemctl, *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise KioskError(f"systemctl {args[0]} {self.unit}: {exc}") from exc
        if done.returncode != 0:
            raise KioskError(f"systemctl {args[0]} {self.unit}: {done.stderr.strip()[:300]}")
        return done.stdout
