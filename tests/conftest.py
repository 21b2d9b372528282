"""Shared fixtures: real ALSA through its `file` plugin, and a clocked PulseAudio null sink."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI
from gpiozero.pins.mock import MockFactory
from pulse_sink import NullSink

from kiosk.alsa_output import AlsaOutput
from kiosk.pcm import AudioFormat


class Clock:
    """A clock a test sets by hand (`clock.now += 61`), injected where the code takes one."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def server():
    """The OpenAI-compatible test server on loopback, well behaved until a test changes `server.behaviour`."""
    async with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def pins():
    """gpiozero's own mock pins: `pins.pin(17).drive_low()` is a press."""
    return MockFactory()


@pytest.fixture
def alsa_file(tmp_path: Path):
    """An ALSA device string that captures exactly the bytes written, and the file they land in."""
    out = tmp_path / "alsa-out.raw"
    return f"file:FILE={out},FORMAT=raw", out


def file_sink_opener(device: str, period_ms: int = 40, buffer_periods: int = 4):
    def open_sink(fmt: AudioFormat) -> AlsaOutput:
        return AlsaOutput(device, fmt, period_ms, buffer_periods)

    return open_sink


@pytest.fixture(scope="session")
def pulse_device(tmp_path_factory):
    """ALSA device "pulse" backed by a PulseAudio null sink: a device that keeps time and really underruns."""
    missing = NullSink.missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    with NullSink(tmp_path_factory.mktemp("pulse")) as device:
        yield device


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
async def browser():
    """Headless Chromium through playwright, for the staff page's script; skipped where it is not installed (a
    failure in CI, which installs it)."""
    playwright_api = pytest.importorskip("playwright.async_api")
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (apt install chromium)")
        pytest.skip("chromium is not installed")
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--autoplay-policy=no-user-gesture-required",  # "Listen here" plays without a gesture
            ],
        )
        yield browser
        await browser.close()


@pytest.fixture(autouse=True)
def synchronized_clock(monkeypatch):
    """This machine's clock is not synchronized (adjtimex says so), so the speaker would say "clock not set": tests
    run with a set clock unless they inject their own probe (tests/test_clock.py)."""
    monkeypatch.setattr("kiosk.clock.system_synchronized", lambda: True)


@pytest.fixture
def broker(tmp_path):
    """A real Mosquitto on a free loopback port (tests/mosquitto.py), for the fleet tests."""
    from mosquitto import Broker

    running = Broker(tmp_path).start()
    yield running
    running.stop()


# -- the checkout stays as it was

REPO = Path(__file__).parent.parent


def _tracked_changes() -> str | None:
    """`git status` of the tracked files (None outside a git checkout): tests write to artifacts/ and tmp only."""
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def pytest_sessionstart(session):
    # On CI only: a developer's run shares the checkout with their own edits in progress.
    session.config.stash[_CHECKOUT] = _tracked_changes() if os.environ.get("CI") else None


def pytest_sessionfinish(session, exitstatus):
    before = session.config.stash.get(_CHECKOUT, None)
    if before is None:
        return
    after = _tracked_changes()
    if after is not None and after != before:
        session.config.get_terminal_writer().line(f"the tests changed tracked files:\n{after}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_CHECKOUT = pytest.StashKey[str | None]()
