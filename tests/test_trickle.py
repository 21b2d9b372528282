"""An engine that cannot keep up is a fault: a stream whose audio falls more than `failover_s` behind real time is
given up on (the next engine says the line whole, or the last one ends it with an error), while healthy streams,
however slow or bursty, are never tripped. The real openai SDK against the loopback test server, real ALSA through
its file plugin, the local Piper voice as fallback; and the rule itself on a scripted engine."""

import asyncio
import dataclasses
import sys
import time
from pathlib import Path

import pytest
from conftest import file_sink_opener
from fake_openai import BYTES_PER_SECOND, Behaviour

from kiosk.announcer import Announcer
from kiosk.build import build_chain
from kiosk.cache import PhraseCache
from kiosk.config import parse_config
from kiosk.errors import SpeechError
from kiosk.pcm import AudioFormat
from kiosk.player import Player
from kiosk.speech.chain import synthesize_within
from kiosk.speech.text import MAX_AUDIO_S_PER_CHAR, MAX_AUDIO_SLACK_S, max_audio_s

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from profiles import LINES, PROFILES

LINE = "Welcome to the hall of minerals."
#: About one byte a second: the first byte comes at once, then a byte a second, never a 3 s gap.
TRICKLE = Behaviour(chunk_sizes=[2], realtime_factor=1 / BYTES_PER_SECOND)


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-secret")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


class Kiosk:
    """An announcer over the OpenAI (→ Piper) chain that notes when each engine's first audio reached the player."""

    def __init__(self, announcer: Announcer, player: Player):
        self.announcer = announcer
        self.player = player
        self.playbacks: list[tuple[float, object]] = []  # (monotonic time of the engine's first byte, playback)
        play = player.play

        def recording_play(fmt, **kwargs):
            playback = play(fmt, **kwargs)
            self.playbacks.append((time.monotonic(), playback))
            return playback

        player.play = recording_play

    async def say(self, text=LINE, timeout=30):
        return await asyncio.wait_for(self.announcer.say(text), timeout)

    def entries(self):
        return sorted(i.engine for i in self.announcer.cache.list())


@pytest.fixture
async def make_kiosk(server, tmp_path, alsa_file):
    """make_kiosk(failover_ms, fallback): the default OpenAI deadlines (3 s chunk gap), so only the lag rule can
    end a trickle early."""
    made = []

    async def make(failover_ms=2500, fallback="auto"):
        if fallback != "none":
            pytest.importorskip("piper", reason="the fallback voice (piper extra) is not installed")
        cfg = parse_config(
            f"openai:\n  base_url: {server.url}/v1\n"
            f"speech:\n  failover_ms: {failover_ms}\n  fallback: {fallback}\n"
            f"cache:\n  dir: {tmp_path / f'cache-{len(made)}'}\n"
        )
        chain = build_chain(cfg)
        device = f"file:FILE={alsa_file[1].with_name('alsa-%r.raw')},FORMAT=raw"
        player = Player(file_sink_opener(device), preroll_ms=cfg.audio.preroll_ms)
        player.start()
        made.append((player, chain))
        announcer = Announcer(engines=chain, cache=PhraseCache(cfg.cache.dir, 10**9).open(), player=player)
        if len(chain.engines) > 1:
            await asyncio.wait_for(chain.engines[1].probe(), 60)  # load the voice once, as the service does
        await asyncio.wait_for(chain.primary.preload(), 30)  # the SDK's first import is not the server's slowness
        return Kiosk(announcer, player)

    yield make
    for player, chain in made:
        await asyncio.to_thread(player.close)
        await chain.aclose()


async def wait_for_outcome(record, timeout=5.0):
    deadline = time.monotonic() + timeout
    while record.outcome == "pending" and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return record.outcome


