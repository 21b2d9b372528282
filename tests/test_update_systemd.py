"""Updates and rollbacks under a real systemd: install.sh in a booted Debian 12 container, then `kiosk update`.

Opt-in, as root: it boots a container and takes a few minutes (install.sh downloads the Debian packages and the
Python libraries the first time; later runs take them from a download cache).

    KIOSK_SYSTEMD_TESTS=1 .venv/bin/python -m pytest tests/test_update_systemd.py -q -s

Without KIOSK_SYSTEMD_TESTS=1 the module is skipped at once; with it, it is skipped (with the reason) when not root,
without systemd-nspawn / nsenter, or without the Debian tree. The tree is KIOSK_NSPAWN_TREE (default
/var/tmp/nspawn/bookworm) and is never changed: each run boots a copy of it beside it and removes the copy. Make it
once (apt-get install debootstrap systemd-container):

    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,python3,python3-venv,libasound2,alsa-utils \
        bookworm /var/tmp/nspawn/bookworm http://deb.debian.org/debian

The container shares the host's network: install.sh inside runs apt-get and pip as on a Pi. Where pip needs a CA
certificate of its own to reach PyPI (a TLS-inspecting proxy), PIP_CERT (or KIOSK_NSPAWN_PIP_CERT) names it and it is
copied in. Downloads are cached on the host in KIOSK_NSPAWN_CACHE (default: `cache` beside the tree; `none` for no
cache), bind-mounted as the container's apt archive and root's pip cache: apt and pip check what they take from there.

What it does, timing each step (printed at the end, and written as JSON to KIOSK_SYSTEMD_TIMINGS when set):
  install  install.sh from a clean copy of the checkout (git's files), no OpenAI key, a config written first that
           plays to ALSA's `null` device (there is no sound card) on free ports; kiosk.service must start.
  a        `kiosk update` to a release 99.0.0 built on the host by `kiosk release`: the service runs it.
  b        `kiosk update` to 99.1.0, whose `kiosk run` exits at once (its `kiosk --version` works, so it installs):
           switched back to 99.0.0 by itself, the record says why.
  c        `kiosk update --rollback`: back to the checkout's own version.
  d        a release left as /var/lib/kiosk/updates/incoming.tar by the user kiosk, as the staff page and the fleet
           leave it: kiosk-update.path starts kiosk-update.service (with all its hardening), which installs it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

if os.environ.get("KIOSK_SYSTEMD_TESTS") != "1":
    pytest.skip("boots a container under a real systemd: set KIOSK_SYSTEMD_TESTS=1 (as root)", allow_module_level=True)

from nspawn import Machine, missing

TREE = Path(os.environ.get("KIOSK_NSPAWN_TREE") or "/var/tmp/nspawn/bookworm")
_why_not = missing(TREE)
if _why_not:
    pytest.skip(_why_not, allow_module_level=True)

REPO = Path(__file__).parent.parent
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
GOOD, BROKEN, SPOOLED = "99.0.0", "99.1.0", "99.2.0"
HEALTH_LIMIT_S, SETTLE_S = 60, 25  # kiosk.update.rollout's
SRC = "/root/kiosk-src"  # the checkout inside
RELEASES_IN = "/root/releases"  # the archives inside
STATE = "/var/lib/kiosk"

# No sound card in a container: ALSA's null device takes the audio. Free ports, as the container shares the host's
# network. Written before install.sh, which keeps an existing config.
CONFIG = """\
audio:
  device: "null"
openai:
  api_key_file: /var/lib/kiosk/openai.key
api:
  port: 0
staff:
  port: 0
captions:
  enabled: false
buttons: []
phrases:
  welcome: "Welcome to the hall of minerals."
