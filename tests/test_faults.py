"""Faults a museum meets: network gone, server hanging or cutting out, credit exhausted, the speaker unplugged,
a read-only disk. Each is reproduced against the loopback test server and real ALSA plugins (or, for the
device, a sink behind the same interface that fails the way pyalsaaudio does)."""

import asyncio
import time

import pytest
from conftest import Clock, file_sink_opener
from fake_openai import Behaviour, FakeOpenAI, pcm_for
from gpiozero.pins.mock import MockFactory

from kiosk.announcer import Announcer
from kiosk.build import build_chain
from kiosk.cache import PhraseCache
from kiosk.config import parse_config
from kiosk.errors import AudioError, CacheError
from kiosk.player import Player
from kiosk.service import Service
from kiosk.speech.text import max_audio_s
from kiosk.systemd import Notifier
from kiosk.warm import warm

pytest.importorskip("piper", reason="the fallback voice (piper extra) is not installed")

LINE = "Welcome to the hall of minerals."
FAILOVER_MS = 800


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-secret")


def config(server_url, cache_dir, extra="", fallback="auto"):
    return parse_config(
        f"openai:\n  base_url: {server_url}/v1\n  first_byte_timeout_s: 3\n  chunk_gap_timeout_s: 0.5\n"
        f"speech:\n  failover_ms: {FAILOVER_MS}\n  fallback: {fallback}\n"
        f"cache:\n  dir: {cache_dir}\n"
        f"history:\n  file: {cache_dir}.history.sqlite3\n{extra}phrases:\n  welcome: {LINE}\n"
    )


@pytest.fixture
async def speaker(server, tmp_path, alsa_file):
    """An announcer with the OpenAI → Piper chain, the local voice already loaded."""
    cfg = config(server.url, tmp_path / "cache")
    clock = Clock()
    chain = build_chain(cfg, clock)
    device = f"file:FILE={alsa_file[1].with_name('alsa-%r.raw')},FORMAT=raw"
    player = Player(file_sink_opener(device), preroll_ms=cfg.audio.preroll_ms)
    player.start()
    announcer = Announcer(engines=chain, cache=PhraseCache(cfg.cache.dir, 10**9).open(), player=player)
    await asyncio.wait_for(chain.engines[1].probe(), 60)  # load the voice once, as the service does at start
    await asyncio.wait_for(chain.primary.preload(), 30)  # the SDK's first import is not the server's slowness
    yield announcer, clock
    await asyncio.to_thread(player.close)
    await chain.aclose()


async def say(announcer, text=LINE):
    return await asyncio.wait_for(announcer.say(text), timeout=60)


def entries(announcer):
    return sorted(i.engine for i in announcer.cache.list())


async def test_network_gone_the_local_voice_speaks(speaker, server):
    announcer, _ = speaker
    await server.stop()
    trace = await say(announcer)
    assert trace.error is None and trace.source == "piper" and trace.frames > 0
    assert len(trace.failover) == 1 and "cannot connect" in trace.failover[0]
    assert entries(announcer) == ["piper"]  # cached, tagged with the engine that made it


async def test_hang_before_first_byte_fails_over_within_the_deadline(speaker, server):
    announcer, _ = speaker
    server.behaviour = Behaviour(hang=True)
    trace = await say(announcer)
    assert trace.source == "piper" and f"no audio within {FAILOVER_MS / 1000:g} s" in trace.failover[0]
    print(f"hang → piper first_audio_ms={trace.first_audio_ms}")
    assert FAILOVER_MS <= trace.first_audio_ms < FAILOVER_MS + 3000


async def test_cut_mid_stream_keeps_what_was_heard_then_the_line_is_said_whole(speaker, server, alsa_file):
    announcer, _ = speaker
    server.behaviour = Behaviour(cut_after_bytes=9_000, chunk_sizes=[1000])
    trace = await say(announcer)
    assert "stream was cut" in trace.failover[0] and trace.source == "piper"
    # The device is reopened at the local voice's rate, so each rate has its own capture file (%r).
    openai_part = alsa_file[1].with_name("alsa-24000.raw").read_bytes()
    assert openai_part.startswith(pcm_for(LINE)[:8_000])  # what was heard was played, not thrown away
    piper_part = alsa_file[1].with_name("alsa-22050.raw").read_bytes()
    assert len(piper_part) > 22_050  # ...and then the local voice said the whole line
    assert trace.frames >= 8_000 // 2 + 11_025
    assert entries(announcer) == ["piper"]  # nothing partial from OpenAI was cached


#: A runaway stream: the line's audio again and again, 8x faster than it plays.
ENDLESS = Behaviour(endless=True, realtime_factor=8, chunk_sizes=[4800])