async def test_trickle_fails_over_and_the_fallback_says_the_line(make_kiosk, server):
    kiosk = await make_kiosk(failover_ms=1000)
    failover_s = kiosk.announcer.engines.failover_s
    server.behaviour = dataclasses.replace(TRICKLE)
    started = time.monotonic()
    trace = await kiosk.say()
    took = time.monotonic() - started

    assert trace.error is None and trace.source == "piper", trace
    assert len(trace.failover) == 1 and "openai: audio arriving too slowly" in trace.failover[0]
    (openai_at, _), (piper_at, piper) = kiosk.playbacks
    assert piper.fmt.rate == 22_050 and piper.stats.frames > 22_050  # the local voice said the line whole
    to_fallback_byte = piper_at - openai_at
    to_fallback_audio = piper.stats.first_audio_at - openai_at
    print(
        f"\ntrickle → piper: first byte {trace.first_byte_ms:.0f} ms after the press; fallback first byte "
        f"{to_fallback_byte:.3f} s, fallback first audio at the device {to_fallback_audio:.3f} s after it "
        f"(failover_s={failover_s:g}); line done {took:.2f} s after the press; {trace.failover[0]}"
    )
    assert trace.first_byte_ms < 500  # the first byte was in time: the first-audio deadline never fired
    assert failover_s <= to_fallback_byte <= failover_s + 0.5
    assert to_fallback_audio <= failover_s + 0.5
    assert took < failover_s + 10
    assert kiosk.entries() == ["piper"]  # nothing partial from OpenAI was cached
    assert await wait_for_outcome(server.requests[0]) == "client_disconnected"  # the trickle was hung up on


async def test_trickle_on_the_last_engine_ends_the_line_with_an_error(make_kiosk, server):
    kiosk = await make_kiosk(failover_ms=1000, fallback="none")
    failover_s = kiosk.announcer.engines.failover_s
    server.behaviour = dataclasses.replace(TRICKLE)
    trace = await kiosk.say()

    assert trace.source == "openai" and trace.failover == []
    assert trace.error is not None and "too slowly" in trace.error
    held_s = (trace.elapsed_ms - trace.first_byte_ms) / 1000
    print(f"\ntrickle on the last engine: ended {held_s:.3f} s after the first byte: {trace.error}")
    assert failover_s <= held_s <= failover_s + 1
    assert not trace.cached and kiosk.entries() == []
    assert kiosk.announcer.engines.health["openai"].failures == 1  # a transient fault, counted toward back-off


HEALTHY = {
    **PROFILES,
    # harsher than any bench profile: barely faster than real time and an 800 ms stall mid-line
    "slow+stall": dataclasses.replace(PROFILES["slow"], stall_at_fraction=0.5, stall_s=0.8),
}


@pytest.mark.parametrize("profile", sorted(HEALTHY))
async def test_healthy_streams_do_not_trip(make_kiosk, server, profile):
    kiosk = await make_kiosk()  # the default failover_s: 2.5 s
    assert kiosk.announcer.engines.failover_s == 2.5
    server.behaviour = dataclasses.replace(HEALTHY[profile])
    engine = kiosk.announcer.engines.primary
    arrivals: list[tuple[float, int]] = []
    synthesize = engine.synthesize

    async def recording(text, on_audio):
        def note(chunk):
            arrivals.append((time.monotonic(), len(chunk)))
            on_audio(chunk)

        await synthesize(text, note)

    engine.synthesize = recording
    trace = await kiosk.say(LINES["short"])

    assert trace.error is None and trace.source == "openai" and trace.failover == [], trace
    assert trace.cached and kiosk.entries() == ["openai"]
    first_at, received, worst = arrivals[0][0], 0, 0.0
    for at, size in arrivals:  # the lag peaks just before a chunk lands
        worst = max(worst, at - first_at - engine.fmt.ms_for_bytes(received) / 1000)
        received += size
    print(f"\n{profile}: worst lag {worst:.3f} s over {engine.fmt.ms_for_bytes(received) / 1000:.1f} s of audio")
    assert worst < 1.2  # well under the 2.5 s limit


# --- the rule itself, on a scripted engine ---------------------------------------------------------------


