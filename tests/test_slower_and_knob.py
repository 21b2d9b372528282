"""More controls at the exhibit (issue #22): the `slower` button (the last line again at speech.slower_speed, a
cache entry of its own, bounded when hammered) and the volume knob (a rotary encoder: each detent one step of the
visitor's volume, a fast spin confirmed by a few tones). Real service, gpiozero's MockFactory, the file ALSA sink,
the loopback fake OpenAI server, and the bundled Piper voice."""

import asyncio
import hashlib
import json
import time

import pytest
from conftest import file_sink_opener
from test_service import press, started, until, wait_idle

from kiosk.build import open_announcer
from kiosk.config import KnobConfig, OpenAIConfig, load_config, parse_config
from kiosk.errors import ConfigError
from kiosk.presses import KNOB_TONE_GAP_S
from kiosk.speech.openai_engine import OpenAIEngine

WELCOME = "Welcome to the hall of minerals."
AUDIO = (
    'audio:\n  device: "null"\n  volume: 50\n  visitor_volume_min: 30\n  visitor_volume_max: 80\n'
    "  visitor_volume_step: 10\n"
)
SPEAK, SLOWER, REPLAY = 17, 26, 25
A, B = 20, 21
BUTTONS = f"""buttons:
  - {{pin: {SPEAK}, phrase: welcome, cooldown_ms: 0}}
  - {{pin: {SLOWER}, action: slower, cooldown_ms: 0, bounce_ms: 0}}
  - {{pin: {REPLAY}, action: replay, cooldown_ms: 0}}
"""
KNOB = f"knob:\n  a: {A}\n  b: {B}\n  reset_s: 60\n"


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-secret")


def config_text(server_url, cache_dir, extra=""):
    return (
        f"openai:\n  base_url: {server_url}/v1\n  first_byte_timeout_s: 2\n"
        f"cache:\n  dir: {cache_dir}\nhistory:\n  file: {cache_dir}.history.sqlite3\n"
        f"staff:\n  enabled: false\ncaptions:\n  port: 0\napi:\n  port: 0\n"
        f"speech:\n  fallback: none\n  slower_speed: 0.7\n{AUDIO}"
        f"phrases:\n  welcome: {WELCOME}\n{BUTTONS}{extra}"
    )


async def pressed(service, pins, pin):
    """Press a button that speaks; its request once it has played."""
    before = len(service.speaker.history)
    press(pins, pin)
    await until(lambda: len(service.speaker.history) > before, timeout=10)
    await wait_idle(service)
    return list(service.speaker.history.values())[-1]


# --- slower ----------------------------------------------------------------------------------------------------------


async def test_slower_says_the_last_line_at_the_slower_speed_cached_apart(server, tmp_path, alsa_file, pins):
    device, out = alsa_file
    service = await started(parse_config(config_text(server.url, tmp_path / "c")), device, pins)
    try:
        press(pins, SLOWER)  # nothing said yet: nothing happens
        await asyncio.sleep(0.1)
        assert len(service.speaker.history) == 0
        await until(lambda: service.parts.warm["done"] == 1 and not service.parts.warm["running"], timeout=10)
        assert [r.body["speed"] for r in server.requests] == [1.0]  # the line warmed at the normal speed

        normal = await pressed(service, pins, SPEAK)
        assert normal.trace.source == "cache" and normal.speed == 1.0
        written = out.stat().st_size

        slow = await pressed(service, pins, SLOWER)
        assert (slow.origin, slow.phrase, slow.text, slow.state) == (f"button:{SLOWER}", "welcome", WELCOME, "done")
        assert slow.speed == 0.7 and slow.trace.source == "openai" and slow.trace.cached
        assert len(server.requests) == 2 and server.requests[-1].body["speed"] == pytest.approx(0.7)
        assert server.requests[-1].body["input"] == WELCOME
        assert out.stat().st_size > written  # it reached the device
        assert slow.trace.key != normal.trace.key

        again = await pressed(service, pins, SLOWER)  # from its own cache entry: no new request
        assert again.trace.source == "cache" and again.trace.key == slow.trace.key and len(server.requests) == 2
        plain = await pressed(service, pins, SPEAK)  # the normal line keeps its own entry
        assert plain.trace.source == "cache" and plain.trace.key == normal.trace.key and len(server.requests) == 2
        replay = await pressed(service, pins, REPLAY)  # replay stays at the normal speed
        assert replay.speed == 1.0 and replay.trace.key == normal.trace.key

        # The history keeps the slower line under its own button, like a replay.
        rows = [r for r in await service.history.outcomes(1) if r.origin == f"button:{SLOWER}"]
        assert [(r.line, r.outcome) for r in rows] == [("welcome", "done"), ("welcome", "done")]
    finally:
        await service.stop()


