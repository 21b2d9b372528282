"""The local voice's pace on this machine, and the pieces a line is given to it in.

The bundled voice streams (kiosk.speech.piper_voice): a piece of text goes through the model's text part in one
run, then its audio is decoded stretch by stretch, so the piece's first audio waits for the text part and one
stretch. (A voice whose model cannot be split makes each piece in one run, and its first audio waits for all of
it.) Each later piece's first audio, and each later stretch, must be made before the audio queued ahead of it has
played, or the listener hears a gap. How long that takes depends on the machine (here the decoder makes a second
of speech in about 0.03 s, at a Pi 4's pace in about 0.2 s), so pieces and stretches are planned from the voice's
own measured pace, each just before it is made:

- `VoicePace` holds what a model run costs whatever its size (`run_s`), the text part per spoken character, the
  decoder per second of audio (`rtf`; for a voice that runs whole, the whole model's) and the seconds of audio per
  character, measured when the voice loads and then after every piece and stretch (an exponential moving
  average, so a machine that gets busier is noticed within a few runs). A digit counts as DIGIT_CHARS characters
  ("1851" is said "eighteen fifty-one", "1,200" "one thousand two hundred").
- The budget for the next piece's first audio: with nothing queued (a line's first piece) `FIRST_PIECE_S`;
  otherwise `PIECE_SHARE` of the seconds of audio queued ahead, the rest kept for a misjudged estimate or a busy
  moment. A stretch may use `AHEAD_SHARE` of the queue (`VoicePace.stretch_s`).
- Within a sentence, the piece is the whole rest of it if it fits the budget. Else it must also leave room: once
  it is made, the audio still queued must let the shortest piece that can follow it fit that piece's own budget
  (`VoicePace.queue_after_s`). A piece that is too short ("The loom" before "on your left could weave") is said
  before the next can be made, however quickly it starts. Of the pieces that leave room, the longest that fits and
  ends at a clause (kiosk.speech.text.cut_points: comma, semicolon, colon, dash, parenthesis); else the longest
  that fits at a word cut (before a connecting word, after a year or a name); and if none fits, the shortest that
  leaves room (the visitor waits a little longer for the first audio rather than for a gap later), else the
  shortest there is. No piece is one short word (`MIN_PIECE_CHARS`), nor leaves one behind. A piece never spans
  two sentences (the voice makes and hands on each sentence on its own anyway).

Each cut costs a little prosody: the voice ends the piece as if it were the end of an utterance (the engine trims
the silence it leaves there, kiosk.speech.piper_engine._tail_s, but the last word stays drawn out); the joins
between stretches cost none. A whole sentence sounds best, a cut at a comma is close to a speaker's own pause, a
cut before "in" or "which" is a short breath. Hence the order above: a piece is kept whole wherever the queue
allows, and a word cut is used only when no clause fits. Since the voice makes audio faster than it plays, the
queue grows with every stretch, and a sentence's later pieces come out longer and longer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from kiosk.speech.text import CLAUSE_CUT, WORD_CUT, cut_points, sentences

#: Making time allowed for a line's first piece: the visitor waits this long (plus the device's start) for audio.
FIRST_PIECE_S = 0.15
#: The share of the queued audio's seconds that the next stretch's estimated making time may use: the rest covers an
#: estimate that is short (a large stretch costs more per frame than a small one: measured at a Pi-4 share, 3.6 ms
#: a frame for 200-400 frames against 1.9 for 20) or a busy moment.
AHEAD_SHARE = 0.4
#: The same for a piece's text part and first stretch: smaller, since the text part's cost is the less certain (it
#: grows faster than the text, and a short piece costs more per character than a long one).
PIECE_SHARE = 0.4
#: Seconds of the queue no piece's budget counts on: the engine's pause after a line's first stretch, and the delay
#: before audio made reaches the player, costs that do not shrink with a short queue ("Visitors | who climb": 0.5 s
#: of speech, the next piece planned within 40 % of it, was late at a Pi-4 share).
QUEUE_RESERVE_S = 0.15
#: No piece is a single word shorter than this (in spoken characters), nor leaves one behind in its sentence: a
#: lone short word ("Carved | from a") sounds clipped, where "Visitors | who climb the 312 steps" sounds like a
#: speaker's pause.
MIN_PIECE_CHARS = 8
#: Characters a digit counts for: digits are said as words, about five letters each.
DIGIT_CHARS = 5
#: Weight of each new measurement in the moving averages.
NEW_WEIGHT = 0.3
#: A streaming voice's stretches: at least this many seconds of audio (a later piece's first stretch is this short,
#: its text part having just used part of the queue), a line's first at most the other.
MIN_STRETCH_S = 0.2
MAX_FIRST_STRETCH_S = 1.5
#: A line's first stretch holds this many times the least that lets the queue grow (see VoicePace.stretch_s).
GROWTH_MARGIN = 2.0
#: A later stretch holds at most this many times the audio queued ahead of it. On a fast machine half the queue
#: would make a stretch ten times the queue; a stretch larger than any before it costs more than its measure (its
#: buffers are new), and fewer, larger stretches save little once the context is a small part of each.
MAX_STRETCH_GROWTH = 2.0
#: A piece of more (spoken) characters is cut even where the queue allows it: the voice's memory grows with a piece.
MAX_PIECE_CHARS = 240


@dataclass
class VoicePace:
    """How fast the voice makes audio here (see the module docstring). The defaults, before anything is measured,
    are a Pi 4's: a slow machine is assumed until the warm-up says otherwise."""

    rtf: float = 0.4  # seconds of making per second of audio (a streaming voice: its decoder)
    audio_s_per_char: float = 0.055  # at length scale 1
    #: A streaming voice's text part, per spoken character (0: a voice that makes each piece in one run).
    text_s_per_char: float = 0.0
    #: Seconds of audio a streaming voice makes on each side of a stretch as context; None: it makes a piece in one
    #: run, and the piece's first audio waits for all of it.
    context_s: float | None = None
    #: Seconds every run of the model costs whatever its size (its threads waking, its buffers set up): measured by
    #: a one-word run when the voice loads, and taken off each measurement before it is divided by its size.
    run_s: float = 0.0
    #: Weight of each new measurement (1: each replaces the last, as while the voice warms up).
    weight: float = NEW_WEIGHT

    def audio_s(self, chars: int, length_scale: float = 1.0) -> float:
        return chars * self.audio_s_per_char * length_scale

    def make_s(self, chars: int, length_scale: float = 1.0) -> float:
        runs = 1 if self.context_s is None else 2  # a streaming voice: its text part and at least one stretch
        return runs * self.run_s + self.text_s_per_char * chars + self.rtf * self.audio_s(chars, length_scale)

    def first_audio_s(self, chars: int, length_scale: float = 1.0, ahead_s: float = 0.0) -> float:
        """Making time until a piece of `chars` characters has its first audio, with `ahead_s` queued: a streaming
        voice's text part and first stretch (a line's first as `stretch_s` says, a later piece's the shortest)."""
        if self.context_s is None:
            return self.make_s(chars, length_scale)
        first = min(self.audio_s(chars, length_scale), self.first_stretch_s(ahead_s))
        return 2 * self.run_s + self.text_s_per_char * chars + self.rtf * (first + self.context_s)

    def queue_after_s(self, chars: int, length_scale: float = 1.0, ahead_s: float = 0.0) -> float:
        """Seconds of audio still queued once a piece of `chars` characters, begun with `ahead_s` queued, is all
        made (a line's first piece: counted from its first audio, when the line starts playing)."""
        audio = self.audio_s(chars, length_scale)
        made = self.make_s(chars, length_scale)
        if self.context_s is not None and audio > self.first_stretch_s(ahead_s):  # a second stretch, its context
            made += self.run_s + 2 * self.rtf * self.context_s
        if ahead_s <= 0:
            return audio - (made - self.first_audio_s(chars, length_scale))
        return ahead_s + audio - made

    def first_stretch_s(self, ahead_s: float) -> float:
        """A piece's first stretch: a line's first as `stretch_s` says, a later piece's the shortest (its text part
        has just used up part of the queue)."""
        return self.stretch_s(0.0) if ahead_s <= 0 else MIN_STRETCH_S

    def stretch_s(self, ahead_s: float) -> float:
        """Seconds of audio a streaming voice's next stretch holds with `ahead_s` seconds queued ahead of it: as much
        as can be made (with its context) in AHEAD_SHARE of the queue, at most MAX_STRETCH_GROWTH times the queue (the
        voice makes at least MIN_STRETCH_S whatever this says). A line's first stretch is the least that
        lets the queue grow from there on: each stretch also costs run_s and makes 2 * context_s that are not
        heard, so the queue only grows once it holds more than
        (run_s / rtf + 2 * context_s) / (AHEAD_SHARE * (1 / rtf - 1))."""
        context = self.context_s or 0.0
        if ahead_s > 0:
            return min(MAX_STRETCH_GROWTH * ahead_s, (AHEAD_SHARE * ahead_s - self.run_s) / self.rtf - 2 * context)
        if self.rtf >= 1:
            return MAX_FIRST_STRETCH_S
        growth = (self.run_s / self.rtf + 2 * context) / (AHEAD_SHARE * (1 / self.rtf - 1))
        return min(MAX_FIRST_STRETCH_S, max(MIN_STRETCH_S, GROWTH_MARGIN * growth))

    def note(self, chars: int, audio_s: float, make_s: float, length_scale: float = 1.0):
        """One piece of `chars` characters gave `audio_s` seconds of audio in `make_s` seconds."""
        self.note_rtf(audio_s, make_s)
        self.note_length(chars, audio_s, length_scale)

    def note_rtf(self, audio_s: float, make_s: float) -> None:
        """`audio_s` seconds of audio (a streaming voice: of its decoder, context included) took `make_s`."""
        if audio_s > 0 and make_s > 0:
            self.rtf += self.weight * (max(make_s - self.run_s, 0.0) / audio_s - self.rtf)

    def note_length(self, chars: int, audio_s: float, length_scale: float = 1.0) -> None:
        if chars > 0 and audio_s > 0:
            self.audio_s_per_char += self.weight * (audio_s / (chars * length_scale) - self.audio_s_per_char)

    def note_text(self, chars: int, make_s: float) -> None:
        """A streaming voice's text part took `make_s` for `chars` characters."""
        if chars > 0 and make_s > 0:
            self.text_s_per_char += self.weight * (max(make_s - self.run_s, 0.0) / chars - self.text_s_per_char)


