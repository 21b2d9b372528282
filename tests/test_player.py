"""The player on real ALSA: the `file` plugin for exact bytes, a PulseAudio null sink for timing and underruns."""

import array
import asyncio
import math
import random
import struct
import sys
import time

import pytest
from conftest import file_sink_opener
from hypothesis import given, settings
from hypothesis import strategies as st

from kiosk.alsa_output import AlsaOutput
from kiosk.errors import AudioError
from kiosk.pcm import OPENAI_PCM
from kiosk.player import MAX_GAIN, Player, scale

PERIOD_BYTES = OPENAI_PCM.bytes_for_ms(40)


def tone(seconds: float, hz: float = 440.0) -> bytes:
    frames = int(OPENAI_PCM.rate * seconds)
    return b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * hz * i / OPENAI_PCM.rate))) for i in range(frames)
    )


@pytest.fixture
async def file_player(alsa_file):
    device, out = alsa_file
    player = Player(file_sink_opener(device), preroll_ms=120)
    player.start()
    yield player, out
    await asyncio.to_thread(player.close)


def assert_device_got(out, audio: bytes):
    """The device received exactly the audio, then silence up to the end of the last period."""
    got = out.read_bytes()
    assert got[: len(audio)] == audio
    padding = got[len(audio) :]
    assert padding == bytes(len(padding)) and len(padding) < PERIOD_BYTES


async def test_odd_chunks_reach_alsa_byte_exact(file_player):
    player, out = file_player
    audio = tone(0.7)
    playback = player.play(OPENAI_PCM, streamed=True)
    rng = random.Random(7)
    pos = 0
    while pos < len(audio):
        size = rng.choice([1, 3, 7, 333, 4095])
        playback.feed(audio[pos : pos + size])
        pos += size
    playback.finish()
    stats = await asyncio.wait_for(playback.wait(), timeout=5)
    assert stats.frames == len(audio) // 2 and stats.underruns == 0 and stats.first_audio_at is not None
    await asyncio.to_thread(player.close)
    assert_device_got(out, audio)


async def test_last_period_is_padded_with_silence(file_player):
    player, out = file_player
    audio = tone(0.05)  # 1.25 periods
    playback = player.play(OPENAI_PCM, streamed=False)
    playback.feed(audio)
    playback.finish()
    await asyncio.wait_for(playback.wait(), timeout=5)
    await asyncio.to_thread(player.close)
    got = out.read_bytes()
    assert len(got) == 2 * PERIOD_BYTES
    assert got[: len(audio)] == audio and got[len(audio) :] == bytes(2 * PERIOD_BYTES - len(audio))


async def test_stray_half_sample_at_the_end_is_dropped(file_player):
    player, _out = file_player
    audio = tone(0.04)
    playback = player.play(OPENAI_PCM, streamed=True)
    playback.feed(audio + b"\x7f")
    playback.finish()
    stats = await asyncio.wait_for(playback.wait(), timeout=5)
    assert stats.frames == len(audio) // 2


async def test_streamed_audio_waits_for_the_preroll(file_player):
    player, _out = file_player
    playback = player.play(OPENAI_PCM, streamed=True)
    playback.feed(tone(0.1))  # less than the 120 ms pre-roll
    await asyncio.sleep(0.3)
    assert playback.stats.first_audio_at is None and playback.stats.frames == 0
    playback.feed(tone(0.05))
    playback.finish()
    stats = await asyncio.wait_for(playback.wait(), timeout=5)
    assert stats.frames == OPENAI_PCM.frames_for_ms(150)


async def test_short_stream_below_the_preroll_still_plays(file_player):
    player, _ = file_player
    playback = player.play(OPENAI_PCM, streamed=True)
    playback.feed(tone(0.03))
    playback.finish()
    stats = await asyncio.wait_for(playback.wait(), timeout=5)
    assert stats.frames == OPENAI_PCM.frames_for_ms(30)


