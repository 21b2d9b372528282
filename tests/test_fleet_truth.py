"""What a speaker tells the broker stays true across a restart and a slider: unmute brings back the last audible
volume (never 100 out of nowhere), presses today and the last response time come from the history, and a line
stopped mid-way is an event like any other. Against a real Mosquitto broker (tests/mosquitto.py)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
import yaml
from conftest import file_sink_opener
from gpiozero.pins.mock import MockFactory
from mosquitto import Watcher
from test_fleet_mqtt import online, status_of, until, write_config

from kiosk.config import load_config
from kiosk.fleet import mqtt as fleet_mqtt
from kiosk.ratelimit import RateLimiter
from kiosk.service import Service
from kiosk.systemd import Notifier

LONG_TEXT = "Quartz is one of the most common minerals in the crust of the earth, and it comes in many colours. " * 2


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-secret")
    monkeypatch.setattr(fleet_mqtt, "FIRST_RETRY_S", 0.2)
    monkeypatch.setattr(fleet_mqtt, "MAX_RETRY_S", 1.0)
    monkeypatch.setattr(fleet_mqtt, "STATUS_CHECK_S", 0.5)


async def start(config: Path, pins: MockFactory | None = None) -> Service:
    """A service on `config` (its files: history, settings, cache), as `kiosk run` would start it."""
    service = Service(
        load_config(config),
        config_path=config,
        open_sink=file_sink_opener(f"file:FILE={config.parent / 'alsa-out.raw'},FORMAT=raw"),
        pin_factory=pins or MockFactory(),
        notifier=Notifier({}),
    )
    await asyncio.wait_for(service.start(), 10)
    return service


async def status_after(watch: Watcher, sent: float, **want) -> dict:
    """The first status published after `sent` (a time.monotonic()) that shows `want`."""
    try:
        seen = await watch.wait_for(status_of("solo", **want), after=sent)
    except AssertionError:
        last = [json.loads(s.payload) for s in watch.on("kiosk/solo/status") if s.at >= sent][-1:]
        shown = {k: last[0].get(k) for k in want} if last else "no status"
        raise AssertionError(f"no status with {want} (the last one: {shown})") from None
    return json.loads(seen.payload)


async def command(watch: Watcher, name: str, payload: bytes, **want) -> dict:
    """Send a command to the speaker; the first status after it that shows `want`."""
    sent = time.monotonic()
    await watch.publish(f"kiosk/solo/{name}", payload)
    return await status_after(watch, sent, **want)


def saved_volume(config: Path) -> int:
    return yaml.safe_load((config.parent / "settings.yaml").read_text())["audio"]["volume"]


async def test_unmute_after_the_slider_went_to_0_brings_back_the_volume_before_it(tmp_path, server, broker):
    config = write_config(tmp_path, "solo", server.url, broker.port)
    service = await start(config)
    try:
        async with Watcher(broker.port) as watch:
            await watch.wait_for(online("solo"))
            await command(watch, "volume", b"55", volume=55, muted=False)
            await command(watch, "volume", b"0", volume=0, muted=True)  # Home Assistant's slider, all the way down
            await command(watch, "mute", b"OFF", volume=55, muted=False)
            assert service.cfg.audio.volume == 55 and saved_volume(config) == 55
    finally:
        await service.stop()


async def test_unmute_after_a_restart_brings_back_the_volume_before_muting(tmp_path, server, broker):
    config = write_config(tmp_path, "solo", server.url, broker.port)
    async with Watcher(broker.port) as watch:
        service = await start(config)
        try:
            await watch.wait_for(online("solo"))
            await command(watch, "volume", b"55", volume=55)
            await command(watch, "mute", b"ON", volume=0, muted=True)
        finally:
            await service.stop()
        restarted = time.monotonic()
        service = await start(config)  # a new process on the same files: nothing kept in memory
        try:
            await status_after(watch, restarted, volume=0, muted=True)
            await command(watch, "mute", b"OFF", volume=55, muted=False)
            assert saved_volume(config) == 55
        finally:
            await service.stop()


async def test_unmute_with_no_volume_remembered_takes_the_operators_volume(tmp_path, server, broker):
    config = write_config(tmp_path, "solo", server.url, broker.port)
    with config.open("a") as f:
        f.write("audio:\n  volume: 70\n")
    (config.parent / "settings.yaml").write_text("audio:\n  volume: 0\n")  # muted from the staff page's slider
    service = await start(config)
    try:
        async with Watcher(broker.port) as watch:
            await watch.wait_for(status_of("solo", volume=0, muted=True))
            await command(watch, "mute", b"OFF", volume=70, muted=False)
    finally:
        await service.stop()


async def test_presses_today_and_the_last_response_survive_a_restart(tmp_path, server, broker):
    config = write_config(tmp_path, "solo", server.url, broker.port)
    pins = MockFactory()
    async with Watcher(broker.port) as watch:
        service = await start(config, pins)
        try:
            await watch.wait_for(online("solo"))
            for count in (1, 2):
                pressed = time.monotonic()
                pins.pin(17).drive_low()  # a visitor presses the entrance button
                pins.pin(17).drive_high()
                await until(lambda n=count: not service.speaking and len(service.speaker.history) == n)
                before = await status_after(watch, pressed, presses_today=count)
                await asyncio.sleep(max(0.0, pressed + 1.6 - time.monotonic()))  # past the button's cooldown
            before = await status_after(watch, pressed, presses_today=2, state="idle")
            assert before["last_response_ms"] > 0 and before["last_press"]
        finally:
            await service.stop()
        restarted = time.monotonic()
        service = await start(config, pins)
        try:
            after = await status_after(watch, restarted)
            assert (after["presses_today"], after["last_response_ms"]) == (2, before["last_response_ms"])
            assert abs(after["last_press"] - before["last_press"]) < 1.5  # the history keeps whole seconds
            pressed = time.monotonic()
            pins.pin(17).drive_low()  # counted on from there
            pins.pin(17).drive_high()
            await status_after(watch, pressed, presses_today=3)
        finally:
            await service.stop()


async def test_a_line_stopped_mid_way_is_published_as_played_and_stopped(tmp_path, server, broker):
    server.behaviour.realtime_factor = 1.0  # the line takes its real length to arrive: it is still playing
    server.behaviour.chunk_sizes = [960]
    config = write_config(tmp_path, "solo", server.url, broker.port)
    service = await start(config)
    try:
        async with Watcher(broker.port) as watch:
            await watch.wait_for(online("solo"))
            await watch.publish("kiosk/solo/play", json.dumps({"text": LONG_TEXT}))
            await until(lambda: service.speaking)
            await asyncio.sleep(0.3)
            await watch.publish("kiosk/solo/stop", b"")
            await until(lambda: not service.speaking)
            played = await watch.wait_for(lambda s: s.topic == "kiosk/solo/event" and b'"played"' in s.payload)
            event = json.loads(played.payload)
            assert (event["type"], event["origin"], event["line"], event["outcome"]) == (
                "played",
                "mqtt",
                None,
                "stopped",
            )
            assert set(event) == {"type", "origin", "line", "source", "response_ms", "outcome", "time"}
    finally:
        await service.stop()


async def test_volume_sets_one_after_another_are_held_to_the_rate_limit(tmp_path, server, broker):
    """Each volume set saves the settings and reloads the service; the reload keeps the tokens already spent (it
    once handed out a fresh burst, so sets from Home Assistant one after another were never limited)."""
    config = write_config(tmp_path, "solo", server.url, broker.port)
    config.write_text(config.read_text().replace("api:\n  port: 0\n", "api:\n  port: 0\n  rate_limit_per_min: 2\n"))
    service = await start(config)
    try:
        async with Watcher(broker.port) as watch:
            await watch.wait_for(online("solo"))
            for volume in (41, 42):  # the burst: two
                await command(watch, "volume", str(volume).encode(), volume=volume)
            sent = time.monotonic()
            await watch.publish("kiosk/solo/volume", b"43")
            error = json.loads((await watch.wait_for(lambda s: s.topic == "kiosk/solo/error", after=sent)).payload)
            assert error["status"] == 429 and error["retry_after_s"] > 0
            assert service.cfg.audio.volume == 42 and saved_volume(config) == 42
    finally:
        await service.stop()


def test_a_new_rate_keeps_the_tokens_already_spent():
    now = [0.0]
    limiter = RateLimiter(2, clock=lambda: now[0])
    assert limiter.take() is None and limiter.take() is None and limiter.take() is not None
    limiter.set_rate(2)  # a reload with the same rate
    assert limiter.take() is not None
    limiter.set_rate(60)  # a higher one: tokens come back at the new rate, not all at once
    now[0] += 1.0
    assert limiter.take() is None and limiter.take() is not None
