"""Text for the engines: request-sized pieces cut at sentence boundaries, and the most audio a line can need."""

from __future__ import annotations

import re
import unicodedata

_SENTENCE_END = re.compile(r"(?<=[.!?…。！？])[\"'”’)\]]*\s+")
_SOFT_BREAK = re.compile(r"[,;:—–]\s+|\s+")


def split_text(text: str, limit: int) -> list[str]:
    """Pieces of at most `limit` characters, cut after sentences where possible, else at commas or spaces."""
    text = text.strip()
    pieces: list[str] = []
    current = ""
    for sentence in _sentences(text):
        for part in _fit(sentence, limit):
            joined = f"{current} {part}" if current else part
            if len(joined) <= limit:
                current = joined
            else:
                pieces.append(current)
                current = part
    if current:
        pieces.append(current)
    return pieces


def _sentences(text: str) -> list[str]:
    parts, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        parts.append(text[start : match.end()].strip())
        start = match.end()
    parts.append(text[start:].strip())
    return [p for p in parts if p]


def _fit(sentence: str, limit: int) -> list[str]:
    """A sentence longer than the limit is cut at the last comma or space that fits (a hard cut if none)."""
    parts = []
    while len(sentence) > limit:
        cut = max((m.end() for m in _SOFT_BREAK.finditer(sentence, 0, limit) if m.end() <= limit), default=limit)
        parts.append(sentence[:cut].strip())
        sentence = sentence[cut:].strip()
    parts.append(sentence)
    return parts


# --- where a local voice's pieces may be cut -----------------------------------------------------------------------
#
# A local voice (Piper) needs a piece's whole text before its first audio, so kiosk.speech.pace decides how long
# each piece may be, and these are the places it may choose from, between two words of a sentence. A clause cut
# (after a comma, semicolon or colon, a dash standing between spaces, or around a parenthesis) is where a speaker
# pauses anyway. A word cut comes before a preposition, conjunction, relative pronoun or article ("... in a pocket
# of hot water | until a miner broke it open"), where a phrase begins and a speaker may take a breath, but not
# straight after another such word ("of | the" is no phrase); it is offered only in languages with a word list, and
# never inside a name ("Bank of England", "Santa Maria"), a number ("one hundred and twenty") or a range ("between
# 1851 and 1914"). A year or a name ends a phrase too ("Between 1851 and 1914 | more than 2,000 engines", "the Bank
# of England | issued this note").

CLAUSE_CUT = 2
WORD_CUT = 1
_CLAUSE_MARK = re.compile(r"[,;:][\"'”’)\]]*$")
_DASHES = {"—", "–", "-", "--"}
_CONNECTORS = {
    "en": (
        "about above across after against along among around at before behind below beneath beside between beyond "
        "by in on despite during except for from inside into like near of off onto outside over past since through "
        "throughout till to toward towards under underneath until unlike upon via with within without and but or "
        "nor yet so because although though while whereas unless whether where when whose which who whom that "
        "the a an this these those its his her their our your"
    ),
    "de": (
        "an auf aus bei bis durch für gegen hinter in mit nach neben ohne seit über um unter von vor während wegen "
        "zu zwischen und aber oder sondern denn weil obwohl wenn als dass ob damit deren dessen welche welcher "
        "welches wo der die das den dem des ein eine einen einem einer"
    ),
    "fr": (
        "à après avant avec chez contre dans depuis derrière devant durant en entre malgré par parmi pendant pour sans "
        "selon sous sur vers et mais ou donc car puisque lorsque quand comme parce que qui dont où lequel "
        "laquelle lesquels lesquelles le la les un une des ce cette ces"
    ),
}
CONNECTORS = {lang: frozenset(words.split()) for lang, words in _CONNECTORS.items()}
_AND = {"and", "und", "et"}
# "between 1732 and 1738", "from 1851 to 1914": a range is said in one breath.
_RANGE_STARTS = {"between", "from", "zwischen", "von", "entre", "de"}
_RANGE_LINKS = {"and", "to", "und", "bis", "et", "à"}
# Where every noun is capitalised, a capital says nothing about a name ending.
_NOUNS_CAPITALISED = {"de"}
_NUMBER_WORD_LIST = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand million "
    "billion oh"
)
_NUMBER_WORDS = frozenset(_NUMBER_WORD_LIST.split())
_DIGIT = re.compile(r"\d")
_YEAR = re.compile(r"1\d{3}$|20\d{2}$")


