"""A service manager for update tests where systemd cannot run: the real `kiosk run` of the current release as a
real process, told to report over a real NOTIFY_SOCKET as systemd's Type=notify, restarted when it exits as with
Restart=always. It implements kiosk.update.rollout.ServiceControl, as kiosk.update.systemctl.Systemd does."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from kiosk.update.rollout import ServiceState

RESTART_S = 0.5  # the unit's RestartSec, shortened


class ProcessManager:
    def __init__(self, program_dir: Path, config: Path, env: dict[str, str], notify_path: Path):
        self._program = program_dir / "current" / "bin" / "kiosk"
        self._config = config
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(notify_path))
        self._socket.setblocking(False)
        self._env = {**env, "NOTIFY_SOCKET": str(notify_path)}
        self._proc: subprocess.Popen | None = None
        self._runs = 0
        self._ready = False
        self._exited_at: float | None = None
        self.exit_codes: list[int] = []
        self._started_release: str | None = None

    def restart(self) -> None:
        self._stop()
        self._start()

    def state(self) -> ServiceState:
        self._drain()
        if self._proc is not None and self._proc.poll() is not None:
            self.exit_codes.append(self._proc.returncode)
            self._proc, self._ready, self._exited_at = None, False, time.monotonic()
        if self._proc is None and self._exited_at is not None and time.monotonic() - self._exited_at >= RESTART_S:
            self._start()
        if self._proc is None:
            return ServiceState(False, None, f"auto-restart (exit status {self.exit_codes[-1:]})")
        detail = "active (running)" if self._ready else "activating (start)"
        return ServiceState(self._ready, f"run-{self._runs}", detail)

    def running_version(self) -> str | None:
        """The release the running process was started from (the link current named then)."""
        return self._started_release if self._proc is not None else None

    def close(self) -> None:
        self._stop()
        self._socket.close()

    def _start(self) -> None:
        self._started_release = Path(os.readlink(self._program.parent.parent)).name
        self._runs += 1
        self._ready, self._exited_at = False, None
        self._proc = subprocess.Popen(
            [str(self._program), "run", "--config", str(self._config)],
            env=self._env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        self._proc, self._ready, self._exited_at = None, False, None
        self._drain()

    def _drain(self) -> None:
        while True:
            try:
                message = self._socket.recv(4096)
            except BlockingIOError:
                return
            if self._proc is not None and b"READY=1" in message.split(b"\n"):
                self._ready = True
