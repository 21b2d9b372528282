"""When each word of a line is said: from the text alone, and better from the line's audio.

Neither OpenAI's speech API nor the local voice says when a word is spoken, so the time is worked out here:

1. The text is split into words (each keeps the spaces after it, so the words joined are the text again; Chinese and
   Japanese characters are a word each) and sentences.
2. Each word is weighed by its letters (three to a syllable; a digit, read out as a word, counts more), with a pause
   after a comma or a sentence's end weighing as much as one or two syllables.
3. The audio is searched for its pauses (10 ms windows quieter than 30 dB under the line's loud parts, for 80 ms or
   more) and for where speech begins and ends.
4. Pauses are matched to the boundaries between words, longest pause first: each to the boundary that the weights
   expect nearest to it, within the stretch between pauses matched already, preferring a boundary after
   punctuation. A matched pause fixes when the word after it starts. Between fixed points words share the time by
   their weights.

A line of N seconds' words thus never drifts by more than its longest unbroken phrase; what matching a pause cannot
correct is how time is shared inside one phrase. `bench/captions.py` measures the error against known word times.
Computed when a line is cached (kiosk.cache) and kept in its entry, so a cached line is captioned as a new one is.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from kiosk.pcm import AudioFormat

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
#: A word with the spaces after it; a Chinese or Japanese character, with any punctuation after it, is one word.
_WORD = re.compile(rf"(?:[{_CJK}]|[^\s{_CJK}]+)[^\w\s]*\s*|\s+")
_SENTENCE_END = re.compile(r"[.!?。！？…]+[\"'”’»)\]]*\s*$")
_CLAUSE_END = re.compile(r"[,;:，；：、—–]+[\"'”’»)\]]*\s*$")
#: Weights of the pause after a clause or a sentence, in syllables.
CLAUSE_PAUSE = 1.0
SENTENCE_PAUSE = 2.0

WINDOW_S = 0.010
SILENCE_DB = 30.0  # a window this far under the line's loud windows is silent
MIN_PAUSE_S = 0.080
#: The shortest pause taken as the gap after a sentence, after a clause, and between words no punctuation marks.
MIN_SENTENCE_PAUSE_S = 0.150
MIN_CLAUSE_PAUSE_S = 0.120
MIN_PLAIN_PAUSE_S = 0.150
#: How far from where the weights put it a boundary may be matched to a pause, as a share of the stretch.
REACH_AFTER_PUNCTUATION = 0.35
REACH_PLAIN = 0.12
#: Matching pauses is skipped for lines longer than this (their words share time by weight alone).
MAX_MATCHED_WORDS = 600


@dataclass(frozen=True)
class Word:
    text: str  # as written, with the spaces after it
    start_ms: int  # from the line's first sample
    sentence: int  # which sentence of the line it is in, from 0

    def as_json(self) -> list:
        return [self.text, self.start_ms, self.sentence]


def split_words(text: str) -> list[tuple[str, int]]:
    """(word, sentence index) for each word of `text`; leading spaces are dropped."""
    words: list[tuple[str, int]] = []
    sentence = 0
    for match in _WORD.finditer(text.lstrip()):
        token = match.group()
        if not token.strip():
            continue
        words.append((token, sentence))
        if _SENTENCE_END.search(token):
            sentence += 1
    return words


def weight(word: str) -> float:
    """How long a word takes to say, in units of about a syllable: its letters (three to a syllable, which follows how
    long voices take far better than counting vowel groups: measured in bench/captions.py), a digit as a whole word,
    a Chinese or Japanese character as one."""
    core = word.strip()
    if re.fullmatch(rf"[{_CJK}][^\w\s]*", core):
        return 1.0
    letters = sum(c.isalpha() for c in core)
    digits = sum(c.isdigit() for c in core)
    return max(1.0, letters / 3 + 1.3 * digits)


def _pause_after(word: str) -> float:
    if _SENTENCE_END.search(word):
        return SENTENCE_PAUSE
    return CLAUSE_PAUSE if _CLAUSE_END.search(word) else 0.0


def estimate(text: str, duration_s: float) -> list[Word]:
    """Word start times for `text` said in `duration_s`, by weight alone (before its audio is known)."""
    words = split_words(text)
    weights = [weight(w) for w, _ in words]
    pauses = [_pause_after(w) for w, _ in words]
    starts = _share(weights, pauses, 0.0, duration_s, anchors={})
    return [Word(w, round(1000 * s), n) for (w, n), s in zip(words, starts, strict=True)]


def align(text: str, pcm: bytes, fmt: AudioFormat, s_per_unit: float | None = None) -> list[Word]:
    """Word start times for `text` as said in `pcm` (mono 16-bit; any other format is timed by weight alone).

    With `s_per_unit` (how fast the voice speaks, see Pace), `pcm` is only the start of the line: the words follow
    at that pace from where speech begins. Pauses are not matched then: a line's first pauses, with its end unknown,
    were matched to the wrong punctuation often enough to mark words seconds early (bench/captions.py)."""
    words = split_words(text)
    if not words:
        return []
    pcm = pcm[: len(pcm) - len(pcm) % fmt.frame_bytes]
    duration_s = len(pcm) / fmt.frame_bytes / fmt.rate
    weights = [weight(w) for w, _ in words]
    after = [_pause_after(w) for w, _ in words]
    paced_s = None if s_per_unit is None else s_per_unit * (sum(weights) + sum(after[:-1]))
    if fmt.sample_width != 2 or fmt.channels != 1 or not pcm:
        return estimate(text, paced_s or duration_s)
    silent = _silent(_levels(pcm, fmt.rate))
    voiced = [i for i, quiet in enumerate(silent) if not quiet]
    if not voiced:
        return estimate(text, paced_s or duration_s)
    begin, end = voiced[0] * WINDOW_S, min(duration_s, (voiced[-1] + 1) * WINDOW_S)
    if paced_s is not None:
        end = max(end, begin + paced_s)
    anchors: dict[int, tuple[float, float]] = {}
    if len(words) <= MAX_MATCHED_WORDS and s_per_unit is None:
        anchors = _match_pauses(_pauses(silent, voiced[0], voiced[-1]), weights, after, begin, end)
    starts = _share(weights, after, begin, end, anchors, s_per_unit)
    return [Word(w, round(1000 * s), n) for (w, n), s in zip(words, starts, strict=True)]


def _levels(pcm: bytes, rate: int) -> list[int]:
    """Peak-to-peak level of each 10 ms window (C-speed max/min over slices of the samples)."""
    samples = memoryview(pcm[: len(pcm) - len(pcm) % 2]).cast("h")
    if sys.byteorder == "big":  # s16le on a big-endian machine: swap once (never on a Pi)
        import array

        swapped = array.array("h", samples)
        swapped.byteswap()
        samples = memoryview(swapped)
    n = max(1, round(rate * WINDOW_S))
    return [max(samples[i : i + n]) - min(samples[i : i + n]) for i in range(0, len(samples), n)]


def _silent(levels: list[int]) -> list[bool]:
    loud = sorted(levels)[int(0.9 * (len(levels) - 1))]  # the line's loud parts: its 90th percentile window
    threshold = max(64, loud * 10 ** (-SILENCE_DB / 20))
    return [level < threshold for level in levels]


def _pauses(silent: list[bool], first: int, last: int) -> list[tuple[float, float]]:
    """(start, end) in seconds of each run of silent windows between speech, at least MIN_PAUSE_S long."""
    pauses, run_start = [], None
    for i in range(first, last + 1):
        if silent[i] and run_start is None:
            run_start = i
        elif not silent[i] and run_start is not None:
            if (i - run_start) * WINDOW_S >= MIN_PAUSE_S:
                pauses.append((run_start * WINDOW_S, i * WINDOW_S))
            run_start = None
    return pauses


def _match_pauses(
    pauses: list[tuple[float, float]], weights: list[float], after: list[float], begin: float, end: float
) -> dict[int, tuple[float, float]]:
    """Boundary index i (between word i and i + 1) → the pause found there (word i ends at its start, word i + 1
    starts at its end)."""
    anchors: dict[int, tuple[float, float]] = {}
    for pause in sorted(pauses, key=lambda p: p[0] - p[1]):  # longest first
        boundary = _nearest_boundary(pause, weights, after, anchors, begin, end)
        if boundary is not None:
            anchors[boundary] = pause
    return anchors


def _nearest_boundary(
    pause: tuple[float, float],
    weights: list[float],
    after: list[float],
    anchors: dict[int, tuple[float, float]],
    begin: float,
    end: float,
) -> int | None:
    start, stop = pause
    # The stretch between the pauses matched already around this one: its first and last word, and its times.
    lo_word, lo_time = 0, begin
    hi_word, hi_time = len(weights), end
    for boundary, (other_start, other_stop) in anchors.items():
        if other_stop <= start and boundary + 1 > lo_word:
            lo_word, lo_time = boundary + 1, other_stop
        if other_start >= stop and boundary + 1 < hi_word:
            hi_word, hi_time = boundary + 1, other_start
    if hi_word - lo_word < 2 or hi_time <= lo_time:
        return None
    span = hi_time - lo_time
    total = sum(weights[lo_word:hi_word]) + sum(after[lo_word : hi_word - 1])
    middle = (start + stop) / 2
    best, best_cost = None, None
    passed = 0.0
    for i in range(lo_word, hi_word - 1):
        passed += weights[i] + after[i] / 2
        expected = lo_time + span * passed / total
        passed += after[i] / 2
        distance = abs(expected - middle) / span
        reach = REACH_AFTER_PUNCTUATION if after[i] else REACH_PLAIN
        if distance > reach or stop - start < _shortest_pause(after[i]):
            continue
        cost = distance - (0.1 if after[i] else 0.0)
        if best_cost is None or cost < best_cost:
            best, best_cost = i, cost
    return best


def _shortest_pause(pause_weight: float) -> float:
    if pause_weight >= SENTENCE_PAUSE:
        return MIN_SENTENCE_PAUSE_S
    return MIN_CLAUSE_PAUSE_S if pause_weight else MIN_PLAIN_PAUSE_S


def _share(
    weights: Sequence[float],
    after: Sequence[float],
    begin: float,
    end: float,
    anchors: dict[int, tuple[float, float]],
    s_per_unit: float | None = None,
) -> list[float]:
    """Start times: fixed after each pause found, and in each stretch of speech between them shared by weight (a
    word's weight, then the pause after it, except after the stretch's last word, whose pause was found). With
    `s_per_unit`, the last stretch is not yet heard whole: its words follow at that pace instead."""
    stretches = []  # (first word, start time, end time)
    first, at = 0, begin
    for boundary in sorted(anchors):
        pause_start, pause_stop = anchors[boundary]
        stretches.append((first, boundary + 1, at, pause_start))
        first, at = boundary + 1, pause_stop
    last_end = end
    if s_per_unit is not None:
        last_end = at + s_per_unit * (sum(weights[first:]) + sum(after[first:-1]))
    stretches.append((first, len(weights), at, last_end))
    starts = [0.0] * len(weights)
    for a, b, t0, t1 in stretches:
        units = [weights[i] + (after[i] if i < b - 1 else 0.0) for i in range(a, b)]
        total = sum(units) or 1.0
        t = t0
        for i, unit in zip(range(a, b), units, strict=True):
            starts[i] = t
            t += (t1 - t0) * unit / total
    return starts


class Pace:
    """How fast each voice speaks, and how long its silence before the first word is, learned from the lines it has
    said: the first guess at a streamed line's word times, until its audio is in, is only as good as these."""

    DEFAULT_S_PER_UNIT = 0.22  # seconds per unit of weight (about a syllable; pauses count too): an unhurried guide
    DEFAULT_LEAD_S = 0.1
    LEARNING_RATE = 0.3

    def __init__(self) -> None:
        self._s_per_unit: dict[str, float] = {}
        self._lead_s: dict[str, float] = {}

    def guess(self, voice: str, text: str, speed: float = 1.0) -> list[Word]:
        """When each word of `text` is likely to start, said by `voice` at `speed`."""
        lead = self._lead_s.get(voice, self.DEFAULT_LEAD_S)
        words = estimate(text, self.duration_s(voice, text, speed))
        return [Word(w.text, w.start_ms + round(1000 * lead), w.sentence) for w in words]

    def duration_s(self, voice: str, text: str, speed: float = 1.0) -> float:
        """How long `voice` is likely to take to say `text` at `speed` (from its first word on)."""
        return self.s_per_unit(voice, speed) * _units(text)

    def s_per_unit(self, voice: str, speed: float = 1.0) -> float:
        return self._s_per_unit.get(voice, self.DEFAULT_S_PER_UNIT) / speed

    def learn(self, voice: str, text: str, duration_s: float, speed: float = 1.0, lead_s: float = 0.0) -> None:
        """`voice` took `duration_s` to say `text` at `speed`, the first `lead_s` of it silent."""
        units = _units(text)
        if units <= 0 or not 0 <= lead_s < duration_s < 3600:
            return
        self._s_per_unit[voice] = self._learned(self._s_per_unit, voice, (duration_s - lead_s) * speed / units)
        self._lead_s[voice] = self._learned(self._lead_s, voice, lead_s)

    def _learned(self, table: dict[str, float], voice: str, seen: float) -> float:
        before = table.get(voice)
        return seen if before is None else before + self.LEARNING_RATE * (seen - before)


def _units(text: str) -> float:
    return sum(weight(w) + _pause_after(w) for w, _ in split_words(text))
