"""A broken config file on disk is reported until it is good again: on /api/status's problems and headline, in the
MQTT status snapshot and in systemd's StatusText — whether it was found by a reload or by the periodic check."""

import asyncio
import socket
import time

import pytest
from conftest import file_sink_opener

import kiosk.upkeep
from kiosk.config import load_config
from kiosk.service import Service
from kiosk.systemd import Notifier

GOOD = "phrases:\n  welcome: Welcome to the hall of minerals.\n"
BROKEN = "audio:\n  preroll_ms: lots\nphrases:\n  welcome: Welcome.\n"


def write(path, server_url, cache_dir, body):
    path.write_text(
        f"openai:\n  base_url: {server_url}/v1\ncache:\n  dir: {cache_dir}\n"
        f"history:\n  file: {cache_dir}.history.sqlite3\nstaff:\n  enabled: false\napi:\n  port: 0\n{body}"
    )


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-secret")


@pytest.fixture
def notify_socket(tmp_path):
    """A real sd_notify socket, read as systemd would; yields (environment, read_statuses)."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)

    def statuses() -> list[str]:
        found = []
        while True:
            try:
                message = sock.recv(4096).decode()
            except BlockingIOError:
                return found
            found += [line[len("STATUS=") :] for line in message.splitlines() if line.startswith("STATUS=")]

    yield {"NOTIFY_SOCKET": str(path)}, statuses
    sock.close()


async def start(path, alsa_file, pins, environ):
    service = Service(
        load_config(path),
        config_path=path,
        open_sink=file_sink_opener(alsa_file[0]),
        pin_factory=pins,
        notifier=Notifier(environ),
    )
    await asyncio.wait_for(service.start(), timeout=10)
    return service


async def test_a_rejected_reload_is_a_problem_everywhere_until_a_good_reload(
    server, tmp_path, alsa_file, pins, notify_socket
):
    path = tmp_path / "kiosk.yaml"
    write(path, server.url, tmp_path / "c", GOOD)
    environ, statuses = notify_socket
    service = await start(path, alsa_file, pins, environ)
    try:
        assert (await service.status())["headline"] == "All good"
        statuses()
        write(path, server.url, tmp_path / "c", BROKEN)
        assert not await asyncio.wait_for(service.reload(), timeout=10)

        status = await service.status()
        assert status["headline"].startswith("Needs attention: The settings file has a mistake")
        assert "audio.preroll_ms: must be a whole number" in status["problems"][0]
        assert "would not start again" in status["problems"][0]
        snapshot = await service.fleet.snapshot()  # what the broker and Home Assistant are told
        assert any("settings file has a mistake" in p for p in snapshot["problems"])
        said = statuses()
        assert said and said[-1].startswith("reload rejected: audio.preroll_ms: must be a whole number")
        assert said[-1].endswith("running on the previous config")

        write(path, server.url, tmp_path / "c", GOOD)
        assert await asyncio.wait_for(service.reload(), timeout=10)
        assert (await service.status())["headline"] == "All good"
        assert statuses()[-1].startswith("speaking on ")
    finally:
        await asyncio.wait_for(service.stop(), timeout=5)


async def test_a_config_file_broken_without_a_reload_is_found_and_cleared_by_the_check(
    server, tmp_path, alsa_file, pins, notify_socket, monkeypatch
):
    monkeypatch.setattr(kiosk.upkeep, "CONFIG_CHECK_EVERY_S", 0.05)
    path = tmp_path / "kiosk.yaml"
    write(path, server.url, tmp_path / "c", GOOD)
    environ, statuses = notify_socket
    service = await start(path, alsa_file, pins, environ)

    async def headline_becomes(prefix):
        deadline = time.monotonic() + 5
        while not (await service.status())["headline"].startswith(prefix):
            assert time.monotonic() < deadline, (await service.status())["headline"]
            await asyncio.sleep(0.02)

    try:
        write(path, server.url, tmp_path / "c", BROKEN)
        await headline_becomes("Needs attention: The settings file has a mistake")
        assert any(s.startswith("reload rejected: audio.preroll_ms") for s in statuses())
        assert any("fix it before the next restart" in e["text"] for e in service.parts.event_log.recent())

        write(path, server.url, tmp_path / "c", GOOD)  # fixed on disk: the next restart would work again
        await headline_becomes("All good")
        assert statuses()[-1].startswith("speaking on ")
    finally:
        await asyncio.wait_for(service.stop(), timeout=5)