"""

pytestmark = pytest.mark.timeout(1800)


# -- the host side: a clean copy of the checkout and the release archives ------------------------------------------


def snapshot(target: Path) -> Path:
    """The checkout's files as git knows them (tracked and new, not ignored), as they are now in the work tree."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = REPO / name
        if source.is_file():  # listed but deleted in the work tree: left out
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def break_run(tree: Path) -> None:
    """`kiosk run` exits with status 3 at once; every other command, `kiosk --version` too, still works."""
    cli = tree / "kiosk" / "cli.py"
    text, count = re.subn(
        r"(?m)^(def cmd_run\(.*\).*:\n)", r"\1    raise SystemExit(3)  # a release that cannot start\n", cli.read_text()
    )
    assert count == 1, "kiosk/cli.py has no one-line `def cmd_run(...)` to break"
    cli.write_text(text)


def build_release(source: Path, out: Path, version: str) -> Path:
    kiosk = Path(sys.executable).parent / "kiosk"
    command = [str(kiosk), "release", "--source", str(source), "--out", str(out), "--version", version]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"kiosk release {version}: exit {done.returncode}\n{done.stderr}"
    return Path(done.stdout.strip())


# -- fixtures -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def timings():
    """Seconds per step; printed (and written to KIOSK_SYSTEMD_TIMINGS) when the module is done."""
    found: dict[str, float] = {}
    yield found
    print("\n" + "\n".join(f"  {name:<34} {value:7.1f} s" for name, value in found.items()))
    if os.environ.get("KIOSK_SYSTEMD_TIMINGS"):
        Path(os.environ["KIOSK_SYSTEMD_TIMINGS"]).write_text(json.dumps(found, indent=1) + "\n")


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    return snapshot(tmp_path_factory.mktemp("checkout"))


@pytest.fixture(scope="module")
def archives(checkout, tmp_path_factory, timings) -> dict[str, Path]:
    """The three releases, built on the host as a developer would (`kiosk release`, pip with build isolation)."""
    out = tmp_path_factory.mktemp("releases")
    broken = tmp_path_factory.mktemp("broken")
    for part in ("kiosk", "pyproject.toml", "README.md"):
        copy = shutil.copytree if (checkout / part).is_dir() else shutil.copy2
        copy(checkout / part, broken / part)
    break_run(broken)
    started = time.monotonic()
    built = {
        GOOD: build_release(checkout, out, GOOD),
        BROKEN: build_release(broken, out, BROKEN),
        SPOOLED: build_release(checkout, out, SPOOLED),
    }
    timings["build 3 releases (host)"] = time.monotonic() - started
    return built