async def test_bad_device_is_a_clear_error_naming_what_exists():
    player = Player(file_sink_opener("hw:CARD=NoSuchCard"), preroll_ms=120)
    player.start()
    try:
        with pytest.raises(AudioError, match=r"cannot open ALSA device 'hw:CARD=NoSuchCard'.*Sound cards"):
            await asyncio.wait_for(player.open_device(OPENAI_PCM), timeout=5)
    finally:
        await asyncio.to_thread(player.close)


async def test_writes_happen_off_the_event_loop(file_player):
    import threading

    player, _ = file_player
    seen = []
    real_write = AlsaOutput.write

    def spy(self, frames):
        seen.append(threading.current_thread().name)
        return real_write(self, frames)

    AlsaOutput.write = spy
    try:
        playback = player.play(OPENAI_PCM, streamed=False)
        playback.feed(tone(0.2))
        playback.finish()
        await asyncio.wait_for(playback.wait(), timeout=5)
    finally:
        AlsaOutput.write = real_write
    assert seen and set(seen) == {"alsa-writer"}


# A device with a clock: PulseAudio's null sink through ALSA's pulse plugin.


async def wait_until(predicate, timeout: float):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_stop_silences_within_one_period(pulse_device):
    player = Player(file_sink_opener(pulse_device), preroll_ms=120)
    player.start()
    try:
        playback = player.play(OPENAI_PCM, streamed=False)
        playback.feed(tone(8.0))
        playback.finish()
        # Stop once it is really playing, not while the first periods are still being accepted.
        await wait_until(lambda: playback.stats.frames > OPENAI_PCM.frames_for_ms(600), timeout=6)
        asked = time.monotonic()
        playback.stop()
        stats = await asyncio.wait_for(playback.wait(), timeout=2)
        took_ms = (time.monotonic() - asked) * 1000
        assert stats.stopped
        assert stats.frames < OPENAI_PCM.frames_for_ms(8000)
        assert took_ms < 40 + 60, f"stop took {took_ms:.0f} ms; one period is 40 ms"
    finally:
        await asyncio.to_thread(player.close)


