"""The local voice's pieces, planned from its pace: quick first audio, no gap, whole sentences where time allows."""

from __future__ import annotations

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from kiosk.speech.pace import (
    FIRST_PIECE_S,
    MAX_PIECE_CHARS,
    MIN_STRETCH_S,
    VoicePace,
    budget_s,
    next_piece,
    pieces,
    plan_pieces,
    spoken_chars,
)
from kiosk.speech.text import CLAUSE_CUT, cut_points, sentences

LION = (
    "Carved from a single block of white marble in 1821, this sleeping lion once guarded the gate of a banker's "
    "house in Lucerne, and it was slowly carried over the mountains by boat, by cart and at last by hand."
)
QUARTZ = (
    "Look closely at the quartz in the center case, whose crystals grew slowly over millions of years in a pocket "
    "of hot water deep underground until a miner broke it open in nineteen twenty one."
)
ORGAN = (
    "The great organ (built between 1732 and 1738 by the brothers Silbermann) has 3,600 pipes, and it is still "
    "played every Sunday at eleven for anyone who wishes to listen."
)
FULL_SPEED, PI4 = 0.07, 0.36  # real-time factors measured here and published for a Pi 4


CONTEXT_S = 12 * 256 / 22_050  # the bundled voice streams with 12 frames of context on each side of a stretch


#: The bundled voice's pace as it measured itself on this machine (decoder, text part, cost of a run).
HERE = VoicePace(rtf=0.028, text_s_per_char=0.0005, run_s=0.009, context_s=CONTEXT_S)


def plan(text: str, rtf: float) -> list[str]:
    """The pieces for a voice that makes each piece in one run (a voice whose model cannot be split)."""
    return plan_pieces(text, VoicePace(rtf=rtf), language="en")


def streaming(rtf: float) -> VoicePace:
    """A streaming voice's pace: its text part per character about a fortieth of its decoder's real-time factor,
    as measured."""
    return VoicePace(rtf=rtf, text_s_per_char=rtf / 40, context_s=CONTEXT_S)


def predicted_gaps(planned: list[str], pace: VoicePace) -> list[float]:
    """Seconds of silence before each piece when the voice keeps exactly to `pace`."""
    ahead, gaps = 0.0, []
    for number, piece in enumerate(planned):
        made_in = pace.make_s(spoken_chars(piece))
        if number:
            gaps.append(max(0.0, made_in - ahead))
        ahead = max(0.0, ahead - made_in) + pace.audio_s(spoken_chars(piece))
    return gaps


def test_a_fast_voice_says_each_sentence_whole():
    for text in (QUARTZ, ORGAN, "Welcome to the hall of minerals. Thank you, and mind the step, please."):
        assert plan(text, 0.001) == sentences(text)


def test_the_first_piece_is_short_and_the_rest_grows():
    at_a_pi = plan(QUARTZ, PI4)
    # "Look closely" alone would be said before "at the quartz" could be made: the first piece leaves room for the next.
    assert at_a_pi[:2] == ["Look closely at the quartz", "in the center case,"]
    assert max(map(len, at_a_pi)) > 1.5 * len(at_a_pi[0])  # the queue has grown: later pieces are longer
    assert plan(QUARTZ, FULL_SPEED) == [
        "Look closely at the quartz",
        "in the center case,",
        "whose crystals grew slowly over millions of years in a pocket of hot water deep underground until a miner "
        "broke it open in nineteen twenty one.",
    ]


def test_a_clause_that_fits_is_preferred_to_a_longer_word_cut():
    def within(budget: float):
        return lambda chars: chars / 1000 <= budget  # a millisecond a character

    words = LION.split()[:30]  # "Carved from ... in 1821, | this sleeping lion ... in Lucerne, | and it was"
    cuts = cut_points(words, "en")
    clause, longest = 10, max(n for n in cuts if n < 28)
    assert cuts[clause] == CLAUSE_CUT and longest > clause
    assert next_piece(words, cuts, within(0.1)) == clause  # the clause fits: " 1821,"
    # With no clause that fits, the longest word cut that does: "Carved from a single block of white marble".
    assert next_piece(words, cuts, within(0.045)) == 8


def test_a_pi_starts_with_the_shortest_piece_and_a_fast_machine_with_more():
    assert plan(LION, PI4)[0] == "Carved from a single block"  # nothing shorter stands on its own
    assert VoicePace(rtf=FULL_SPEED).make_s(spoken_chars(plan(LION, FULL_SPEED)[0])) <= FIRST_PIECE_S