def heard_s(alsa_file, rate: int) -> float:
    """Seconds of audio that reached the device at `rate` (the capture file, less the silence padding the end)."""
    path = alsa_file[1].with_name(f"alsa-{rate}.raw")
    return len(path.read_bytes()) / 2 / rate if path.exists() else 0.0


async def test_an_endless_stream_is_cut_failed_over_and_put_in_back_off(speaker, server, alsa_file):
    announcer, _ = speaker
    server.behaviour = ENDLESS
    started = time.monotonic()
    trace = await asyncio.wait_for(announcer.say(LINE), 20)
    took = time.monotonic() - started
    assert trace.error is None and trace.source == "piper" and not trace.stopped, trace
    assert "far more audio than the text needs" in trace.failover[0]
    assert announcer.engines.health["openai"].in_backoff  # at once: a runaway server does it again line after line
    bound_s = max_audio_s(LINE)
    openai_s, piper_s = heard_s(alsa_file, 24_000), heard_s(alsa_file, 22_050)
    print(f"\nendless → piper in {took:.2f} s; OpenAI's {openai_s:.2f} s reached the device (bound {bound_s:g} s)")
    assert 0 < openai_s <= bound_s  # nothing past the bound (this device has no clock: all that was fed is written)
    assert took < bound_s / 8 + 6
    assert trace.duration_ms == pytest.approx((openai_s + piper_s) * 1000, abs=60)  # what was played (less padding)
    assert entries(announcer) == ["piper"]
    asked = len(server.requests)
    second = await say(announcer, "Another line nobody has heard.")
    assert second.source == "piper" and second.failover == [] and len(server.requests) == asked  # not asked


async def test_an_endless_stream_on_the_last_engine_is_silenced_and_reports_what_was_heard(
    server, tmp_path, pulse_device
):
    cfg = config(server.url, tmp_path / "cache", fallback="none")
    chain = build_chain(cfg)
    player = Player(file_sink_opener(pulse_device), preroll_ms=120)  # a device that plays in real time
    player.start()
    announcer = Announcer(engines=chain, cache=PhraseCache(cfg.cache.dir, 10**9).open(), player=player)
    try:
        server.behaviour = ENDLESS
        trace = await asyncio.wait_for(announcer.say(LINE), 20)
    finally:
        await asyncio.to_thread(player.close)
        await chain.aclose()
    cut_after_s = max_audio_s(LINE) / 8  # when the bound's worth of audio has arrived
    print(f"\nendless on the last engine: {trace.duration_ms:.0f} ms heard, line over after {trace.elapsed_ms:.0f} ms")
    assert trace.source == "openai" and "far more audio than the text needs" in trace.error and not trace.stopped
    assert chain.health["openai"].in_backoff
    assert trace.elapsed_ms / 1000 < cut_after_s + 1.5  # silenced at the cut: the 11 s still queued never played
    assert 500 < trace.duration_ms < (cut_after_s + 0.5) * 1000  # what was heard: not 0, not what was queued
    assert entries(announcer) == []


async def test_quota_exhausted_backs_off_then_a_probe_restores_it(speaker, server):
    announcer, clock = speaker
    server.behaviour = Behaviour(status=429, error_code="insufficient_quota", fail_times=10**6)
    first = await say(announcer, "First line.")
    assert first.source == "piper" and "run out of credit" in first.failover[0]
    assert announcer.engines.health["openai"].in_backoff
    asked = len(server.requests)
    second = await say(announcer, "Second line.")
    assert second.source == "piper" and second.failover == [] and len(server.requests) == asked  # not asked
    state = {s["name"]: s for s in announcer.engines.state()}
    assert state["openai"]["in_backoff"] and "credit" in state["openai"]["reason"]

    server.behaviour = Behaviour()  # credit topped up
    clock.now += 10  # before the pause is over: no probe yet
    await announcer.engines.probe_due()
    assert announcer.engines.health["openai"].in_backoff
    clock.now += 60
    await announcer.engines.probe_due()
    assert not announcer.engines.health["openai"].in_backoff
    third = await say(announcer, "Third line.")
    assert third.source == "openai"


async def test_a_burst_of_server_errors_backs_off_after_three(speaker, server):
    announcer, _ = speaker
    server.behaviour = Behaviour(status=500, fail_times=10**6)
    for n in range(3):
        trace = await say(announcer, f"Line {n}.")
        assert trace.source == "piper"
    assert announcer.engines.health["openai"].in_backoff
    asked = len(server.requests)
    await say(announcer, "Line 4.")
    assert len(server.requests) == asked


