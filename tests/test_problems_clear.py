"""A problem clears when its cause does, and the work that notices runs under the supervisor: a full cache disk
that is freed, a cache upkeep task that crashes."""

import asyncio
import subprocess
import time

import pytest
from conftest import file_sink_opener
from gpiozero.pins.mock import MockFactory

import kiosk.upkeep
from kiosk.config import parse_config
from kiosk.service import Service
from kiosk.systemd import Notifier

NEW_LINE = "The meteorite in this case fell in the desert in nineteen sixty nine."


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-secret")


@pytest.fixture(autouse=True)
def quick_checks(monkeypatch):
    monkeypatch.setattr(kiosk.upkeep, "CACHE_CHECK_EVERY_S", 0.05)


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs for the cache, as a small SD card partition."""
    disk = tmp_path / "small"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


async def start(server_url, cache_dir, alsa_file):
    cfg = parse_config(
        f"openai:\n  base_url: {server_url}/v1\ncache:\n  dir: {cache_dir}\n"
        f"history:\n  file: {cache_dir.parent}/history.sqlite3\nstaff:\n  enabled: false\n"
        "api:\n  port: 0\n  allow_text: true\nphrases:\n  welcome: Welcome.\n"
    )
    service = Service(cfg, open_sink=file_sink_opener(alsa_file[0]), pin_factory=MockFactory(), notifier=Notifier({}))
    await asyncio.wait_for(service.start(), timeout=10)
    deadline = time.monotonic() + 10
    while service.warm_progress()["running"]:  # the configured line is cached (or not) before a test begins
        assert time.monotonic() < deadline, "warming did not end"
        await asyncio.sleep(0.02)
    return service


async def until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.02)


def fill(path):
    """Fill the disk up with one file; returns it."""
    filler = path / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(bytes(64 * 1024))
                f.flush()
        except OSError:
            pass
    return filler


async def test_no_space_left_clears_once_space_is_freed(server, small_disk, alsa_file):
    service = await start(server.url, small_disk / "cache", alsa_file)
    try:
        filler = fill(small_disk)
        req = service.play(phrase=None, text=NEW_LINE, origin="api")
        await asyncio.wait_for(service.speaker.idle(), timeout=10)
        assert req.state == "done" and not req.trace.cached  # spoken, though it could not be kept
        problems = (await service.status())["problems"]
        assert any("New lines cannot be kept for offline use" in p and "space" in p for p in problems), problems

        filler.unlink()  # staff free some space: nothing is written to the cache meanwhile

        async def cleared():
            return not any("cannot be kept" in p for p in (await service.status())["problems"])

        await until(cleared)
        assert service.announcer.cache_problem is None
    finally:
        await asyncio.wait_for(service.stop(), timeout=5)


async def test_a_crashing_cache_upkeep_is_reported_and_restarted(server, tmp_path, alsa_file, monkeypatch):
    service = await start(server.url, tmp_path / "cache", alsa_file)
    calls = []

    def crashes_once():
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise OSError(22, "Invalid argument")  # as time.sleep raised under a faked clock
        return None

    try:
        service.announcer.cache_problem = "No space left on device"
        monkeypatch.setattr(service.announcer, "recheck_cache", crashes_once)

        async def reported_and_running_again():
            status = await service.status()
            cache = next(t for t in status["tasks"] if t["name"] == "cache")
            return len(calls) >= 2 and cache["state"] == "running" and cache["restarts"] >= 1

        await until(reported_and_running_again, timeout=10)
        assert any("Background task 'cache' failed 1 time(s)" in p for p in (await service.status())["problems"])
    finally:
        await asyncio.wait_for(service.stop(), timeout=5)