def test_a_slow_voice_cuts_more():
    """Slower than a fast machine, a sentence is cut; how often is not monotonic in the pace: slower still, the first
    piece grows again so that what follows it can be made in time."""
    for text in (LION, QUARTZ, ORGAN):
        for planner in (plan, lambda text, rtf: plan_pieces(text, streaming(rtf), language="en")):
            assert len(planner(text, 0.001)) == 1
            assert all(len(planner(text, rtf)) > 1 for rtf in (FULL_SPEED, PI4, 0.6))


def test_no_gap_is_planned_at_a_pi_or_here():
    for rtf in (FULL_SPEED, PI4):
        for text in (LION, QUARTZ, ORGAN):
            assert predicted_gaps(plan(text, rtf), VoicePace(rtf=rtf)) == [0.0] * (len(plan(text, rtf)) - 1)


def test_queued_audio_lets_a_whole_sentence_through():
    pace = VoicePace(rtf=PI4)
    assert list(pieces(QUARTZ, pace, lambda: 30.0, language="en")) == [QUARTZ]
    assert budget_s(0.0) == FIRST_PIECE_S
    assert budget_s(0.1) == 0.0 < budget_s(1.0) < 0.4  # a short queue is kept for what does not shrink with it


def test_a_streaming_voice_keeps_whole_what_fits_and_starts_short_at_a_pi():
    for text in (LION, QUARTZ, ORGAN):
        assert plan_pieces(text, streaming(0.001), language="en") == [text]
        assert plan_pieces(text, HERE, language="en") == [text]
    at_a_pi = plan_pieces(QUARTZ, streaming(PI4), language="en")
    assert at_a_pi[:2] == ["Look closely at the quartz", "in the center case,"]
    assert " ".join(at_a_pi) == QUARTZ and max(map(len, at_a_pi)) > 2 * len(at_a_pi[0])  # later pieces grow


def test_a_streaming_voice_plans_each_pieces_first_audio_before_the_queue_runs_out():
    for rtf in (FULL_SPEED, PI4, 0.6):
        pace = streaming(rtf)
        for text in (LION, QUARTZ, ORGAN):
            ahead = 0.0
            for number, piece in enumerate(plan_pieces(text, pace, language="en")):
                chars = spoken_chars(piece)
                if number:
                    assert pace.first_audio_s(chars, ahead_s=ahead) < ahead, (rtf, piece)
                ahead = pace.queue_after_s(chars, ahead_s=ahead)


def test_a_first_piece_leaves_room_for_the_next():
    """At a Pi's pace as measured in a CPU share, the shortest first phrase would be said before the next piece
    could be made; the first piece is the shortest after which the next one starts within its budget."""
    share = VoicePace(rtf=0.2, audio_s_per_char=0.065, text_s_per_char=0.0056, context_s=CONTEXT_S, run_s=0.05)
    loom = "The loom on your left could weave a metre of silk in an hour, while the hand loom beside it needed a day."
    planned = plan_pieces(loom, share, language="en")
    assert planned[0] == "The loom on your left could weave"  # not "The loom": 0.6 s of audio
    # Nor "Visitors" (0.5 s): the next piece would be planned within 40 % of a queue too short for the fixed delays.
    measured = VoicePace(rtf=0.21, audio_s_per_char=0.062, text_s_per_char=0.0033, context_s=CONTEXT_S, run_s=0.03)
    steps = "Visitors who climb the 312 steps of the tower on a clear day can see three countries."
    assert plan_pieces(steps, measured, language="en")[0] == "Visitors who climb"
    for text in (LION, QUARTZ, ORGAN, loom):
        ahead = 0.0
        for number, piece in enumerate(plan_pieces(text, share, language="en")):
            chars = spoken_chars(piece)
            if number:
                assert share.first_audio_s(chars, ahead_s=ahead) <= budget_s(ahead), piece
            ahead = share.queue_after_s(chars, ahead_s=ahead)


def test_a_lines_first_stretch_is_enough_for_the_queue_to_grow_from_there():
    """Each stretch is made with context that is not heard; from the first stretch on, every stretch made in
    AHEAD_SHARE of the queue leaves more queued than before, here, at a Pi's pace and slower still."""
    for rtf in (FULL_SPEED, PI4, 0.5):
        pace = streaming(rtf)
        pace.run_s = rtf / 7  # every run costs this much whatever its size: 50 ms at a Pi's pace
        ahead = pace.stretch_s(0.0)
        assert ahead <= 1.5
        for _ in range(12):
            stretch = max(MIN_STRETCH_S, pace.stretch_s(ahead))
            made_in = pace.run_s + rtf * (stretch + 2 * CONTEXT_S)
            assert made_in < ahead, (rtf, ahead)
            ahead, before = ahead - made_in + stretch, ahead
            assert ahead > before
    pi = streaming(PI4)  # the first audio waits for the text part and one stretch, not for the sentence
    assert pi.first_audio_s(200) - 200 * pi.text_s_per_char < 0.45 < pi.make_s(200) / 3


