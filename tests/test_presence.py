"""The motion sensor at the exhibit (issue #22): a visitor approaching is counted in the history and invited, once
per visitor (`quiet_s`), never while closed or over a line. Real service, gpiozero's MockFactory, the file ALSA
sink, the loopback fake OpenAI server."""

import asyncio
from datetime import datetime

import pytest
from conftest import Clock
from test_service import started, until, wait_idle

from kiosk.config import PresenceConfig, parse_config
from kiosk.errors import ConfigError

SENSOR = 4
PRESENCE = f"presence:\n  pin: {SENSOR}\n  invite: hello\n  quiet_s: 30\n"


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-secret")


def config(server_url, cache_dir, extra=PRESENCE):
    return parse_config(
        f"openai:\n  base_url: {server_url}/v1\n  first_byte_timeout_s: 2\n"
        f"cache:\n  dir: {cache_dir}\nhistory:\n  file: {cache_dir}.history.sqlite3\n"
        f"staff:\n  enabled: false\napi:\n  port: 0\nspeech:\n  fallback: none\n"
        "phrases:\n  hello: Come closer, the minerals glow.\n  welcome: Welcome to the hall of minerals.\n"
        f"buttons:\n  - {{pin: 17, phrase: welcome}}\n{extra}"
    )


async def motion(service, pins):
    """A visitor moves in front of the sensor, then stands still; the sensor's callback has been handled."""
    pins.pin(SENSOR).drive_high()
    await until(lambda: service.presence.active)
    await asyncio.sleep(0.05)  # the callback, handed to the event loop
    pins.pin(SENSOR).drive_low()
    await until(lambda: not service.presence.active)


async def approaches(service):
    return [r for r in await service.history.outcomes(1) if r.origin == "presence" and r.outcome == "approach"]


def invitations(service):
    return [r for r in service.speaker.history.values() if r.origin == "presence"]


async def test_an_approach_is_counted_and_invited_once_per_visitor(server, tmp_path, alsa_file, pins):
    device, _ = alsa_file
    clock = Clock()
    service = await started(config(server.url, tmp_path / "c"), device, pins, clock=clock)
    try:
        await motion(service, pins)
        await until(lambda: len(invitations(service)) == 1)
        await wait_idle(service)
        invitation = invitations(service)[0]
        assert (invitation.phrase, invitation.state) == ("hello", "done")
        assert len(await approaches(service)) == 1

        clock.now += 29  # the same visitor, still moving about
        await motion(service, pins)
        await asyncio.sleep(0.05)
        assert len(await approaches(service)) == 1 and len(invitations(service)) == 1

        clock.now += 31  # quiet_s after the last approach: the next visitor
        await motion(service, pins)
        await until(lambda: len(invitations(service)) == 2)
        await wait_idle(service)
        assert len(await approaches(service)) == 2

        summary = await service.history.summary(days=2)
        assert summary["approaches"] == [0, 2]
        assert "presence" not in summary["last_used"]
        assert summary["total"] == 0  # approaches and their invitations are not presses
    finally:
        await service.stop()


async def test_no_invitation_while_closed_but_the_approach_counts(server, tmp_path, alsa_file, pins):
    device, _ = alsa_file
    hours = "opening_hours:\n  - {open: '09:00', close: '17:00'}\n"
    cfg = config(server.url, tmp_path / "c", PRESENCE + hours)
    service = await started(cfg, device, pins, now=lambda: datetime(2026, 12, 1, 20, 0))
    try:
        await motion(service, pins)
        await until(lambda: service.history._pending)
        await asyncio.sleep(0.05)
        assert len(await approaches(service)) == 1 and invitations(service) == []
        assert not service.speaker.speaking
    finally:
        await service.stop()


async def test_no_invitation_over_a_line_that_plays(server, tmp_path, alsa_file, pins):
    device, _ = alsa_file
    service = await started(config(server.url, tmp_path / "c"), device, pins)
    try:
        server.behaviour.realtime_factor = 1.0
        server.behaviour.chunk_sizes = [960]
        playing = service.speaker.request("A long line about minerals and crystals.", origin="api", policy="restart")
        await until(lambda: service.speaker.speaking)
        await motion(service, pins)
        await until(lambda: service.history._pending)
        assert invitations(service) == [] and playing.state == "playing"
        assert len(await approaches(service)) == 1
        service.speaker.stop()
        await wait_idle(service)
    finally:
        server.behaviour.realtime_factor = None
        await service.stop()


async def test_without_a_presence_section_no_sensor_is_made(server, tmp_path, alsa_file, pins):
    device, _ = alsa_file
    service = await started(config(server.url, tmp_path / "c", extra=""), device, pins)
    try:
        assert service.presence is None and service.cfg.presence == PresenceConfig()
        assert SENSOR not in pins.pins  # the pin was never touched
        pins.pin(SENSOR).drive_high()
        await asyncio.sleep(0.1)
        assert await approaches(service) == []
    finally:
        await service.stop()
    assert service.parts.buttons is None and service.parts.presence is None


def test_presence_config_is_checked():
    cfg = parse_config("phrases:\n  hello: Hi.\npresence:\n  pin: 4\n  invite: hello\n")
    assert cfg.presence == PresenceConfig(pin=4, invite="hello", quiet_s=60)
    assert not parse_config("presence:\n  pin:\n").presence.enabled
    with pytest.raises(ConfigError) as caught:
        parse_config("phrases:\n  hello: Hi.\npresence:\n  pin: 4\n  invite: helo\n")
    assert caught.value.problems == ["presence.invite: no line 'helo' in phrases (did you mean 'hello'?)"]
    with pytest.raises(ConfigError) as caught:
        parse_config("phrases:\n  hello: Hi.\nbuttons:\n  - {pin: 17, phrase: hello, led: 4}\npresence:\n  pin: 17\n")
    assert caught.value.problems == ["presence.pin: GPIO 17 is already used by buttons[0].pin"]
    with pytest.raises(ConfigError) as caught:
        parse_config("phrases:\n  hello: Hi.\nbuttons:\n  - {pin: 17, phrase: hello, led: 4}\npresence:\n  pin: 4\n")
    assert caught.value.problems == ["presence.pin: GPIO 4 is already used by buttons[0].led"]
    with pytest.raises(ConfigError) as caught:
        parse_config("presence:\n  pin: 54\n  quiet_s: 2\n")
    assert caught.value.problems == [
        "presence.pin: 54 is out of range (0 to 53)",
        "presence.quiet_s: 2 is out of range (5 to 3600)",
    ]
