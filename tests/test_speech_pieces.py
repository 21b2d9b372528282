"""Clause-sized pieces for the local voice: long sentences cut where a speaker pauses, never inside a word."""

from __future__ import annotations

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from kiosk.speech.text import MIN_CLAUSE_WORDS, SHORT_SENTENCE_WORDS, speech_pieces

LION = (
    "Carved from a single block of white marble in 1821, this sleeping lion once guarded the gate of a banker's "
    "house in Lucerne, and it was slowly carried over the mountains by boat, by cart and at last by hand."
)


def test_a_long_sentence_is_cut_after_its_commas():
    assert speech_pieces(LION) == [
        "Carved from a single block of white marble in 1821,",
        "this sleeping lion once guarded the gate of a banker's house in Lucerne,",
        "and it was slowly carried over the mountains by boat,",
        "by cart and at last by hand.",  # "by boat," alone is too short to stand: it stays with what it lists
    ]


def test_short_sentences_stay_whole_even_with_commas():
    text = "Welcome to the hall of minerals. Thank you, and mind the step, please."
    assert speech_pieces(text) == ["Welcome to the hall of minerals.", "Thank you, and mind the step, please."]


def test_semicolons_colons_and_spaced_dashes_are_pauses_too():
    text = (
        "The clock stopped in 1891 and stood silent for more than a century; in 2004 our conservators cleaned "
        "every wheel: two worn pivots were replaced by hand — and it has kept time ever since."
    )
    assert speech_pieces(text) == [
        "The clock stopped in 1891 and stood silent for more than a century;",
        "in 2004 our conservators cleaned every wheel:",
        "two worn pivots were replaced by hand —",
        "and it has kept time ever since.",
    ]


def test_numbers_times_and_hyphenated_words_are_not_cut():
    text = (
        "Between 1,200 and 1,500 visitors a day came at 10:30 to see the well-known mother-of-pearl inlay of the "
        "eighteenth-century walnut case and its seven dials."
    )
    assert speech_pieces(text) == [text]  # no comma, colon or dash followed by a space: one piece


def test_a_clause_much_longer_than_the_one_before_is_joined_to_it():
    # A Pi makes speech at about half real time: a short first clause cannot cover the making of a long second one.
    text = (
        "In short, the merchant who ordered it wanted to know the time in every port his ships sailed to from "
        "Lisbon to Canton and back again."
    )
    assert speech_pieces(text) == [text]


def test_pieces_respect_the_length_limit_at_word_boundaries():
    text = " ".join(["pendulum"] * 60)
    pieces = speech_pieces(text, limit=50)
    assert all(len(p) <= 50 for p in pieces) and " ".join(pieces) == text


words = st.text(alphabet=st.characters(blacklist_categories=("Z", "C")), min_size=1, max_size=12)
gaps = st.sampled_from([" ", "  ", "\n", "\t", " \u00a0"])
punctuation = st.sampled_from(["", "", "", ",", ";", ":", ".", "!", "?", " —", " –", " -", "…", '."'])


@st.composite
def texts(draw) -> str:
    out = []
    for _ in range(draw(st.integers(1, 80))):
        out += [draw(words), draw(punctuation), draw(gaps)]
    return "".join(out)


@settings(max_examples=400, deadline=None)
@given(text=texts(), limit=st.integers(20, 300))
def test_pieces_rejoin_to_the_text_and_never_cut_a_word(text, limit):
    pieces = speech_pieces(text, limit)
    assert " ".join(pieces) == " ".join(text.split())  # nothing lost, added or reordered
    assert all(p and p == p.strip() for p in pieces)
    # Never inside a word: every piece boundary is a whitespace boundary of the original text.
    tokens = text.split()
    cut_at, count = set(), 0
    for piece in pieces[:-1]:
        count += len(piece.split())
        cut_at.add(count)
    assert all(0 < c < len(tokens) for c in cut_at)
    assert all(len(p) <= limit or len(p.split()) == 1 for p in pieces)  # only a single longer word exceeds it


inner = st.sampled_from(["", "", ",", ";", ":", " —"])


@settings(max_examples=200, deadline=None)
@given(
    sentence=st.lists(
        st.tuples(words.filter(lambda w: not set(w) & set(".!?…。！？")), inner),
        min_size=1,
        max_size=SHORT_SENTENCE_WORDS,
    )
)
def test_short_sentences_are_never_cut(sentence):
    text = " ".join(word + mark for word, mark in sentence) + "."
    assume(len(text.split()) <= SHORT_SENTENCE_WORDS)  # a spaced dash counts as a word
    assert speech_pieces(text) == [" ".join(text.split())]


def test_clauses_of_a_word_or_two_do_not_stand_alone():
    for piece in speech_pieces(LION):
        assert len(piece.split()) >= MIN_CLAUSE_WORDS