def test_the_pace_follows_what_it_measures():
    pace = VoicePace(rtf=0.4, audio_s_per_char=0.05)
    for _ in range(20):
        pace.note(chars=100, audio_s=6.0, make_s=0.6)
    assert abs(pace.rtf - 0.1) < 0.01 and abs(pace.audio_s_per_char - 0.06) < 0.001
    pace.note(chars=0, audio_s=0.0, make_s=0.1)  # nothing made: nothing learnt
    assert abs(pace.rtf - 0.1) < 0.01


# --- properties ----------------------------------------------------------------------------------------------------

NAMES = ["Santa Maria", "Bank of England", "Museum of Natural History", "Abraham Ortelius", "New York"]
NUMBERS = ["1,821", "3.5", "nineteen twenty one", "one hundred and twenty", "two thousand and ten", "1821"]
FILLER_WORDS = (
    "the a lion stone was carved and in of at by with until which whose who while after gold case slowly "
    "long old water, boat, — (rare) cart; years: found"
)
FILLER = FILLER_WORDS.split()

words = st.text(alphabet=st.characters(blacklist_categories=("Z", "C")), min_size=1, max_size=12)
gaps = st.sampled_from([" ", "  ", "\n", "\t", " \u00a0"])
punctuation = st.sampled_from(["", "", "", ",", ";", ":", ".", "!", "?", " —", " –", " -", "…", '."'])
rtfs = st.floats(0.0005, 2.0)


@st.composite
def texts(draw) -> str:
    out = []
    for _ in range(draw(st.integers(1, 80))):
        out += [draw(words | st.sampled_from(FILLER)), draw(punctuation), draw(gaps)]
    return "".join(out)


def cut_positions(planned: list[str]) -> set[int]:
    """Word counts before each cut between pieces."""
    cuts, count = set(), 0
    for piece in planned[:-1]:
        count += len(piece.split())
        cuts.add(count)
    return cuts


@settings(max_examples=300, deadline=None)
@given(text=texts(), rtf=rtfs, language=st.sampled_from(["en", "de", "fr", None]))
def test_pieces_rejoin_to_the_text_and_never_cut_a_word(text, rtf, language):
    planned = plan_pieces(text, VoicePace(rtf=rtf), language=language)
    assert " ".join(planned) == " ".join(text.split())  # nothing lost, added or reordered
    assert all(p and p == p.strip() for p in planned)
    assert all(0 < c < len(text.split()) for c in cut_positions(planned))  # cuts fall between whole words
    assert all(len(p) <= MAX_PIECE_CHARS or len(p.split()) == 1 for p in planned)


@st.composite
def sentences_with_names_and_numbers(draw) -> tuple[str, list[range]]:
    """A sentence and the word positions inside its names and numbers (where no cut may fall)."""
    out: list[str] = []
    inside: list[range] = []
    for _ in range(draw(st.integers(2, 14))):
        kind = draw(st.sampled_from(["filler", "filler", "name", "number"]))
        if kind == "filler":
            out.append(draw(st.sampled_from(FILLER)))
            continue
        span = draw(st.sampled_from(NAMES if kind == "name" else NUMBERS)).split()
        inside.append(range(len(out) + 1, len(out) + len(span)))
        out += span
    return " ".join(out) + ".", inside


@settings(max_examples=300, deadline=None)
@given(case=sentences_with_names_and_numbers(), rtf=rtfs)
def test_no_cut_inside_a_name_or_a_number(case, rtf):
    text, inside = case
    assume(spoken_chars(text) <= MAX_PIECE_CHARS)  # a run-on piece past the limit may be cut between any words
    cuts = cut_positions(plan(text, rtf))
    assert not any(c in span for span in inside for c in cuts), (plan(text, rtf), inside)


@settings(max_examples=200, deadline=None)
@given(text=texts(), slow=st.floats(0.3, 2.0))
def test_a_fast_voice_never_cuts_more_than_a_slow_one(text, slow):
    assert len(plan(text, 0.0005)) <= len(plan(text, slow))