async def test_underrun_is_recovered_and_counted(pulse_device):
    player = Player(file_sink_opener(pulse_device), preroll_ms=120)
    player.start()
    try:
        first, second = tone(0.5), tone(0.3, hz=660)
        playback = player.play(OPENAI_PCM, streamed=False)  # no pre-roll: the device starts on the first chunk
        playback.feed(first)
        await wait_until(lambda: playback.stats.frames == len(first) // 2, timeout=6)
        await asyncio.sleep(0.5)  # the network stalls: the 160 ms device buffer runs dry
        playback.feed(second)
        playback.finish()
        stats = await asyncio.wait_for(playback.wait(), timeout=5)
        assert stats.underruns >= 1
        assert stats.frames == (len(first) + len(second)) // 2
    finally:
        await asyncio.to_thread(player.close)


async def feed_bursts(playback, audio: bytes, first_s: float, burst_s: float, every_s: float) -> list[float]:
    """A network that sends `first_s` of audio with the first byte, then `burst_s` every `every_s`; returns the
    times the bursts were fed."""
    first, rest = audio[: OPENAI_PCM.bytes_for_ms(first_s * 1000)], audio[OPENAI_PCM.bytes_for_ms(first_s * 1000) :]
    step = OPENAI_PCM.bytes_for_ms(burst_s * 1000)
    fed = [time.monotonic()]
    playback.feed(first)
    for start in range(0, len(rest), step):
        await asyncio.sleep(every_s)
        fed.append(time.monotonic())
        playback.feed(rest[start : start + step])
    playback.finish()
    return fed


@pytest.mark.parametrize("streamed", [True, False])
async def test_adaptive_preroll_rides_out_a_bursty_network(pulse_device, streamed):
    """85 ms with the first byte, then 600 ms every 400 ms (1.5x real time on average): starting at once runs dry
    before the first burst; the adaptive pre-roll measures the rate first and plays without a gap."""
    player = Player(file_sink_opener(pulse_device), preroll_ms=120)
    player.start()
    try:
        audio = tone(2.5)
        playback = player.play(OPENAI_PCM, streamed=streamed, expected_s=2.5)
        fed = await asyncio.wait_for(feed_bursts(playback, audio, 0.085, 0.6, 0.4), timeout=10)
        stats = await asyncio.wait_for(playback.wait(), timeout=10)
        assert stats.frames == len(audio) // 2
        if streamed:
            assert stats.underruns == 0
            assert stats.first_audio_at >= fed[1], "started before the rate could be known"
        else:
            assert stats.underruns >= 1
    finally:
        await asyncio.to_thread(player.close)


# Software volume: no Python loop over the samples.


def scale_before(pcm: bytes, gain: float) -> bytes:
    """The implementation this replaced: a Python loop over every sample, truncating toward zero."""
    samples = array.array("h", pcm)
    if sys.byteorder == "big":
        samples.byteswap()
    scaled = array.array("h", [int(s * gain) for s in samples])
    if sys.byteorder == "big":
        scaled.byteswap()
    return scaled.tobytes()


def samples_of(pcm: bytes) -> list[int]:
    return [int.from_bytes(pcm[i : i + 2], "little", signed=True) for i in range(0, len(pcm) - 1, 2)]


@settings(max_examples=300, deadline=None)
@given(
    pcm=st.binary(max_size=4000).map(lambda b: b[: len(b) // 2 * 2]),
    gain=st.one_of(st.floats(0.0, 1.0), st.integers(0, 100).map(lambda pct: pct / 100)),
)
def test_scale_matches_the_loop_it_replaced(pcm, gain):
    """Within 1 LSB of the old loop (which truncated; this rounds to nearest), exactly round(s * k / 65536) with
    k = round(gain * 65536), the right length, and exact at gain 0 and 1."""
    new = scale(pcm, gain, 2)
    assert len(new) == len(pcm)
    k = round(gain * 65536)
    got = samples_of(new)
    assert got == [(s * k + 32768) >> 16 for s in samples_of(pcm)]
    assert all(abs(a - b) <= 1 for a, b in zip(got, samples_of(scale_before(pcm, gain)), strict=True))


@settings(max_examples=300, deadline=None)
@given(pcm=st.binary(max_size=4000).map(lambda b: b[: len(b) // 2 * 2]), gain=st.floats(1.0, MAX_GAIN))
def test_a_gain_above_one_raises_the_period_as_far_as_it_fits_and_never_wraps(pcm, gain):
    """Exactly round(s * k / 65536) when the loudest sample stays under -1 dBFS (29204); otherwise the whole period
    gets the largest gain that keeps it there, never less than 1: every sample keeps its sign, none is clipped or
    wrapped around."""
    before, after = samples_of(pcm), samples_of(scale(pcm, gain, 2))
    k = round(gain * 65536)
    exact = [(s * k + 32768) >> 16 for s in before]
    peak = max((abs(s) for s in before), default=0)
    if all(abs(y) <= 29204 for y in exact):
        assert after == exact
    elif peak < 29204:
        assert 29200 <= max(abs(y) for y in after) <= 29204  # raised as far as -1 dBFS
    else:
        assert after == before  # already over -1 dBFS: not raised at all
        assert all((y >= 0) == (s >= 0) or y == 0 for s, y in zip(before, after, strict=True))
        assert all(abs(y) <= abs(s) * gain + 1 for s, y in zip(before, after, strict=True))


def test_scale_extremes():
    edge = struct.pack("<4h", -32768, 32767, -1, 1)
    assert scale(edge, 1.0, 2) == edge
    assert scale(edge, 0.0, 2) == bytes(8)
    assert samples_of(scale(edge, 0.5, 2)) == [-16384, 16384, 0, 1]  # rounded to nearest, halves up
    assert samples_of(scale(struct.pack("<3h", 1000, -1000, 3), 4.0, 2)) == [4000, -4000, 12]
    assert samples_of(scale(struct.pack("<2h", 16000, -20000), 4.0, 2)) == [23363, -29203]  # up to -1 dBFS only
    assert scale(edge, 100.0, 2) == edge  # over -1 dBFS already: not raised
    with pytest.raises(AudioError):
        scale(b"\0\0\0", 0.5, 3)
