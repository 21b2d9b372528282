"""The chime: made or read once, played the moment a press is accepted for a line not ready offline, then the
speech after it with no overlap — checked in the bytes that reached ALSA's `file` device."""

import wave

import pytest
from fake_openai import pcm_for
from test_service import QUARTZ, config, started, wait_idle

from kiosk.chime import SOFT_S, load_chime, soft_chime
from kiosk.errors import ConfigError
from kiosk.pcm import OPENAI_PCM


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-secret")


def write_wav(path, channels=1, rate=24000, frames=2400):
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(b"\x10\x00" * frames * channels)
    return path


def test_the_soft_chime_is_short_soft_and_starts_without_a_click():
    pcm = soft_chime(24000)
    samples = memoryview(pcm).cast("h")
    assert len(samples) == int(24000 * SOFT_S)
    assert max(abs(s) for s in samples) < 0.25 * 32767  # soft: well below full scale
    assert abs(samples[0]) < 50 and abs(samples[-1]) < 0.05 * 32767  # fades in and dies away


def test_chime_settings(tmp_path):
    assert load_chime("none", OPENAI_PCM) is None
    assert load_chime("soft", OPENAI_PCM).fmt == OPENAI_PCM
    own = load_chime(str(write_wav(tmp_path / "ding.wav", rate=22050)), OPENAI_PCM)
    assert own.fmt.rate == 22050 and len(own.pcm) == 4800
    for bad, message in [
        (write_wav(tmp_path / "stereo.wav", channels=2), "must be mono 16-bit"),
        (write_wav(tmp_path / "long.wav", frames=24000 * 4), "at most 3 s"),
        (tmp_path / "missing.wav", "cannot read"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_chime(str(bad), OPENAI_PCM)


async def test_chime_first_then_the_speech_without_overlap(server, tmp_path, alsa_file, pins):
    device, captured = alsa_file
    server.behaviour.first_byte_delay_s = 0.4  # the network's silence the chime fills
    service = await started(config(server.url, tmp_path / "c", extra="audio:\n  chime: soft\n"), device, pins)
    try:
        service.supervisor.cancel("warm")  # keep the line uncached
        req = service.play(phrase="quartz", text=None, origin="api")
        await wait_idle(service)
        trace = req.trace
        print(f"\nfirst_sound_ms {trace.first_sound_ms}, first_audio_ms {trace.first_audio_ms}", end="")
        assert trace.first_sound_ms is not None and trace.first_audio_ms is not None
        assert trace.first_sound_ms < 100 < trace.first_audio_ms  # the chime rang while the engine was silent
        audio = captured.read_bytes()
        chime = soft_chime(24000)
        assert audio.startswith(chime)  # the chime whole, first
        speech = pcm_for(QUARTZ)
        after = audio[len(chime) :]
        assert after.lstrip(b"\x00")[: len(speech) // 2] == speech.lstrip(b"\x00")[: len(speech) // 2]
        gap_bytes = len(after) - len(after.lstrip(b"\x00"))
        assert gap_bytes < OPENAI_PCM.frame_bytes * 960 * 2  # padding to the period's end, not a pause

        again = service.play(phrase="quartz", text=None, origin="api")  # now cached: no chime needed
        await wait_idle(service)
        assert again.trace.source == "cache" and again.trace.first_sound_ms == again.trace.first_audio_ms

        later = service.play(phrase=None, text="A new line, not in the cache.", origin="api")  # the SDK is loaded now
        await wait_idle(service)
        print(
            f"; a later new line: first_sound_ms {later.trace.first_sound_ms}, "
            f"first_audio_ms {later.trace.first_audio_ms}",
            end="",
        )
        assert later.trace.source == "openai" and later.trace.first_sound_ms < 100 < later.trace.first_audio_ms
    finally:
        await service.stop()


async def test_a_chime_file_that_cannot_be_read_is_reported_not_fatal(server, tmp_path, alsa_file, pins):
    extra = f"audio:\n  chime: {tmp_path / 'nope.wav'}\n"
    service = await started(config(server.url, tmp_path / "c", extra=extra), alsa_file[0], pins)
    try:
        assert any("no chime" in e["text"] for e in service.events)
        assert service.announcer.chime is None
    finally:
        await service.stop()
