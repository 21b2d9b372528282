"""Updates that roll back: release archives made from this tree by `kiosk release`, checked before anything
changes, installed beside the running release, started as real `kiosk run` processes (tests/service_manager.py
stands in for systemd, which tests/test_update_systemd.py uses for real), and switched back by themselves."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from fake_openai import ThreadedFakeOpenAI
from release_files import flip_byte, make_archive, wheel_bytes
from service_manager import ProcessManager

from kiosk import __version__
from kiosk.errors import KioskError
from kiosk.update.archive import BadRelease, build_release, read_release
from kiosk.update.releases import Releases, copy_venv
from kiosk.update.rollout import Updater, read_record

REPO = Path(__file__).parent.parent
VENV = Path(sys.prefix)
NEW, BROKEN = "99.0.0", "99.1.0"


def kiosk(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kiosk", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def releases_built(tmp_path_factory) -> dict[str, Path]:
    """This tree as release 99.0.0 (by the command staff are told to use), and 99.1.0, whose service exits at start."""
    out = tmp_path_factory.mktemp("dist")
    checkout_before = {p.name for p in REPO.iterdir()}
    made = kiosk("release", "--source", str(REPO), "--out", str(out), "--version", NEW, timeout=300)
    assert made.returncode == 0, made.stderr
    broken_tree = tmp_path_factory.mktemp("broken")
    shutil.copytree(REPO / "kiosk", broken_tree / "kiosk", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, broken_tree / name)
    cli = broken_tree / "kiosk" / "cli.py"
    start_of_run = "    cfg = _config(args)\n    raise_open_file_limit()"
    cli.write_text(cli.read_text().replace(start_of_run, "    sys.exit(3)", 1))
    assert "sys.exit(3)" in cli.read_text()
    built = {NEW: Path(made.stdout.strip()), BROKEN: build_release(broken_tree, out, BROKEN)}
    built["checkout_new"] = {p.name for p in REPO.iterdir()} - checkout_before
    return built


@pytest.fixture
def program(tmp_path) -> Releases:
    """A program directory whose current release is this checkout's virtualenv (hard-linked, as updates copy)."""
    releases = Releases(tmp_path / "opt")
    copy_venv(VENV, releases.path(__version__))
    os.symlink(f"releases/{__version__}", releases.root / "current")
    return releases