def _pip_env(root: Path) -> dict[str, str]:
    """pip's settings for install.sh inside: a CA certificate the host's pip needs, copied in; its timeout."""
    env = {"PIP_DEFAULT_TIMEOUT": os.environ.get("PIP_DEFAULT_TIMEOUT", "120")}
    cert = os.environ.get("KIOSK_NSPAWN_PIP_CERT") or os.environ.get("PIP_CERT")
    if cert and Path(cert).is_file():
        inside = "/usr/local/share/kiosk-test/pip-ca.pem"
        (root / inside.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(cert, root / inside.lstrip("/"))
        env["PIP_CERT"] = inside
    return env


def _caches() -> dict[Path, str]:
    setting = os.environ.get("KIOSK_NSPAWN_CACHE", str(TREE.parent / "cache"))
    if setting in ("", "none"):
        return {}
    cache = Path(setting)
    return {cache / "apt": "/var/cache/apt/archives", cache / "pip": "/root/.cache/pip"}


@pytest.fixture(scope="module")
def speaker(checkout, archives, timings):
    """A booted container with the speaker installed by install.sh and running; powered off and removed after."""
    machine = Machine(TREE, binds=_caches())
    try:
        root = machine.copy()
        config = root / "etc/kiosk"
        config.mkdir(mode=0o750)
        (config / "kiosk.yaml").write_text(CONFIG)
        (config / "kiosk.yaml").chmod(0o644)  # root-owned until install.sh makes the directory root:kiosk
        shutil.copytree(checkout, root / SRC.lstrip("/"), symlinks=True)
        (root / RELEASES_IN.lstrip("/")).mkdir()
        for archive in archives.values():
            shutil.copy(archive, root / RELEASES_IN.lstrip("/") / archive.name)
        machine.env.update(_pip_env(root))

        started = time.monotonic()
        machine.boot(timeout=120)
        timings["boot (to is-system-running)"] = time.monotonic() - started

        started = time.monotonic()
        done = machine.run(f"{SRC}/install.sh", timeout=1200, check=False)
        timings["install.sh"] = time.monotonic() - started
        assert done.returncode == 0, f"install.sh: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        yield machine
    except BaseException:
        print(f"\n--- container console ---\n{machine.console()}")
        if machine.leader is not None:
            print(f"--- journal: kiosk ---\n{machine.journal('kiosk')}")
            print(f"--- journal: kiosk-update ---\n{machine.journal('kiosk-update')}")
        raise
    finally:
        machine.stop()


# -- looking at the machine -------------------------------------------------------------------------------------


def shown(m: Machine, unit: str = "kiosk.service") -> dict[str, str]:
    out = m.run("systemctl", "show", "-p", "ActiveState,SubState,MainPID,InvocationID,Result", unit).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def running(state: dict[str, str]) -> bool:
    return state.get("ActiveState") == "active" and state.get("SubState") == "running"


def main_release(m: Machine) -> str:
    """The release the service's main process runs: its interpreter, /opt/kiosk/releases/<version>/bin/python."""
    pid = shown(m)["MainPID"]
    assert pid != "0", f"kiosk.service has no main process\n{m.journal('kiosk')}"
    argv = m.run("cat", f"/proc/{pid}/cmdline").stdout.split("\0")
    found = re.fullmatch(r"/opt/kiosk/releases/([^/]+)/bin/python3?", argv[0])
    assert found, f"the main process is {argv}"
    return found.group(1)


def current(m: Machine) -> str | None:
    try:
        return Path(os.readlink(m.host_path("/opt/kiosk/current"))).name
    except OSError:
        return None


def record(m: Machine) -> dict | None:
    try:
        return json.loads(m.host_path(f"{STATE}/update.json").read_text())
    except (OSError, ValueError):
        return None


def version(m: Machine) -> str:
    return m.run("kiosk", "--version").stdout.strip()


def wait_running(m: Machine, timeout: float = 30) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while not running(state := shown(m)):
        assert time.monotonic() < deadline, f"kiosk.service is {state}\n{m.journal('kiosk')}"
        time.sleep(0.2)
    return state


def follow(
    m: Machine, started: float, done: Callable[[], bool], timeout: float, **events: Callable[[dict], bool]
) -> dict[str, float]:
    """Poll the machine every 0.1 s until `done()` (or `timeout`): the seconds after `started` at which each event
    first held. An event sees {"current", "record", "service", "seen"}: the link, update.json, systemctl show, and
    the events seen so far."""
    seen: dict[str, float] = {}
    deadline = started + timeout
    while True:
        snap = {"current": current(m), "record": record(m) or {}, "service": shown(m), "seen": seen}
        for name, happened in events.items():
            if name not in seen and happened(snap):
                seen[name] = time.monotonic() - started
        if done() or time.monotonic() > deadline:
            return seen
        time.sleep(0.1)


def update(m: Machine, *args: str, timeout: float, **events: Callable[[dict], bool]):
    """`kiosk update ARGS` inside, followed: (exit status, its output, seconds it took, {event: seconds})."""
    started = time.monotonic()
    proc = m.popen("kiosk", "update", *args)
    seen = follow(m, started, lambda: proc.poll() is not None, timeout, **events)
    try:
        out, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"kiosk update {' '.join(args)} still running after {timeout:.0f} s:\n{out}")
    return proc.returncode, out, time.monotonic() - started, seen


