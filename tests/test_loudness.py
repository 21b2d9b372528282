"""Matched loudness: measured per BS.1770 (libebur128), levelled with a peak limiter, heard at the target from ALSA."""

import array
import asyncio
import json
import math
import random

import pytest
from conftest import file_sink_opener
from fake_openai import Behaviour
from hypothesis import given, settings
from hypothesis import strategies as st

from kiosk.build import open_announcer
from kiosk.cache import PhraseCache
from kiosk.config import parse_config
from kiosk.loudness import CEILING_DBTP, MAX_BOOST_DB, Levelled, Leveller, Loudness, level, measure
from kiosk.pcm import OPENAI_PCM, AudioFormat

TARGET = -18.0
RATE = OPENAI_PCM.rate
IDENTITY = {"engine": "openai", "voice": "coral"}
LOUD = 0.45  # the test server's tone at this peak is about 7 LU louder than the target
LINES = [
    "Welcome to the hall of minerals.",
    "This meteorite fell in Namibia about eighty thousand years ago.",
    "Please do not touch the glass.",
    "The skeleton in front of you belonged to a young mammoth.",
    "Carved from a single block of marble, this lion once guarded a banker's gate in Lucerne.",
]


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-secret")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def tone(seconds: float, amplitude: float, hz: float = 997.0, rate: int = RATE) -> bytes:
    return array.array(
        "h", (round(amplitude * 32767 * math.sin(2 * math.pi * hz * n / rate)) for n in range(int(seconds * rate)))
    ).tobytes()


def speech_like(seconds: float, seed: int, rate: int = RATE) -> bytes:
    """Syllable-like bursts of a few tones at random levels, with loud plosive-like clicks: it peaks about 20 dB
    above its loudness, as real speech does (and a -18 LUFS target leaves only 17 dB)."""
    rng = random.Random(seed)
    out = array.array("h")
    while len(out) < seconds * rate:
        burst = int(rng.uniform(0.08, 0.3) * rate)
        loud, hz = rng.uniform(0.02, 0.12), rng.uniform(120, 3000)
        for n in range(burst):
            value = loud * math.sin(2 * math.pi * hz * n / rate) * math.sin(math.pi * n / burst)
            if n == burst // 3:
                value = rng.choice((-1, 1)) * rng.uniform(0.7, 1.0)  # a click at near full scale
            out.append(round(value * 32767))
        out.extend([0] * int(rng.uniform(0.02, 0.15) * rate))
    return out.tobytes()


def test_a_sine_reads_as_bs1770_says():
    """A full-scale sine reads -3.01 LUFS in one channel, so a -20 dBFS one reads -23 LUFS; its peak is -20 dBTP."""
    measured = measure(tone(5, 0.1), OPENAI_PCM)
    assert measured.lufs == pytest.approx(-23.0, abs=0.1)
    assert measured.true_peak_db == pytest.approx(-20.0, abs=0.1)


def test_silence_and_very_short_lines_have_no_loudness():
    assert measure(b"", OPENAI_PCM) == Loudness(None, -math.inf)
    assert measure(bytes(RATE * 2), OPENAI_PCM).lufs is None
    assert measure(tone(0.2, 0.5), OPENAI_PCM).lufs is None  # under one 400 ms gating block
    pcm, levelled = level(tone(0.2, 0.5), OPENAI_PCM, TARGET)
    assert pcm == tone(0.2, 0.5) and levelled.engine_lufs is None


def test_a_peaky_line_reaches_the_target_under_the_ceiling():
    made = speech_like(6, seed=1)
    before = measure(made, OPENAI_PCM)
    assert before.true_peak_db - before.lufs > 17  # the target's gain alone would take it over -1 dBTP
    pcm, levelled = level(made, OPENAI_PCM, TARGET)
    after = measure(pcm, OPENAI_PCM)
    assert after.lufs == pytest.approx(TARGET, abs=0.2)
    assert after.true_peak_db <= CEILING_DBTP
    assert levelled.loudness == after and levelled.engine_lufs == before.lufs and levelled.target_lufs == TARGET
    assert len(pcm) == len(made)


@settings(max_examples=25, deadline=None)
@given(
    seconds=st.floats(1.0, 4.0),
    seed=st.integers(0, 2**16),
    scale=st.floats(0.05, 1.0),
    target=st.floats(-30.0, -12.0),
    rate=st.sampled_from([22050, 24000]),
)
def test_any_line_is_levelled_to_any_target_without_overs(seconds, seed, scale, target, rate):
    fmt = AudioFormat(rate, 1, 2)
    made = bytes(array.array("h", (round(s * scale) for s in array.array("h", speech_like(seconds, seed, rate)))))
    before = measure(made, fmt)
    pcm, _ = level(made, fmt, target)
    after = measure(pcm, fmt)
    assert after.true_peak_db <= CEILING_DBTP + 0.05
    if before.lufs is not None and target - before.lufs < MAX_BOOST_DB - 6:  # room for what the limiter takes
        assert after.lufs == pytest.approx(target, abs=1.0)


