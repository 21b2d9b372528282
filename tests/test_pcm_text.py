import random

from kiosk.pcm import OPENAI_PCM, FrameAligner
from kiosk.speech.text import split_text


def test_frame_aligner_rejoins_split_samples():
    data = bytes(random.Random(1).randrange(256) for _ in range(10_001))
    aligner = FrameAligner(2)
    out = bytearray()
    rng = random.Random(2)
    pos = 0
    while pos < len(data):
        size = rng.choice([1, 2, 3, 7, 4095])
        out += aligner.push(data[pos : pos + size])
        assert len(out) % 2 == 0
        pos += size
    assert bytes(out) == data[:10_000]
    assert aligner.pending == 1


def test_format_arithmetic():
    assert OPENAI_PCM.frame_bytes == 2
    assert OPENAI_PCM.bytes_for_ms(120) == 5760
    assert OPENAI_PCM.ms_for_bytes(48_000) == 1000


def test_short_text_is_one_piece():
    assert split_text("  Hello there. General Kenobi!  ", 4096) == ["Hello there. General Kenobi!"]


def test_long_text_splits_at_sentences_within_limit():
    sentences = [f"Sentence number {i} tells a little more about this mineral." for i in range(200)]
    text = " ".join(sentences)
    pieces = split_text(text, 4096)
    assert len(pieces) >= 3
    assert all(len(p) <= 4096 for p in pieces)
    assert all(p.endswith(".") for p in pieces)
    assert " ".join(pieces) == text


def test_sentence_longer_than_limit_is_cut_at_a_space():
    text = "word " * 50
    pieces = split_text(text, 42)
    assert all(len(p) <= 42 for p in pieces)
    assert " ".join(pieces) == text.strip()
    assert split_text("x" * 100, 42) == ["x" * 42, "x" * 42, "x" * 16]