async def test_fallback_entry_is_replaced_once_the_primary_is_back(speaker, server):
    announcer, _clock = speaker
    await server.stop()
    assert (await say(announcer)).source == "piper"
    async with FakeOpenAI(port=int(server.url.rsplit(":", 1)[1])) as back:
        progress = {}
        await asyncio.wait_for(warm(announcer, [LINE], progress), 30)
        assert progress["done"] == 1 and len(back.requests) == 1
        assert entries(announcer) == ["openai"]  # the fallback's entry is gone, the primary's voice is cached
        again = await say(announcer)
        assert again.source == "cache" and again.engine == "openai"


class ReadOnlyCache(PhraseCache):
    """The phrase cache on a read-only (or full) file system: reads work, every write fails as the OS says."""

    def put(self, *args, **kwargs):
        raise CacheError(f"cannot write cache entry in {self.root}: Read-only file system")


async def test_read_only_cache_still_plays_cached_lines_and_speaks_new_ones(server, tmp_path, alsa_file):
    cfg = config(server.url, tmp_path / "cache", fallback="none")
    writable = PhraseCache(cfg.cache.dir, 10**9).open()
    chain = build_chain(cfg)
    player = Player(file_sink_opener(alsa_file[0]), preroll_ms=120)
    player.start()
    try:
        await Announcer(engines=chain, cache=writable, player=player).say(LINE)  # cached while writable
        announcer = Announcer(engines=chain, cache=ReadOnlyCache(cfg.cache.dir, 10**9), player=player)
        cached = await say(announcer)
        assert cached.source == "cache" and cached.error is None
        new = await say(announcer, "A line never heard before.")
        assert new.error is None and new.source == "openai" and not new.cached
        assert "Read-only file system" in announcer.cache_problem
    finally:
        await asyncio.to_thread(player.close)
        await chain.aclose()


class FlakyDevice:
    """Opens like AlsaOutput and fails the way pyalsaaudio does (errors as AlsaOutput reports them), on cue."""

    def __init__(self, real_opener):
        self.real_opener = real_opener
        self.missing = True
        self.busy = False
        self.opens = 0
        self.fail_writes = False

    def open(self, fmt):
        self.opens += 1
        if self.missing:
            raise AudioError("cannot open ALSA device 'hw:CARD=USB': No such device [hw:CARD=USB]")
        if self.busy:
            raise AudioError("cannot open ALSA device 'hw:CARD=USB': Device or resource busy [hw:CARD=USB]")
        sink = self.real_opener(fmt)
        device = self
        real_write = sink.write

        def write(frames):
            if device.fail_writes:
                raise AudioError("ALSA device 'hw:CARD=USB' failed: No such device [hw:CARD=USB]")
            return real_write(frames)

        sink.write = write
        return sink


async def test_speaker_missing_at_start_then_unplugged_mid_line(server, tmp_path, alsa_file, monkeypatch):
    monkeypatch.setattr("kiosk.device.RETRY_FIRST_S", 0.1)
    monkeypatch.setattr("kiosk.device.RETRY_MAX_S", 0.4)
    device = FlakyDevice(file_sink_opener(alsa_file[0]))
    cfg = config(server.url, tmp_path / "cache", "staff:\n  enabled: false\napi:\n  port: 0\n", fallback="none")
    service = Service(cfg, open_sink=device.open, pin_factory=MockFactory(), notifier=Notifier({}))
    await asyncio.wait_for(service.start(), 20)
    try:
        assert "No such device" in service.device.problem  # up and saying so, not crashed
        assert "No such device" in (await service.status())["speaker_problem"]
        opens = device.opens
        await asyncio.sleep(1.0)
        assert 2 <= device.opens - opens <= 6, "retries with growing pauses, never a busy loop"

        device.missing, device.busy = False, True
        await asyncio.sleep(0.6)
        assert "busy" in service.device.problem
        device.busy = False
        deadline = time.monotonic() + 5
        while service.device.problem is not None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert any("speaker back" in e["text"] for e in service.events)

        device.fail_writes = True  # unplugged while speaking
        req = service.play(phrase="welcome", text=None, origin="api")
        await asyncio.wait_for(service.speaker.idle(), 20)
        assert req.state == "failed" and "No such device" in req.trace.error
        assert service.device.problem is not None
        device.fail_writes = False
        deadline = time.monotonic() + 5
        while service.device.problem is not None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        req = service.play(phrase="welcome", text=None, origin="api")
        await asyncio.wait_for(service.speaker.idle(), 20)
        assert req.state == "done"
    finally:
        await service.stop()