def test_the_record_in_a_header_survives_a_round_trip_and_refuses_nonsense():
    record = Levelled(Loudness(-18.01, -1.2), -21.5, -18.0)
    assert Levelled.from_json(json.loads(json.dumps(record.as_json()))) == Levelled(
        Loudness(-18.01, -1.2), -21.5, -18.0
    )
    silent = Levelled(Loudness(None, -math.inf), None, -18.0)
    assert Levelled.from_json(json.loads(json.dumps(silent.as_json()))) == silent
    for junk in (None, [], "loud", {"lufs": "x"}, {"lufs": True}, {"lufs": float("nan")}, {"true_peak_db": 1e400}):
        assert Levelled.from_json(junk) is None


def test_an_engine_gain_is_learned_from_its_recent_lines():
    leveller = Leveller(TARGET)
    assert leveller.learned_db("piper") == 0.0  # nothing heard from it yet
    for made in (-21.0, -20.0, -30.0, -19.5, -20.5):
        leveller.learn("piper", Levelled(Loudness(TARGET, -1.0), made, TARGET))
    assert leveller.learned_db("piper") == pytest.approx(2.5)  # the median: one odd line does not sway it
    leveller.learn("piper", Levelled(Loudness(None, -math.inf), None, TARGET))  # unmeasurable: ignored
    assert leveller.learned_db("piper") == pytest.approx(2.5)
    assert leveller.gain_db(Levelled(Loudness(TARGET, -1.0), -21.0, TARGET), "piper") == 0.0  # levelled already
    other_target = Levelled(Loudness(-23.0, -3.0), -21.0, -23.0)
    assert leveller.gain_db(other_target, "piper") == pytest.approx(2.0)  # +5 wanted, the ceiling allows +2
    assert leveller.gain_db(None, "piper") == pytest.approx(2.5)  # no record yet: the engine's


def test_the_cache_stores_levelled_audio_and_relevels_for_a_new_target(tmp_path):
    made = speech_like(3, seed=7)
    cache = PhraseCache(tmp_path, 10_000_000, loudness_lufs=TARGET).open()
    key = "a" * 64
    cache.put(key, made, fmt=OPENAI_PCM, text="Hello.", identity=IDENTITY)
    entry = cache.get(key)
    assert measure(entry.pcm, OPENAI_PCM).lufs == pytest.approx(TARGET, abs=0.2)
    assert entry.info.levelled.engine_lufs == pytest.approx(measure(made, OPENAI_PCM).lufs, abs=0.01)
    with cache.open_entry(key) as audio:
        assert not audio.outdated

    quieter = PhraseCache(tmp_path, 10_000_000, loudness_lufs=-24.0).open()
    with quieter.open_entry(key) as audio:
        assert audio.outdated
    assert quieter.migrate(key)
    entry = quieter.get(key)
    assert measure(entry.pcm, OPENAI_PCM).lufs == pytest.approx(-24.0, abs=0.2)
    assert entry.info.levelled.target_lufs == -24.0
    assert entry.info.levelled.engine_lufs == pytest.approx(measure(made, OPENAI_PCM).lufs, abs=0.01)  # kept


def loudness_config(server_url: str, cache_dir, engine: str) -> object:
    return parse_config(
        f"audio:\n  loudness_lufs: {TARGET}\nspeech:\n  engine: {engine}\n  fallback: none\n"
        f"openai:\n  base_url: {server_url}/v1\ncache:\n  dir: {cache_dir}\n"
    )


class Device:
    """ALSA's file plugin, one file per sample rate (`%r`); a format change reopens, and so empties, its file."""

    def __init__(self, tmp_path):
        self.name = f"file:FILE={tmp_path}/alsa-%r.raw,FORMAT=raw"
        self._tmp = tmp_path
        self._rate: int | None = None

    def file(self, rate: int):
        return self._tmp / f"alsa-{rate}.raw"

    async def heard(self, announcer, text: str):
        """Say `text`; the trace, and the loudness of what reached the device for it."""
        before = {rate: self._size(rate) for rate in (RATE, 22050)}
        trace = await asyncio.wait_for(announcer.say(text), 60)
        assert trace.error is None, trace.error
        rate = 22050 if trace.engine == "piper" else RATE
        start = before[rate] if rate == self._rate else 0
        self._rate = rate
        return trace, measure(self.file(rate).read_bytes()[start:], AudioFormat(rate, 1, 2))

    def _size(self, rate: int) -> int:
        path = self.file(rate)
        return path.stat().st_size if path.exists() else 0