def budget_s(ahead_s: float) -> float:
    """Making time allowed for the next piece with `ahead_s` seconds of audio queued ahead of it."""
    return FIRST_PIECE_S if ahead_s <= 0 else PIECE_SHARE * max(0.0, ahead_s - QUEUE_RESERVE_S)


def next_piece(
    words: list[str],
    cuts: dict[int, int],
    fits: Callable[[int], bool],
    leaves_room: Callable[[int, int], bool] = lambda chars, next_chars: True,
) -> int:
    """How many of a sentence's remaining `words` the next piece takes. `fits(chars)`: whether a piece of that many
    characters has its first audio within its budget; `leaves_room(chars, next_chars)`: whether, once it is made,
    a next piece of `next_chars` would have its first audio within its own."""
    chars = _char_counts(words)
    total = len(words)
    allowed = [n for n in sorted(cuts) if _stands(words[:n], chars[n]) and _stands(words[n:], chars[-1] - chars[n])]
    if chars[total] <= MAX_PIECE_CHARS and fits(chars[total]):
        return total
    short = [n for n in allowed if chars[n] <= MAX_PIECE_CHARS]
    room = [n for n in short if leaves_room(chars[n], _shortest_after(n, words, chars, allowed))]
    for strength in (CLAUSE_CUT, WORD_CUT):
        fitting = [n for n in room if cuts[n] == strength and fits(chars[n])]
        if fitting:
            return max(fitting)
    # None fits: the shortest that leaves room for the next (a longer wait now, no gap later), else the shortest.
    if room or short:
        return (room or short)[0]
    return _longest_within(chars, total) if chars[total] > MAX_PIECE_CHARS else total