async def test_a_speed_of_one_keeps_the_cache_keys_made_before_speeds(server, tmp_path, alsa_file, pins):
    service = await started(parse_config(config_text(server.url, tmp_path / "c")), alsa_file[0], pins)
    try:
        engine = service.announcer.engine
        material = {
            "identity": engine.identity(),
            "format": [engine.fmt.rate, engine.fmt.channels, engine.fmt.sample_width],
            "text": WELCOME,
        }
        before = hashlib.sha256(json.dumps(material, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        assert service.announcer.key_for(WELCOME) == before == service.announcer.key_for(WELCOME, None, 1.0)
        assert service.announcer.keys_for(WELCOME, speed=0.7)[0] != before
    finally:
        await service.stop()


def test_the_openai_speed_is_the_configured_times_the_requests_within_the_apis_range():
    def sent(configured, asked):
        return OpenAIEngine(OpenAIConfig(speed=configured), "sk-x")._params("Hi.", asked)["speed"]

    assert sent(1.0, 1.0) == 1.0
    assert sent(1.2, 0.5) == pytest.approx(0.6)
    assert sent(0.3, 0.5) == 0.25  # never below what the API takes
    assert sent(4.0, 1.5) == 4.0


async def test_hammering_slower_never_queues_nor_overlaps(server, tmp_path, alsa_file, pins):
    device, _ = alsa_file
    service = await started(parse_config(config_text(server.url, tmp_path / "c")), device, pins)
    playbacks = []
    real_play = service.player.play

    def play(*args, **kwargs):
        playbacks.append(real_play(*args, **kwargs))
        return playbacks[-1]

    service.player.play = play
    try:
        await pressed(service, pins, SPEAK)
        server.behaviour.realtime_factor = 1.0  # each slower line streams in real time: a press lands mid-line
        server.behaviour.chunk_sizes = [960]
        for _ in range(50):
            press(pins, SLOWER)
            await asyncio.sleep(0.01)
            assert service.speaker.queued <= 1
            assert sum(r.state == "playing" for r in service.speaker.history.values()) <= 1
            assert sum(not p.ended and not p.stopping for p in playbacks) <= 1  # the last is stopped first
        await wait_idle(service, timeout=20)
        last = list(service.speaker.history.values())[-1]
        assert last.state == "done" and last.speed == 0.7
        assert all(r.state in ("stopped", "dropped", "done") for r in service.speaker.history.values())
        assert len([r for r in server.requests if r.body["speed"] != 1.0]) <= 50  # one per press at most
    finally:
        server.behaviour.realtime_factor = None
        await service.stop()


async def test_piper_speaks_a_slower_line_longer_and_caches_it_apart(tmp_path, monkeypatch):
    pytest.importorskip("piper", reason="the piper extra is not installed")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cfg = parse_config(f"cache:\n  dir: {tmp_path / 'cache'}\nspeech:\n  engine: piper\n  fallback: none\n")
    device = f"file:FILE={tmp_path / 'out.raw'},FORMAT=raw"
    async with open_announcer(cfg, open_sink=file_sink_opener(device)) as announcer:
        assert announcer.engine.length_scale(0.6) == pytest.approx(1 / 0.6)
        normal = await asyncio.wait_for(announcer.say(WELCOME), timeout=60)
        slow = await asyncio.wait_for(announcer.say(WELCOME, speed=0.6), timeout=60)
        again = await asyncio.wait_for(announcer.say(WELCOME, speed=0.6), timeout=10)
    assert normal.error is None and slow.error is None and slow.source == "piper" and slow.cached
    assert slow.duration_ms > 1.4 * normal.duration_ms  # the length scale reached the synthesis
    assert again.source == "cache" and again.key == slow.key != normal.key


def test_slower_speed_is_checked():
    assert parse_config("").speech.slower_speed == 0.8
    with pytest.raises(ConfigError) as caught:
        parse_config("speech:\n  slower_speed: 0.3\n")
    assert caught.value.problems == ["speech.slower_speed: 0.3 is out of range (0.5 to 0.95)"]
    with pytest.raises(ConfigError) as caught:
        parse_config("speech:\n  slower_speed: 1.0\n")
    assert caught.value.problems == ["speech.slower_speed: 1.0 is out of range (0.5 to 0.95)"]


# --- the volume knob -------------------------------------------------------------------------------------------------


def detent(pins, clockwise=True):
    """One detent of a rotary encoder (common to ground): A leads B clockwise, B leads A the other way."""
    first, second = (A, B) if clockwise else (B, A)
    pins.pin(first).drive_low()
    pins.pin(second).drive_low()
    pins.pin(first).drive_high()
    pins.pin(second).drive_high()


class Tones:
    """Every tone the announcer is asked to play: (kind, gain)."""

    def __init__(self, service):
        self.played: list[tuple[str, float]] = []
        real = service.announcer.beep

        def beep(kind, gain):
            self.played.append((kind, round(gain, 3)))
            return real(kind, gain)

        service.announcer.beep = beep


async def test_the_knob_turns_the_visitors_volume_one_step_a_detent(server, tmp_path, alsa_file, pins):
    device, _ = alsa_file
    service = await started(parse_config(config_text(server.url, tmp_path / "c", KNOB)), device, pins)
    audio, tones = service.cfg.audio, Tones(service)
    try:
        assert service.knob is not None and service.knob.error is None
        detent(pins)
        await until(lambda: tones.played)
        assert service.visitor_volume.level(audio) == 60 and tones.played == [("ok", 0.6)]
        await asyncio.sleep(KNOB_TONE_GAP_S)
        detent(pins, clockwise=False)
        detent(pins, clockwise=False)
        await until(lambda: service.visitor_volume.level(audio) == 40)
        await until(lambda: len(tones.played) == 2)
        assert tones.played[-1] == ("ok", 0.4)
        line = await pressed(service, pins, SPEAK)
        assert round(line.gain, 3) == 0.4  # the next line plays at the knob's level
    finally:
        await service.stop()


async def test_a_fast_spin_stays_in_range_and_is_confirmed_by_a_few_tones(server, tmp_path, alsa_file, pins):
    device, _ = alsa_file
    service = await started(parse_config(config_text(server.url, tmp_path / "c", KNOB)), device, pins)
    audio, tones = service.cfg.audio, Tones(service)
    try:
        started_at = time.monotonic()
        for n in range(40):
            detent(pins)
            if n % 4 == 0:
                await asyncio.sleep(0.005)  # a hand spins in bursts
            assert service.visitor_volume.level(audio) <= 80
        await until(lambda: service.visitor_volume.level(audio) == 80)
        await asyncio.sleep(2 * KNOB_TONE_GAP_S)  # the last tone is due within one gap
        spent = time.monotonic() - started_at
        assert 1 <= len(tones.played) <= spent / KNOB_TONE_GAP_S + 1  # never one per detent
        assert tones.played[-1] == ("ok", 0.8)
        assert service.announcer.last_beep is not None
        await asyncio.wait_for(service.announcer.last_beep.wait(), 2)

        for _ in range(40):
            detent(pins, clockwise=False)
        await until(lambda: service.visitor_volume.level(audio) == 30)
        await asyncio.sleep(2 * KNOB_TONE_GAP_S)
        count = len(tones.played)
        detent(pins, clockwise=False)  # at the limit: the low tone, nothing moves
        await until(lambda: len(tones.played) > count)
        assert tones.played[-1] == ("limit", 0.3) and service.visitor_volume.level(audio) == 30
    finally:
        await service.stop()


async def test_no_knob_tone_over_a_line(server, tmp_path, alsa_file, pins):
    device, _ = alsa_file
    service = await started(parse_config(config_text(server.url, tmp_path / "c", KNOB)), device, pins)
    audio, tones = service.cfg.audio, Tones(service)
    try:
        server.behaviour.realtime_factor = 1.0
        server.behaviour.chunk_sizes = [960]
        service.speaker.request("A long line about minerals and crystals.", origin="api", policy="restart")
        await until(lambda: service.speaker.speaking)
        detent(pins)
        await until(lambda: service.visitor_volume.level(audio) == 60)
        await asyncio.sleep(2 * KNOB_TONE_GAP_S)
        assert tones.played == [] and service.speaker.queued == 0
        service.speaker.stop()
        await wait_idle(service)
    finally:
        server.behaviour.realtime_factor = None
        await service.stop()


async def test_a_reload_without_the_knob_lets_go_of_its_pins(server, tmp_path, alsa_file, pins):
    path = tmp_path / "kiosk.yaml"
    path.write_text(config_text(server.url, tmp_path / "c", KNOB))
    service = await started(load_config(path), alsa_file[0], pins, config_path=path)
    audio = service.cfg.audio
    try:
        knob = service.knob
        assert knob is not None
        path.write_text(config_text(server.url, tmp_path / "c"))
        assert await asyncio.wait_for(service.reload(), 10)
        assert service.knob is None and service.cfg.knob == KnobConfig()
        detent(pins)
        await asyncio.sleep(0.1)
        assert service.visitor_volume.level(audio) == 50  # the old knob is gone
        # Its pins are free again: a button may take one of them.
        path.write_text(config_text(server.url, tmp_path / "c", f"  - {{pin: {A}, action: stop}}\n"))
        assert await asyncio.wait_for(service.reload(), 10)
        assert service.buttons.error is None
    finally:
        await service.stop()
    assert service.parts.knob is None


def test_knob_config_is_checked():
    assert not parse_config("").knob.enabled
    assert parse_config("knob:\n  a: 20\n  b: 21\n").knob == KnobConfig(a=20, b=21, reset_s=120)
    problems = {
        "knob:\n  a: 20\n": ["knob: set both pins, a and b (or neither: no knob)"],
        "knob:\n  a: 20\n  b: 20\n": ["knob.b: GPIO 20 is already used by knob.a"],
        "buttons:\n  - {pin: 20, action: stop}\nknob:\n  a: 20\n  b: 21\n": [
            "knob.a: GPIO 20 is already used by buttons[0].pin"
        ],
        "presence:\n  pin: 21\nknob:\n  a: 20\n  b: 21\n": ["knob.b: GPIO 21 is already used by presence.pin"],
        "knob:\n  a: 54\n  b: 21\n  reset_s: 1\n": [
            "knob.a: 54 is out of range (0 to 53)",
            "knob.reset_s: 1 is out of range (5 to 3600)",
        ],
    }
    for text, expected in problems.items():
        with pytest.raises(ConfigError) as caught:
            parse_config(text)
        assert caught.value.problems == expected, text
