"""A throw-away Debian machine with a real systemd as PID 1, for the tests that need one (tests/test_update_systemd.py).

A prepared Debian 12 tree (see that test module for how to make it with debootstrap) is copied, never changed in
place, and booted with `systemd-nspawn -D <copy> -b --register=no --keep-unit`, sharing the host's network (apt and
pip inside reach their servers as the host does). Commands run inside through `nsenter -t <its PID 1> -a`, with an
environment of their own: nothing of the host's environment leaks in. The copy's files are also plain files on the
host (`machine.host_path("/opt/kiosk/current")`), which lets a test watch them without entering the machine.

`stop()` halts the machine (SIGTERM to systemd-nspawn, which asks systemd to power off; then SIGKILL) and removes the
copy; it is safe to call more than once and after a failed start.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def missing(tree: Path) -> str | None:
    """Why a machine cannot be booted here, or None."""
    if os.geteuid() != 0:
        return "booting a container needs root"
    for tool in ("systemd-nspawn", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install systemd-container util-linux)"
    if not (tree / "usr/lib/systemd/systemd").exists() or not (tree / "usr/bin/python3").exists():
        return f"no Debian tree with systemd and python3 at {tree} (see the top of tests/test_update_systemd.py)"
    return None


class Machine:
    def __init__(self, tree: Path, *, binds: dict[Path, str] | None = None, env: dict[str, str] | None = None):
        """`tree`: the prepared tree (copied, never changed); `binds`: host directory -> path inside (e.g. download
        caches); `env`: added to every command's environment inside."""
        self.tree = tree
        self.name = f"kiosk-test-{secrets.token_hex(4)}"
        # Copies go beside the tree: the same file system, so that cp can reflink where it supports that.
        self.work = tree.parent
        self.dir: Path | None = None
        self.root: Path | None = None
        self.binds = binds or {}
        self.env = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", **(env or {})}
        self.leader: int | None = None
        self._nspawn: subprocess.Popen | None = None
        self._log = None

    # -- lifetime -------------------------------------------------------------------------------------------------

    def copy(self) -> Path:
        """Copy the tree (before `boot`, so that files can be put into the copy first); the copy's root."""
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=self.work))
        self.root = self.dir / "root"
        subprocess.run(["cp", "-a", "--reflink=auto", str(self.tree), str(self.root)], check=True, timeout=600)
        return self.root

    def boot(self, timeout: float = 120) -> None:
        """Boot the copy and wait until systemd says the system is up (running or degraded)."""
        assert self.root is not None, "copy() first"
        command = ["systemd-nspawn", "-D", str(self.root), "-b", "--register=no", "--keep-unit"]
        command += [f"--machine={self.name}", "--console=pipe"]
        for host, inside in self.binds.items():
            host.mkdir(parents=True, exist_ok=True)
            command.append(f"--bind={host}:{inside}")
        self._log = open(self.dir / "console.log", "wb")  # noqa: SIM115 closed in stop()
        self._nspawn = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while self.leader is None:
            if self._nspawn.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited with {self._nspawn.returncode}:\n{self.console()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no systemd in the container after {timeout:.0f} s:\n{self.console()}")
            self.leader = self._find_leader()
            if self.leader is None:
                time.sleep(0.1)
        # systemctl cannot reach systemd until it has made its socket: until then it says nothing on stdout.
        while True:
            left = max(1.0, deadline - time.monotonic())
            done = self.run("systemctl", "is-system-running", "--wait", timeout=left, check=False)
            state = done.stdout.strip()
            if state in ("running", "degraded"):
                return
            if state or time.monotonic() > deadline:
                raise RuntimeError(f"the container's systemd says {state!r} {done.stderr!r}:\n{self.console()}")
            time.sleep(0.2)

    def _find_leader(self) -> int | None:
        """The container's PID 1 as seen from here: the child of systemd-nspawn that runs systemd."""
        pid = self._nspawn.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return None
        for child in children:
            with contextlib.suppress(OSError):
                if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                    return int(child)
        return None

    def stop(self, timeout: float = 30) -> None:
        """Power the machine off (killed if it does not go within `timeout`) and remove the copy."""
        proc, self._nspawn, self.leader = self._nspawn, None, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # systemd-nspawn asks the container's systemd to power off
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = self.root = None

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- inside -----------------------------------------------------------------------------------------------------

    def command(self, *args: str, env: dict[str, str] | None = None) -> list[str]:
        """The host command line that runs `args` inside the machine."""
        assert self.leader is not None, "boot() first"
        values = [f"{k}={v}" for k, v in {**self.env, **(env or {})}.items()]
        return ["nsenter", "-t", str(self.leader), "-a", "env", "-i", *values, *args]

    def run(
        self, *args: str, timeout: float = 120, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        """Run `args` inside as root (stdin empty) and return its output; with `check`, a failure raises with it."""
        done = subprocess.run(
            self.command(*args, env=env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(args)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}")
        return done

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        return subprocess.Popen(
            self.command(*args, env=env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def host_path(self, inside: str) -> Path:
        """Where a path of the machine's root file system is on the host (not for /run, /tmp or bind mounts)."""
        assert self.root is not None
        return self.root / inside.lstrip("/")

    def console(self, lines: int = 40) -> str:
        if self.dir is None or not (self.dir / "console.log").exists():
            return ""
        text = (self.dir / "console.log").read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def journal(self, unit: str, lines: int = 30) -> str:
        if self.leader is None:
            return ""
        done = self.run("journalctl", "-u", unit, "-n", str(lines), "--no-pager", check=False, timeout=30)
        return done.stdout + done.stderr