def _shortest_after(n: int, words: list[str], chars: list[int], allowed: list[int]) -> int:
    """Characters of the shortest piece that can follow a cut after `n` words."""
    end = next((m for m in allowed if m > n and _stands(words[n:m], chars[m] - chars[n])), len(words))
    return chars[end] - chars[n]


def _stands(words: list[str], chars: int) -> bool:
    """Whether words can be a piece of their own (see MIN_PIECE_CHARS)."""
    return len(words) >= 2 or chars >= MIN_PIECE_CHARS


def spoken_chars(text: str) -> int:
    """The text's length as it is said: a digit counts as DIGIT_CHARS characters."""
    return len(text) + (DIGIT_CHARS - 1) * sum(c.isdigit() for c in text)


def _char_counts(words: list[str]) -> list[int]:
    """Spoken characters of the first n words joined by spaces, for every n."""
    counts = [0]
    for word in words:
        counts.append(counts[-1] + spoken_chars(word) + (1 if counts[-1] else 0))
    return counts


def _longest_within(chars: list[int], total: int) -> int:
    """A run-on stretch with no cut: the most words within MAX_PIECE_CHARS (at least one)."""
    return max((n for n in range(1, total + 1) if chars[n] <= MAX_PIECE_CHARS), default=1)


def pieces(
    text: str,
    pace: VoicePace,
    ahead_s: Callable[[], float],
    *,
    language: str | None = None,
    length_scale: float = 1.0,
) -> Iterator[str]:
    """The text's pieces, each planned when it is asked for; `ahead_s()`: seconds of audio queued at that moment.
    Joined with single spaces they are the text with its runs of whitespace made single spaces."""

    for sentence in sentences(text):
        words = sentence.split()
        while words:
            ahead = ahead_s()
            turn = _Turn(pace, ahead, length_scale)
            take = next_piece(words, cut_points(words, language), turn.fits, turn.leaves_room)
            yield " ".join(words[:take])
            words = words[take:]


@dataclass(frozen=True)
class _Turn:
    """The moment the next piece is planned: the pace, and `ahead_s` seconds of audio queued."""

    pace: VoicePace
    ahead_s: float
    length_scale: float

    def fits(self, chars: int) -> bool:
        return self.pace.first_audio_s(chars, self.length_scale, self.ahead_s) <= budget_s(self.ahead_s)

    def leaves_room(self, chars: int, next_chars: int) -> bool:
        after = self.pace.queue_after_s(chars, self.length_scale, self.ahead_s)
        return after > 0 and _Turn(self.pace, after, self.length_scale).fits(next_chars)


def plan_pieces(text: str, pace: VoicePace, *, language: str | None = None, length_scale: float = 1.0) -> list[str]:
    """The pieces `pieces` gives when the voice keeps exactly to `pace` (the queue is then predicted, not measured):
    what a line would be cut into on a machine of that pace."""
    queue = {"ahead_s": 0.0}
    planned = []
    for piece in pieces(text, pace, lambda: queue["ahead_s"], language=language, length_scale=length_scale):
        queue["ahead_s"] = max(0.0, pace.queue_after_s(spoken_chars(piece), length_scale, queue["ahead_s"]))
        planned.append(piece)
    return planned