def sentences(text: str) -> list[str]:
    """The text's sentences, each stripped, none empty."""
    return _sentences(text.strip())


def ends_sentence(piece: str) -> bool:
    """Whether a piece ends its sentence (else the text goes on after a cut)."""
    return bool(_SENTENCE_END.search(piece + " "))


def ends_clause(piece: str) -> bool:
    """Whether a piece ends where a speaker pauses anyway (a clause cut)."""
    last = piece.split()[-1] if piece.split() else ""
    return bool(_CLAUSE_MARK.search(last)) or last in _DASHES or last.endswith(")")


def cut_points(words: list[str], language: str | None = None) -> dict[int, int]:
    """Where a sentence (its words) may be cut: {number of words before the cut: CLAUSE_CUT or WORD_CUT}.

    `language`: a code such as "en" or "en-us"; one with no word list gets clause cuts only.
    """
    code = (language or "").lower()[:2]
    connectors = CONNECTORS.get(code, frozenset())
    names = code not in _NOUNS_CAPITALISED
    cuts = {}
    for i in range(1, len(words)):
        before, after = words[i - 1], words[i]
        if _CLAUSE_MARK.search(before) or before in _DASHES or after.startswith("(") or before.endswith(")"):
            cuts[i] = CLAUSE_CUT
        elif _word_cut(words, i, connectors, names):
            cuts[i] = WORD_CUT
    return cuts


def _word_cut(words: list[str], i: int, connectors: frozenset[str], names: bool) -> bool:
    """Before a connecting word, unless it follows another ("and | at last"); or after a year or a name that ends a
    phrase ("Between 1851 and 1914 | more than", "the Bank of England | issued"); never inside a name or a number."""
    before, after = words[i - 1], words[i]
    if not connectors or not after[:1].islower() or _inside_name_or_number(words, i):
        return False
    if _bare(after) in connectors:
        return _bare(before) not in connectors
    ends_name = names and before[:1].isupper() and i > 1
    return (ends_name or bool(_YEAR.match(before))) and not _is_number(after)


def _bare(word: str) -> str:
    return word.strip("\"'“”‘’()[]").lower()


def _inside_name_or_number(words: list[str], i: int) -> bool:
    """A cut before words[i] would split "Bank of England", "one hundred and twenty" or "between 1732 and 1738"."""
    following = words[i + 1] if i + 1 < len(words) else ""
    if words[i - 1][:1].isupper() and following[:1].isupper():
        return True
    if i > 1 and _bare(words[i - 2]) in _RANGE_STARTS and _bare(words[i]) in _RANGE_LINKS:
        return _is_number(words[i - 1]) and _is_number(following)
    # Only numbers said in words run on across "and"; "1851 and 1914" are two numbers.
    return _bare(words[i]) in _AND and _is_number_word(words[i - 1]) and _is_number_word(following)


def _is_number_word(word: str) -> bool:
    return _bare(word).rstrip(".,;:") in _NUMBER_WORDS


def _is_number(word: str) -> bool:
    return bool(_DIGIT.search(word)) or _bare(word).rstrip(".,;:") in _NUMBER_WORDS


# --- how much audio a line can need --------------------------------------------------------------------------------
#
# An engine that keeps sending audio long after its text is said (a model that loops or babbles, silence without
# end, a server that never closes the stream) is cut at a bound far above any real reading, and treated as a fault.
# Speech runs at 60-70 ms a character at speed 1; digits and abbreviations said in full run to about 0.3 s a character
# ("1889": "eighteen eighty-nine"), but only for a few characters of a line. Ideographs, kana and hangul are each a
# syllable or more, so such a character counts as three.

#: Seconds of audio per character that no reading at speed 1 exceeds (about 3.5 times ordinary speech).
MAX_AUDIO_S_PER_CHAR = 0.25
#: Added to every line, for short ones ("Hi.") and a voice's pauses at the start and the end.
MAX_AUDIO_SLACK_S = 5.0
_WIDE_CHAR_WEIGHT = 3


def max_audio_s(text: str, speed: float = 1.0) -> float:
    """The most audio any voice can need to say `text` at `speed` (slower speech needs more, faster never less)."""
    chars = sum(_WIDE_CHAR_WEIGHT if unicodedata.east_asian_width(c) in "WF" else 1 for c in text.strip())
    return (chars * MAX_AUDIO_S_PER_CHAR + MAX_AUDIO_SLACK_S) / min(1.0, speed)
