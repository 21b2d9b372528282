"""The local Piper voice: speaks with no key and no network, at its own rate, and is cached like any engine."""

import asyncio
import subprocess
import sys
import threading
import wave

import pytest
from conftest import file_sink_opener

from kiosk.build import build_engine, open_announcer
from kiosk.config import parse_config

pytest.importorskip("piper", reason="the piper extra is not installed")

LINE = "The meteorite is older than any rock on Earth."


@pytest.fixture
def no_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def test_auto_picks_openai_with_a_key_and_piper_without(monkeypatch, no_key):
    assert build_engine(parse_config("")).name == "piper"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    assert build_engine(parse_config("")).name == "openai"
    assert build_engine(parse_config("speech:\n  engine: piper\n")).name == "piper"


async def test_uncached_line_spoken_by_piper_then_from_cache(tmp_path, no_key):
    wav = tmp_path / "out.wav"
    cfg = parse_config(f"cache:\n  dir: {tmp_path / 'cache'}\n")
    device = f"file:FILE={wav},FORMAT=wav"
    async with open_announcer(cfg, open_sink=file_sink_opener(device)) as announcer:
        assert announcer.engine.fmt.rate == 22_050
        first = await asyncio.wait_for(announcer.say(LINE), timeout=60)
        second = await asyncio.wait_for(announcer.say(LINE), timeout=10)
    assert first.error is None and first.source == "piper" and first.cached
    assert first.duration_ms > 1500  # about two seconds of speech, not silence
    assert second.source == "cache" and second.frames == first.frames
    with wave.open(str(wav)) as w:
        assert w.getframerate() == 22_050
        audio = w.readframes(w.getnframes())
    assert max(abs(int.from_bytes(audio[i : i + 2], "little", signed=True)) for i in range(0, 20_000, 2)) > 1000


LION = (
    "Carved from a single block of white marble in 1821, this sleeping lion once guarded the gate of a banker's "
    "house in Lucerne, and it was slowly carried over the mountains by boat, by cart and at last by hand."
)


@pytest.fixture(scope="module")
def engine():
    from kiosk.config import PiperConfig
    from kiosk.speech.piper_engine import PiperEngine

    piper = PiperEngine(PiperConfig())
    asyncio.run(piper.load())
    return piper


class HeldModel:
    """Wraps the model run: from the second run on, each waits (bounded) until audio has been handed on, and notes
    whether it had been by then."""

    def __init__(self, monkeypatch):
        from piper import PiperVoice

        self.runs: list[int] = []  # phoneme ids per run
        self.delivered = threading.Event()
        self.audio_before_second_run: bool | None = None
        real = PiperVoice.phoneme_ids_to_audio

        def run(voice, phoneme_ids, *args, **kwargs):
            if self.runs and self.audio_before_second_run is None:
                self.audio_before_second_run = self.delivered.wait(timeout=10)
            self.runs.append(len(phoneme_ids))
            return real(voice, phoneme_ids, *args, **kwargs)

        monkeypatch.setattr(PiperVoice, "phoneme_ids_to_audio", run)

    def on_audio(self, chunk: bytes) -> None:
        self.delivered.set()


async def test_a_long_sentence_is_spoken_piece_by_piece_as_each_is_made(engine, monkeypatch):
    """At a Pi's pace the 40-word sentence goes to the model in pieces, and the first piece's audio is handed on
    before the second is made (the second run waits for it: were the audio held back, it would wait in vain)."""
    from kiosk.speech.pace import VoicePace

    monkeypatch.setattr(engine, "pace", VoicePace(rtf=0.4))
    model = HeldModel(monkeypatch)
    chunks: list[bytes] = []

    def on_audio(chunk: bytes) -> None:
        chunks.append(chunk)
        model.on_audio(chunk)

    await asyncio.wait_for(engine.synthesize(LION, on_audio), timeout=60)
    assert len(model.runs) >= 2 and model.audio_before_second_run is True
    assert model.runs[0] < sum(model.runs) / 4  # the first run is a few words, not the sentence
    assert sum(map(len, chunks)) > 2 * 22_050 * 8  # more than 8 s of speech in all


async def test_each_sentence_is_handed_on_as_soon_as_it_is_made(engine, monkeypatch):
    from kiosk.speech.pace import VoicePace

    monkeypatch.setattr(engine, "pace", VoicePace(rtf=0.001))  # so fast that every sentence stays whole
    model = HeldModel(monkeypatch)
    await asyncio.wait_for(engine.synthesize("Look closely at the crystal. You may touch it.", model.on_audio), 60)
    assert len(model.runs) == 2 and model.audio_before_second_run is True


def test_the_voice_measures_its_pace_when_it_loads(engine):
    from kiosk.speech.pace import VoicePace

    assert engine.language == "en-us"
    assert 0 < engine.pace.rtf < 1 and engine.pace.rtf != VoicePace().rtf
    assert 0.03 < engine.pace.audio_s_per_char < 0.12


async def test_a_cancelled_line_stops_the_worker(engine):
    got: list[bytes] = []
    task = asyncio.ensure_future(engine.synthesize(LION, got.append))
    while not got:
        await asyncio.wait_for(asyncio.sleep(0.01), 1)
        assert not task.done() or got
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    heard = len(got)
    await asyncio.sleep(1.0)  # the worker may finish the clause it was making, and hands nothing more on
    assert len(got) == heard


def test_the_model_session_suits_a_small_device(engine):
    options = engine._loaded_voice().session.get_session_options()
    assert options.enable_cpu_mem_arena is False


def test_a_voice_that_is_not_loaded_costs_no_onnxruntime():
    code = (
        "import sys\n"
        "from kiosk.config import PiperConfig\n"
        "from kiosk.speech.piper_engine import PiperEngine\n"
        "engine = PiperEngine(PiperConfig())\n"
        "print(engine.fmt.rate, 'onnxruntime' in sys.modules, 'piper' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["22050", "False", "False"], done.stderr
