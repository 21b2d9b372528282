"""Where a local voice's pieces may be cut: at clauses, before connecting words, never inside a name or a number."""

from __future__ import annotations

from kiosk.speech.text import CLAUSE_CUT, WORD_CUT, cut_points

LION = (
    "Carved from a single block of white marble in 1821, this sleeping lion once guarded the gate of a banker's "
    "house in Lucerne, and it was slowly carried over the mountains by boat, by cart and at last by hand."
)


def cuts_in(text: str, language: str | None = "en") -> list[str]:
    """The text with a | at every cut, clause cuts as ||."""
    words = text.split()
    cuts = cut_points(words, language)
    marks = {CLAUSE_CUT: " ||", WORD_CUT: " |"}
    return " ".join(word + marks.get(cuts.get(i + 1), "") for i, word in enumerate(words))


def test_clause_cuts_come_after_commas_semicolons_colons_and_spaced_dashes():
    text = "In 2004 they cleaned it; two pivots: worn — and replaced, by hand."
    assert cuts_in(text, None) == "In 2004 they cleaned it; || two pivots: || worn — || and replaced, || by hand."


def test_word_cuts_come_before_prepositions_conjunctions_relative_pronouns_and_articles():
    text = "Look closely at the quartz whose crystals grew until a miner broke it open."
    assert cuts_in(text) == "Look closely | at the quartz | whose crystals grew | until a miner broke it open."


def test_the_lion_is_cut_at_its_commas_and_before_its_prepositions():
    assert cuts_in(LION) == (
        "Carved | from a single block | of white marble | in 1821, || this sleeping lion once guarded | the gate | "
        "of a banker's house | in Lucerne, || and it was slowly carried | over the mountains | by boat, || "
        "by cart | and at last | by hand."
    )


def test_no_cut_inside_a_name():
    assert cuts_in("A note from the Bank of England and the Museum of London") == (
        "A note | from the Bank of England | and the Museum of London"
    )


def test_no_cut_inside_a_number_said_in_words_or_digits():
    text = "It weighed one hundred and twenty kilos, then 3.5 tonnes and 1,821 grams in nineteen twenty one."
    assert cuts_in(text) == (
        "It weighed one hundred and twenty kilos, || then 3.5 tonnes | and 1,821 grams | in nineteen twenty one."
    )


def test_parentheses_are_clauses():
    text = "The writing boy (built in 1774) still writes."
    assert cuts_in(text, None) == "The writing boy || (built in 1774) || still writes."


def test_a_language_without_a_word_list_is_cut_at_clauses_only():
    text = "Look closely at the quartz, whose crystals grew until a miner broke it open."
    assert cuts_in(text, "sv") == "Look closely at the quartz, || whose crystals grew until a miner broke it open."
    assert cuts_in("Der Löwe wurde aus einem Block gehauen, der aus Carrara kam.", "de-de") == (
        "Der Löwe wurde | aus einem Block gehauen, || der aus Carrara kam."
    )


def test_no_cut_inside_a_range():
    text = "Built between 1732 and 1738, used from 1851 to 1914 and then between two wars and a flood."
    assert cuts_in(text) == (
        "Built | between 1732 and 1738, || used | from 1851 to 1914 | and then | between two wars | and a flood."
    )