def snapshot(root: Path) -> dict[str, tuple]:
    return {
        p.relative_to(root).as_posix(): (os.readlink(p),) if p.is_symlink() else (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


# -- the archive


def test_kiosk_release_makes_an_archive_of_a_wheel_and_its_manifest(releases_built):
    archive = releases_built[NEW]
    assert archive.name == f"kiosk-{NEW}.tar"
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("manifest.json"))
    assert names == ["manifest.json", f"kiosk-{NEW}-py3-none-any.whl"]
    assert manifest["version"] == NEW and manifest["name"] == "kiosk" and len(manifest["sha256"]) == 64
    release = read_release(archive)
    assert (release.version, release.wheel_name) == (NEW, names[1])
    # Nothing was written into the checkout.
    assert not releases_built["checkout_new"]


def test_release_command_refuses_a_directory_that_is_no_checkout(tmp_path):
    result = kiosk("release", "--source", str(tmp_path), "--out", str(tmp_path / "dist"))
    assert result.returncode == 1
    assert "is not a kiosk checkout" in result.stderr
    assert "Traceback" not in result.stderr


def _not_a_tar(d: Path) -> Path:
    path = d / "notes.tar"
    path.write_bytes(b"PK\x03\x04 this is a zip, or a photo, or anything")
    return path


def _truncated(d: Path) -> Path:
    path = make_archive(d, "5.0.0")
    path.write_bytes(path.read_bytes()[:1500])
    return path


REFUSED = {
    "not a tar file": (_not_a_tar, "not a release archive"),
    "one byte changed": (lambda d: flip_byte(make_archive(d, "5.0.0")), "SHA-256 is not the manifest's"),
    "cut short": (_truncated, "damaged"),
    "another program": (lambda d: make_archive(d, "5.0.0", manifest={"name": "other"}), "not of kiosk"),
    "no version": (lambda d: make_archive(d, "5.0.0", manifest={"version": "latest!"}), "no valid version"),
    "wheel of another version": (
        lambda d: make_archive(d, "5.0.0", wheel=wheel_bytes("4.0.0")),
        "the wheel is kiosk 4.0.0, not kiosk 5.0.0",
    ),
    "an extra file": (lambda d: make_archive(d, "5.0.0", members={"../../etc/cron.d/x": b"*"}), "holds only"),
    "a future format": (lambda d: make_archive(d, "5.0.0", manifest={"format": 2}), "has format 2"),
    "no hash": (lambda d: make_archive(d, "5.0.0", manifest={"sha256": "abc"}), "no SHA-256"),
    "manifest not JSON": (
        lambda d: make_archive(d, "5.0.0", members={"manifest.json": b"\xff{"}),
        "is not JSON",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_damaged_or_wrong_file_is_refused_before_anything_changes(case, tmp_path, program):
    make, said = REFUSED[case]
    archive = make(tmp_path)
    before = snapshot(program.root)
    record = tmp_path / "state" / "update.json"
    record.parent.mkdir()
    updater = Updater(program, NeverRestarted(), record, say=lambda _: None)
    with pytest.raises(BadRelease) as refused:
        updater.update(archive)
    assert said in str(refused.value)
    assert snapshot(program.root) == before
    assert read_record(record)["result"] == "refused"
    assert said in read_record(record)["message"]


def test_an_older_or_the_same_version_is_refused(tmp_path, program):
    updater = Updater(program, NeverRestarted(), tmp_path / "update.json", say=lambda _: None)
    for version in (__version__, "0.0.1"):
        with pytest.raises(BadRelease, match="is not newer than"):
            updater.update(make_archive(tmp_path, version))
    assert program.installed() == [__version__]


def test_kiosk_update_on_the_command_line_refuses_with_one_line(tmp_path, program):
    archive = flip_byte(make_archive(tmp_path, "5.0.0"))
    config = tmp_path / "kiosk.yaml"
    config.write_text(f"staff:\n  settings_file: {tmp_path}/state/staff-settings.yaml\n")
    (tmp_path / "state").mkdir()
    result = kiosk("update", str(archive), "--config", str(config), "--program-dir", str(program.root))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "the file is damaged" in result.stderr
    status = kiosk("update", "--status", "--config", str(config), "--program-dir", str(program.root))
    assert f"{__version__} (running)" in status.stdout
    assert "the file is damaged" in status.stdout


class NeverRestarted:
    def restart(self) -> None:
        raise AssertionError("a refused update restarted the service")

    def state(self):
        raise AssertionError("a refused update looked at the service")


# -- installed, started, watched, switched back


@pytest.fixture
def service(tmp_path, program):
    with ThreadedFakeOpenAI() as fake:
        config = tmp_path / "kiosk.yaml"
        config.write_text(
            f"cache:\n  dir: {tmp_path}/cache\nhistory:\n  file: {tmp_path}/history.sqlite3\n"
            f"audio:\n  device: 'null'\napi:\n  port: 0\nstaff:\n  enabled: false\ncaptions:\n  enabled: false\n"
            "phrases:\n  welcome: Welcome.\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "KIOSK_", "NOTIFY_", "WATCHDOG_"))}
        env.update(OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=f"{fake.url}/v1")
        manager = ProcessManager(program.root, config, env, tmp_path / "notify")
        try:
            manager.restart()
            yield manager
        finally:
            manager.close()


def test_update_runs_the_new_release_then_a_broken_one_is_switched_back_by_itself(
    tmp_path, program, service, releases_built
):
    record = tmp_path / "update.json"
    said: list[str] = []
    updater = Updater(program, service, record, settle_s=3, say=said.append)

    assert updater.update(releases_built[NEW]) is True
    assert program.current() == NEW and program.previous() == __version__
    assert service.running_version() == NEW and service.state().ready
    ran = subprocess.run([str(program.root / "current/bin/kiosk"), "--version"], capture_output=True, text=True)
    assert ran.stdout.strip() == f"kiosk {NEW}"
    assert read_record(record)["result"] == "updated"
    # The release it came from is untouched: it still runs as it did (its files were hard-linked, never written).
    old = subprocess.run([str(program.path(__version__) / "bin/kiosk"), "--version"], capture_output=True, text=True)
    assert old.stdout.strip() == f"kiosk {__version__}"

    started = time.monotonic()
    assert updater.update(releases_built[BROKEN]) is False
    took = time.monotonic() - started
    assert program.current() == NEW and program.previous() == __version__
    assert BROKEN not in program.installed()
    assert service.running_version() == NEW and service.state().ready
    assert 3 in service.exit_codes
    last = read_record(record)
    assert last["result"] == "rolled back" and last["version"] == BROKEN
    assert f"{BROKEN} was switched back to {NEW}: it stopped after starting" in last["message"]
    assert took < 60, f"the rollback took {took:.1f} s"

    assert updater.rollback() == f"went back from {NEW} to {__version__} by hand"
    assert program.current() == __version__ and service.running_version() == __version__
    assert read_record(record)["result"] == "rolled back"


def test_a_release_that_never_gets_ready_is_switched_back_at_the_limit(tmp_path, program, service, releases_built):
    class Stuck:
        """The service manager as seen for a release that starts but never says READY=1."""

        def __init__(self):
            self.runs = 0

        def restart(self):
            self.runs += 1
            service.restart()

        def state(self):
            real = service.state()
            stuck = self.runs == 1
            return type(real)(real.ready and not stuck, real.run_id, "activating (start)" if stuck else real.detail)

    record = tmp_path / "update.json"
    updater = Updater(program, Stuck(), record, limit_s=4, settle_s=1, say=lambda _: None)
    assert updater.update(releases_built[NEW]) is False
    assert program.current() == __version__
    assert "it was not ready within 4 s (activating (start))" in read_record(record)["message"]


def test_old_releases_are_pruned_but_never_the_running_or_previous_one(tmp_path):
    releases = Releases(tmp_path)
    for version in ("0.9.0", "1.0.0", "1.1.0", "1.2.0", "1.10.0", "2.0.0", "2.1.0"):
        (releases.path(version) / "bin").mkdir(parents=True)
    (releases.path("3.0.0") / "bin").mkdir(parents=True)
    (releases.path("3.0.0") / ".installing").touch()  # cut off by a power cut
    releases.switch("0.9.0")
    releases.switch("2.0.0")  # previous: 0.9.0, the oldest
    assert releases.prune(keep=3) == ["1.1.0", "1.0.0"]
    assert releases.installed() == ["2.1.0", "2.0.0", "1.10.0", "1.2.0", "0.9.0"]
    assert not releases.path("3.0.0").exists()
    assert (releases.current(), releases.previous()) == ("2.0.0", "0.9.0")


def test_a_rollback_by_hand_to_a_release_that_does_not_run_stays_on_the_one_that_runs(tmp_path, program):
    class Manager:
        """Runs whatever `current` names; the release 0.0.9 exits at once."""

        def __init__(self):
            self.runs = 0

        def restart(self):
            self.runs += 1

        def state(self):
            from kiosk.update.rollout import ServiceState

            broken = program.current() == "0.0.9"
            return ServiceState(not broken, None if broken else f"run-{self.runs}", "failed" if broken else "active")

    (program.path("0.0.9") / "bin").mkdir(parents=True)
    program.switch("0.0.9")
    program.switch(__version__)  # previous: 0.0.9, which does not run
    record = tmp_path / "update.json"
    updater = Updater(program, Manager(), record, limit_s=1, settle_s=0.2, sleep=lambda s: time.sleep(0.05))
    with pytest.raises(KioskError, match=f"did not go back from {__version__} to 0.0.9, which does not run"):
        updater.rollback()
    assert program.current() == __version__
    assert read_record(record)["result"] == "failed"