def new_run(target: str, before: str) -> Callable[[dict], bool]:
    """The service runs again, started anew (another InvocationID), with `current` naming `target`."""
    return lambda s: s["current"] == target and running(s["service"]) and s["service"]["InvocationID"] != before


# -- the steps, in order ----------------------------------------------------------------------------------------


def test_install_sh_starts_the_service(speaker):
    wait_running(speaker)
    assert version(speaker) == f"kiosk {VERSION}"
    assert current(speaker) == VERSION
    assert main_release(speaker) == VERSION
    units = speaker.run("systemctl", "is-active", "kiosk-update.path").stdout.strip()
    assert units == "active"


def test_the_audio_writer_gets_real_time_priority_under_the_unit(speaker):
    """The unit's LimitRTPRIO and RestrictRealtime=no let the kiosk user's writer thread take SCHED_FIFO 10."""
    wait_running(speaker)
    pid = speaker.run("systemctl", "show", "-P", "MainPID", "kiosk").stdout.strip()
    limits = speaker.run("cat", f"/proc/{pid}/limits").stdout
    if re.search(r"Max realtime priority\s+0\s", limits):
        pytest.skip("the container could not raise RLIMIT_RTPRIO (its host has no CAP_SYS_RESOURCE)")
    threads = speaker.run("ps", "-L", "-o", "cls=,rtprio=", "-p", pid).stdout.split("\n")
    assert ["FF", "10"] in [t.split() for t in threads], threads


def test_a_update_runs_the_new_release(speaker, archives, timings):
    before = shown(speaker)["InvocationID"]
    code, out, took, seen = update(
        speaker,
        f"{RELEASES_IN}/{archives[GOOD].name}",
        timeout=HEALTH_LIMIT_S + SETTLE_S + 60,
        switched=lambda s: s["current"] == GOOD,
        ready=new_run(GOOD, before),
        recorded=lambda s: s["record"].get("result") == "updated",
    )
    timings["a: update, new release ready"] = seen.get("ready", float("nan"))
    timings["a: update, exit (after settling)"] = took
    assert code == 0, out
    assert version(speaker) == f"kiosk {GOOD}"
    assert main_release(speaker) == GOOD
    last = record(speaker)
    assert last["result"] == "updated" and last["version"] == GOOD and last["running"] == GOOD, last
    assert {"switched", "ready", "recorded"} <= seen.keys(), seen


def test_b_a_release_that_does_not_start_is_switched_back(speaker, archives, timings):
    assert current(speaker) == GOOD, "needs step a"
    before = shown(speaker)["InvocationID"]
    code, out, took, seen = update(
        speaker,
        f"{RELEASES_IN}/{archives[BROKEN].name}",
        timeout=2 * (HEALTH_LIMIT_S + SETTLE_S) + 60,
        switched=lambda s: s["current"] == BROKEN,
        switched_back=lambda s: "switched" in s["seen"] and s["current"] == GOOD,
        old_ready=lambda s: "switched" in s["seen"] and new_run(GOOD, before)(s),
        recorded=lambda s: s["record"].get("result") == "rolled back",
    )
    timings["b: broken, switched back"] = seen.get("switched_back", float("nan"))
    timings["b: broken, old release ready"] = seen.get("old_ready", float("nan"))
    timings["b: broken, rollback recorded"] = seen.get("recorded", float("nan"))
    timings["b: broken, exit"] = took
    print(f"\n  b: {out.strip()}")
    assert code != 0, out
    assert {"switched", "switched_back", "old_ready", "recorded"} <= seen.keys(), seen
    # Caught as soon as it stops, long before the limit; the record waits for the old release to settle.
    assert seen["switched_back"] < HEALTH_LIMIT_S, seen
    assert seen["recorded"] < HEALTH_LIMIT_S + SETTLE_S, seen
    assert current(speaker) == GOOD
    assert running(wait_running(speaker))
    assert main_release(speaker) == GOOD
    assert version(speaker) == f"kiosk {GOOD}"
    last = record(speaker)
    assert last["result"] == "rolled back" and last["version"] == BROKEN and last["running"] == GOOD, last
    assert f"{BROKEN} was switched back to {GOOD}: " in last["message"], last
    assert re.search(r"exit status 3|not ready", last["message"]), last
    # A rollback by hand must never land on the release that just failed.
    previous = Path(os.readlink(speaker.host_path("/opt/kiosk/previous"))).name
    assert previous == VERSION, f"previous is {previous}"