def assert_trace_tells(trace, heard: Loudness) -> None:
    """A streamed line's trace gives the loudness its gain aimed at; periods kept under -1 dBFS (a voice that peaks
    at full scale) can make it up to about a LU quieter, never louder."""
    assert trace.loudness_lufs - 1.5 <= heard.lufs <= trace.loudness_lufs + 0.3


@pytest.mark.parametrize("engine", ["openai", "piper"])
async def test_lines_reach_the_device_at_the_target(server, tmp_path, engine):
    """Each engine's lines, first streamed and then from the cache, measured from what ALSA received."""
    device = Device(tmp_path)
    server.behaviour = Behaviour(amplitude=LOUD)
    cfg = loudness_config(server.url, tmp_path / "cache", engine)
    async with open_announcer(cfg, open_sink=file_sink_opener(device.name)) as announcer:
        first, made = await device.heard(announcer, LINES[0])  # nothing learned yet: as the engine made it
        assert first.source == engine
        # As the engine made it, less what the ceiling took off a period that peaked at full scale (piper's output
        # varies from run to run, and now and then peaks there): a little quieter at the device, never louder.
        assert_trace_tells(first, made)
        again, replayed = await device.heard(announcer, LINES[0])
        assert again.source == "cache"
        assert replayed.lufs == pytest.approx(TARGET, abs=1.0) and replayed.true_peak_db <= CEILING_DBTP + 0.1
        assert again.loudness_lufs == pytest.approx(TARGET, abs=0.3)
        for text in LINES[1:3]:  # a first hearing now gets the engine's learned gain
            streamed, level_heard = await device.heard(announcer, text)
            assert streamed.source == engine
            assert_trace_tells(streamed, level_heard)
            assert level_heard.lufs == pytest.approx(TARGET, abs=2.0 if engine == "piper" else 1.0)


async def test_a_failover_to_the_local_voice_does_not_jump_in_level(server, tmp_path):
    """The test server's tone is about 7 LU louder than the target and Piper's voice 1-3 LU quieter. Once each engine
    has made a few lines, a first hearing from either is played at its engine's learned gain: near the target, so a
    failover mid-visit is no jump (without matching it would be about 9 LU)."""
    device = Device(tmp_path)
    cfg = parse_config(
        f"audio:\n  loudness_lufs: {TARGET}\nspeech:\n  engine: openai\n  fallback: piper\n"
        f"openai:\n  base_url: {server.url}/v1\n  retries: 0\ncache:\n  dir: {tmp_path / 'cache'}\n"
    )
    server.behaviour = Behaviour(amplitude=LOUD)
    async with open_announcer(cfg, open_sink=file_sink_opener(device.name)) as announcer:
        await asyncio.wait_for(announcer.engines.engines[1].probe(), 60)  # the voice loaded, as at start
        await device.heard(announcer, LINES[0])  # OpenAI's gain is learned from its first line
        server.behaviour = Behaviour(status=503, amplitude=LOUD)
        for text in LINES[1:4]:  # and the local voice's from three
            assert (await device.heard(announcer, text))[0].engine == "piper"
        local, local_level = await device.heard(announcer, LINES[4])
        server.behaviour = Behaviour(amplitude=LOUD)
        announcer.engines.health["openai"].in_backoff = False
        remote, remote_level = await device.heard(announcer, "The gift shop closes in ten minutes.")
    assert local.source == "piper" and remote.source == "openai"
    for trace, level_heard in ((local, local_level), (remote, remote_level)):
        assert_trace_tells(trace, level_heard)
    assert remote_level.lufs == pytest.approx(TARGET, abs=1.0)
    assert local_level.lufs == pytest.approx(TARGET, abs=2.0)  # the voice varies by a LU or two from line to line
    assert abs(local_level.lufs - remote_level.lufs) <= 2.5


def test_a_line_close_to_the_target_is_kept_bit_for_bit():
    made = tone(3, 0.19, hz=550)
    assert measure(made, OPENAI_PCM).lufs == pytest.approx(TARGET, abs=0.5)
    pcm, levelled = level(made, OPENAI_PCM, TARGET)
    assert pcm == made and levelled.target_lufs == TARGET
    leveller = Leveller(TARGET)
    leveller.learn("openai", levelled)
    assert leveller.learned_db("openai") == 0.0  # and its engine's lines are streamed untouched