class ScriptedEngine:
    """A SpeechEngine that sends `script` [(pause_s, nbytes), ...] at 1000 bytes per second of audio; an nbytes of
    None pauses without end (until cancelled)."""

    name = "scripted"
    on_device = False
    fmt = AudioFormat(rate=1000, channels=1, sample_width=1)

    def __init__(self, script):
        self.script = script
        self.sent = 0
        self.cancelled = False

    def identity(self) -> dict:
        return {"engine": self.name}

    async def synthesize(self, text, on_audio):
        try:
            for pause_s, nbytes in self.script:
                await asyncio.sleep(pause_s)
                if nbytes is None:
                    await asyncio.Event().wait()
                on_audio(b"\0" * nbytes)
                self.sent += nbytes
        except asyncio.CancelledError:
            self.cancelled = True
            raise

    async def probe(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


async def run_rule(engine, lag_limit, deadline=None):
    """(error or None, seconds from the first byte to the end, bytes relayed)."""
    first: list[float] = []
    relayed = bytearray()

    def on_audio(chunk):
        first.append(time.monotonic())
        relayed.extend(chunk)

    try:
        await asyncio.wait_for(synthesize_within(engine, "text", on_audio, deadline, lag_limit), 10)
        error = None
    except SpeechError as exc:
        error = exc
    return error, time.monotonic() - first[0], len(relayed)


async def test_rule_half_real_time_is_given_up_once_the_lag_passes_the_limit():
    engine = ScriptedEngine([(0.1, 50)] * 100)  # 50 ms of audio every 100 ms: the lag grows 0.5 s a second
    error, took, relayed = await run_rule(engine, lag_limit=0.3)
    assert error is not None and error.kind == "transient" and engine.cancelled
    assert str(error).startswith("scripted: audio arriving too slowly (0.")
    assert "× real time)" in str(error)
    assert 0.6 <= took <= 0.6 + 0.4  # lag 0.3 s after 0.6 s, found at the next check
    assert relayed == engine.sent


async def test_rule_a_stall_that_delivers_nothing_is_caught_on_the_timer():
    engine = ScriptedEngine([(0, 200), (0, None)])  # 0.2 s of audio, then silence without end
    error, took, _ = await run_rule(engine, lag_limit=0.3)
    assert error is not None and "too slowly" in str(error) and engine.cancelled
    assert 0.5 <= took <= 0.5 + 0.4


async def test_rule_applies_with_no_first_audio_deadline_and_counts_from_the_first_byte():
    # A slow first byte is the first-audio deadline's business, not the lag's: then real time with a short stall.
    engine = ScriptedEngine([(0.5, 100), *[(0.1, 100)] * 5, (0.25, 100), *[(0.1, 100)] * 5])
    error, _, relayed = await run_rule(engine, lag_limit=0.3)
    assert error is None and relayed == 1200 and not engine.cancelled


async def test_rule_an_engine_sending_far_more_audio_than_the_text_needs_is_cut():
    # "text": 4 characters, so at most 6 s of audio (6000 bytes here); 1 s of audio every 10 ms, without end
    engine = ScriptedEngine([(0.01, 1000)] * 10_000)
    error, took, relayed = await run_rule(engine, lag_limit=0.3)
    assert error is not None and error.kind == "runaway" and engine.cancelled
    assert str(error) == "scripted: far more audio than the text needs (over 6 s for 4 characters)"
    assert relayed == 6000 and took < 0.5  # nothing past the bound is passed on


async def test_rule_an_engine_that_ends_after_too_much_audio_is_not_a_short_success():
    engine = ScriptedEngine([(0, 5000), (0, 5000)])  # all at once, then a clean end
    error, _, relayed = await run_rule(engine, lag_limit=0.3)
    assert error is not None and error.kind == "runaway" and relayed == 5000


async def test_rule_audio_up_to_the_bound_is_fine():
    engine = ScriptedEngine([(0, 6000)])
    error, _, relayed = await run_rule(engine, lag_limit=10)
    assert error is None and relayed == 6000


async def test_rule_the_bound_follows_the_engines_speed():
    engine = ScriptedEngine([(0, 10_000)])
    engine.identity = lambda: {"engine": "scripted", "speed": 0.5}  # half speed: twice the audio is fine
    error, _, relayed = await run_rule(engine, lag_limit=10)
    assert error is None and relayed == 10_000


def test_the_bound_grows_with_the_text_and_slower_speech_and_counts_wide_characters_thrice():
    assert max_audio_s("text") == 4 * MAX_AUDIO_S_PER_CHAR + MAX_AUDIO_SLACK_S
    assert max_audio_s("  text\n") == max_audio_s("text")
    assert max_audio_s("text", speed=0.5) == 2 * max_audio_s("text") and max_audio_s("text", speed=2) == max_audio_s(
        "text"
    )
    assert max_audio_s("矿物") == max_audio_s("abcdef")  # an ideograph is a syllable or more


async def test_rule_first_audio_deadline_still_comes_first():
    engine = ScriptedEngine([(5, 100)])
    started = time.monotonic()
    with pytest.raises(SpeechError, match=r"scripted: no audio within 0.2 s"):
        await asyncio.wait_for(synthesize_within(engine, "text", lambda c: None, 0.2, 0.3), 10)
    assert time.monotonic() - started < 0.5 and engine.cancelled