def test_c_rollback_by_hand(speaker, timings):
    assert current(speaker) == GOOD, "needs steps a and b"
    before = shown(speaker)["InvocationID"]
    code, out, took, seen = update(
        speaker,
        "--rollback",
        timeout=HEALTH_LIMIT_S + SETTLE_S + 60,
        switched=lambda s: s["current"] == VERSION,
        ready=new_run(VERSION, before),
    )
    timings["c: rollback, ready"] = seen.get("ready", float("nan"))
    timings["c: rollback, exit (after settling)"] = took
    assert code == 0, out
    assert version(speaker) == f"kiosk {VERSION}"
    assert main_release(speaker) == VERSION
    assert running(shown(speaker))
    last = record(speaker)
    assert last["result"] == "rolled back" and last["running"] == VERSION, last
    assert f"went back from {GOOD} to {VERSION}" in last["message"], last


def test_d_a_release_left_in_the_spool_is_installed_by_the_path_unit(speaker, archives, timings):
    assert current(speaker) == VERSION, "needs step c"
    before = shown(speaker)["InvocationID"]
    spool = f"{STATE}/updates"
    # As the service leaves it (kiosk.update.spool.hand_over): user kiosk renames a checked file into place.
    speaker.run("runuser", "-u", "kiosk", "--", "mkdir", "-p", "-m", "0750", spool)
    upload = f"{spool}/.upload-{SPOOLED}"
    speaker.run(
        "install", "-o", "kiosk", "-g", "kiosk", "-m", "0640", f"{RELEASES_IN}/{archives[SPOOLED].name}", upload
    )
    started = time.monotonic()
    speaker.run("runuser", "-u", "kiosk", "--", "mv", "-T", upload, f"{spool}/incoming.tar")

    incoming = speaker.host_path(f"{spool}/incoming.tar")

    def finished() -> bool:
        """The updater took the file and has ended (whatever the outcome)."""
        if incoming.exists() or (record(speaker) or {}).get("result") == "installing":
            return False
        return shown(speaker, "kiosk-update.service").get("ActiveState") in ("inactive", "failed")

    seen = follow(
        speaker,
        started,
        finished,
        HEALTH_LIMIT_S + SETTLE_S + 60,
        taken=lambda s: not incoming.exists(),
        switched=lambda s: s["current"] == SPOOLED,
        ready=new_run(SPOOLED, before),
        recorded=lambda s: s["record"].get("result") == "updated" and s["record"].get("version") == SPOOLED,
    )
    timings["d: spool, taken"] = seen.get("taken", float("nan"))
    timings["d: spool, new release ready"] = seen.get("ready", float("nan"))
    timings["d: spool, update recorded"] = seen.get("recorded", float("nan"))
    updater = shown(speaker, "kiosk-update.service")
    log = speaker.journal("kiosk-update")
    print(f"\n--- journal: kiosk-update ---\n{log}")
    last = record(speaker)
    assert last and last.get("result") == "updated" and last.get("version") == SPOOLED, f"{last}\n{updater}\n{log}"
    assert updater["Result"] == "success", f"{updater}\n{log}"
    assert speaker.run("ls", "-A", spool).stdout == "", "the spool is not empty"
    assert version(speaker) == f"kiosk {SPOOLED}"
    assert main_release(speaker) == SPOOLED
    assert running(shown(speaker))
    assert speaker.run("systemctl", "is-active", "kiosk-update.path").stdout.strip() == "active"
