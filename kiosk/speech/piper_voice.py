"""A Piper voice as loaded, its model in two parts, so that a piece of text is heard while the rest of it is made.
The only module that imports `piper`, `onnx` and `onnxruntime`; kiosk.speech.piper_engine imports it only once the
voice is loaded.

A Piper voice (VITS) works in two steps. The text part turns phoneme ids into latent frames (text encoder, duration
predictor, the prior sampled at each frame, a normalizing flow): about a third of the work. The decoder (HiFi-GAN)
turns frames into audio, 256 samples each: the rest. Every layer of the decoder is a convolution of bounded reach
along time, so a stretch of frames decoded together with CONTEXT_FRAMES of its neighbours on each side gives the
samples one run over the whole would give (measured on the bundled voice, the stretches joined against one run:
above 100 dB signal to difference with 12 frames, 59 dB with 8, 31 dB with 4). So the model file is split once when
the voice loads, with onnx's own Extractor at the tensor that joins the parts, into two onnxruntime sessions: a
sentence's first audio waits for its text part and one short stretch, not for all of it, and the sentence keeps
its prosody whole. (The flow is a convolution of bounded reach too, but a wider one, about 24 frames: split before
it, each stretch would make twice as much context as here.)

A piece's audio is made stretch by stretch (`LoadedVoice.piece_audio`): a line's first stretch is short, each later
one as long as can be made before the audio queued ahead of it runs out (kiosk.speech.pace.VoicePace.stretch_s), and
the pace is noted as it goes: the text part per character, the decoder per second of audio made.

The model's own level is kept (no per-sentence peak normalisation as in piper's `synthesize`, which would need the
whole sentence before its first sample): one gain per voice, set when it loads so that the warm-up sentence peaks
at TARGET_PEAK, so that every line of a voice is at one level (kiosk.loudness then matches it to other voices).

The tensor names are those of Piper's own exporter for a single-speaker voice. For any other model (several
speakers, another exporter) `split_voice` gives None and the engine makes each piece in one run of the whole model.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kiosk.memory import limit_malloc_arenas, release_freed_memory
from kiosk.speech.pace import MIN_STRETCH_S, VoicePace, spoken_chars

#: The latent frames after the flow, [1, channels, frames], masked: the decoder's input.
LATENT = "/Mul_7_output_0"
TEXT_INPUTS = ("input", "input_lengths", "scales")
#: Frames of context decoded on each side of a stretch and then dropped (see the module docstring).
CONTEXT_FRAMES = 12
#: A stretch holds at most this many frames (2.3 s at 22 050 Hz): the decoder's memory grows with a stretch, and so
#: does its cost per frame (larger than the cache), so larger stretches save nothing.
MAX_STRETCH_FRAMES = 200
#: A piece's last stretch holds at least this many frames, so that the silence the voice ends it with (about 0.3 s)
#: comes in one stretch and can be trimmed where the sentence goes on.
TAIL_FRAMES = 32
#: The warm-up sentence's peak after the voice's gain (-3 dBFS).
TARGET_PEAK = 0.7


@dataclass
class Latent:
    """One sentence's latent frames, made by the text part."""

    z: np.ndarray

    @property
    def frames(self) -> int:
        return int(self.z.shape[-1])


class SplitVoice:
    """The two parts of a voice's model as onnxruntime sessions: text part and decoder."""

    def __init__(self, text_session, decoder_session, hop_length: int):
        self.text_session, self.decoder_session = text_session, decoder_session
        self.hop_length = hop_length

    def latent(self, phoneme_ids: list[int], scales: np.ndarray) -> Latent:
        ids = np.array([phoneme_ids], dtype=np.int64)
        inputs = {"input": ids, "input_lengths": np.array([ids.shape[1]], dtype=np.int64), "scales": scales}
        return Latent(self.text_session.run(None, inputs)[0])

    def audio(self, latent: Latent, start: int, end: int) -> np.ndarray:
        """The float samples of frames [start, end), made with their context."""
        first, last = max(0, start - CONTEXT_FRAMES), min(latent.frames, end + CONTEXT_FRAMES)
        samples = self.decoder_session.run(None, {LATENT: latent.z[:, :, first:last]})[0].reshape(-1)
        return samples[(start - first) * self.hop_length : (end - first) * self.hop_length]

    @staticmethod
    def computed_frames(latent: Latent, start: int, end: int) -> int:
        """How many frames `audio(latent, start, end)` runs the decoder over (its cost)."""
        return min(latent.frames, end + CONTEXT_FRAMES) - max(0, start - CONTEXT_FRAMES)


def split_voice(model: Path, options, hop_length: int, parts_dir: Path | None = None) -> SplitVoice | None:
    """The model split into its two parts, with onnxruntime session `options`; None where it cannot be split. The
    parts are kept in `parts_dir` (default: split_parts_dir()) once made, so that a later start neither imports
    onnx (0.6 s here) nor splits again; where that directory cannot be written, the parts stay in memory. Kept parts
    that no longer load (a bad sector, a file truncated by hand) are made again."""
    directory = parts_dir or split_parts_dir()
    for _ in range(2):
        try:
            parts = _kept_parts(model, directory)
        except OSError:  # the directory cannot be written: the parts stay in memory
            parts = _split(model)
        if parts is None:
            return None
        sessions = _sessions(parts, options)
        if sessions is not None:
            return SplitVoice(*sessions, hop_length)
        if not isinstance(parts[0], str):
            return None  # made just now and still refused
        for path in parts:
            with contextlib.suppress(OSError):
                Path(path).unlink()
    return None


def _sessions(parts: tuple, options) -> list | None:
    """The two parts (paths or serialized models) as onnxruntime sessions, or None where onnxruntime refuses one."""
    import onnxruntime

    sessions = []
    for part in parts:
        with contextlib.suppress(Exception):  # onnxruntime raises its own types for a graph it refuses
            sessions.append(
                onnxruntime.InferenceSession(part, sess_options=options, providers=["CPUExecutionProvider"])
            )
    if len(sessions) != 2 or [i.name for i in sessions[1].get_inputs()] != [LATENT]:
        return None
    return sessions


def split_parts_dir() -> Path:
    """Where split models are kept: the user's cache directory (XDG_CACHE_HOME, else ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kiosk" / "piper"


def _kept_parts(model: Path, directory: Path) -> tuple[str, str] | None:
    """The two parts' files for this model file (its name, size and time), made and kept now if need be; None where
    the model cannot be split."""
    stat = model.stat()
    stem = f"{model.stem}-{stat.st_size}-{stat.st_mtime_ns}"
    paths = (directory / f"{stem}.text.onnx", directory / f"{stem}.decoder.onnx")
    if not all(path.is_file() for path in paths):
        parts = _split(model)
        if parts is None:
            return None
        directory.mkdir(parents=True, exist_ok=True)
        for path, part in zip(paths, parts, strict=True):
            temporary = path.with_suffix(".partial")
            temporary.write_bytes(part)
            temporary.replace(path)  # whole or not at all, even across a power cut
    return str(paths[0]), str(paths[1])


def _split(model: Path) -> tuple[bytes, bytes] | None:
    """The model's two parts as serialized models, or None where the model is not one Piper's exporter made."""
    import onnx
    from onnx.utils import Extractor

    graph_model = onnx.load(str(model))
    graph = graph_model.graph
    made = {name for node in graph.node for name in node.output}
    if {i.name for i in graph.input} != set(TEXT_INPUTS) or LATENT not in made:
        return None
    extractor = Extractor(graph_model)
    return (
        extractor.extract_model(list(TEXT_INPUTS), [LATENT]).SerializeToString(),
        extractor.extract_model([LATENT], [graph.output[0].name]).SerializeToString(),
    )


def load_voice(model: Path, config: Path, *, intra_op_threads: int = 0, mem_arena: bool = False) -> LoadedVoice:
    """The voice with its model split in two (a model that cannot be split runs whole in the PiperVoice's own
    session). The onnxruntime sessions suit a small device: piper's own `PiperVoice.load` always uses the default
    session options, so the sessions are made here (see kiosk.speech.piper_engine for the options chosen)."""
    import onnxruntime
    from piper import PiperVoice
    from piper.config import PiperConfig as VoiceConfig

    limit_malloc_arenas()
    options = onnxruntime.SessionOptions()
    options.enable_cpu_mem_arena = mem_arena
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    # onnxruntime's threads spin between the operators of a run, waiting for the next: that burns CPU the player and
    # the rest of the service need, and under a CPU share it used up the share. Measured at the 55 % share (bench/
    # voice_pace.py): a run's fixed cost 44 ms spinning, 9 ms not; at full speed no slower.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    voice_config = VoiceConfig.from_dict(json.loads(config.read_text(encoding="utf-8")))
    split = split_voice(model, options, voice_config.hop_length)
    session = None
    if split is None:
        session = onnxruntime.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
    voice = PiperVoice(config=voice_config, session=session)
    voice.phonemize("a")  # espeak-ng is set up on first use: here, not at a visitor's first line
    release_freed_memory()  # the parsed model file, freed once its weights are in the sessions
    return LoadedVoice(voice, split)


@dataclass
class LoadedVoice:
    voice: object  # piper.PiperVoice
    split: SplitVoice | None
    gain: float = 1.0

    @property
    def rate(self) -> int:
        return self.voice.config.sample_rate

    @property
    def context_s(self) -> float | None:
        """Seconds of audio made as context on each side of a stretch; None: the model runs whole."""
        return None if self.split is None else CONTEXT_FRAMES * self.split.hop_length / self.rate

    def raw_audio(self, text: str) -> np.ndarray:
        """The text's float audio as the model makes it, in one run per sentence."""
        from piper import SynthesisConfig

        audio = []
        for phonemes in self.voice.phonemize(text):
            ids = self.voice.phonemes_to_ids(phonemes)
            if self.split is None:
                audio.append(self.voice.phoneme_ids_to_audio(ids, SynthesisConfig()))
            else:
                latent = self.split.latent(ids, self._scales())
                audio.append(self.split.audio(latent, 0, latent.frames))
        return np.concatenate(audio) if audio else np.zeros(0, np.float32)

    def calibrate(self, pace: VoicePace, clock: Callable[[], float], text: str) -> None:
        """Measure the pace: each part of the model on a small and a larger input (the median of three runs each),
        so that what a run costs whatever its size (`run_s`) is told apart from what it costs per character of text
        and per second of audio."""

        def timed(run) -> tuple[float, object]:
            """The median of three runs' times, and what the last one made."""
            times = []
            for _ in range(3):
                started = clock()
                made = run()
                times.append(clock() - started)
            return sorted(times)[1], made

        ids = [self.voice.phonemes_to_ids(self.voice.phonemize(t)[0]) for t in ("Yes.", text)]
        chars = [spoken_chars("Yes."), spoken_chars(text)]
        if self.split is None:
            from piper import SynthesisConfig

            (small, quiet), (large, said) = (
                timed(lambda i=i: self.voice.phoneme_ids_to_audio(i, SynthesisConfig())) for i in ids
            )
            audio_s = [len(quiet) / self.rate, len(said) / self.rate]
            pace.rtf = max(large - small, 1e-4) / max(audio_s[1] - audio_s[0], 1e-3)
            pace.run_s = max(0.0, small - pace.rtf * audio_s[0])
            return
        scales = self._scales(noise=False)
        (small, _), (large, latent) = (timed(lambda i=i: self.split.latent(i, scales)) for i in ids)
        pace.text_s_per_char = max(large - small, 1e-5) / (chars[1] - chars[0])
        frames = min(latent.frames, 100)
        (one, _), (many, _) = (timed(lambda n=n: self.split.audio(latent, 0, n)) for n in (1, frames))
        frame_s = self.split.hop_length / self.rate
        computed = [self.split.computed_frames(latent, 0, n) * frame_s for n in (1, frames)]
        pace.rtf = max(many - one, 1e-4) / max(computed[1] - computed[0], 1e-3)
        text_run = small - pace.text_s_per_char * chars[0]
        pace.run_s = max(0.0, (text_run + one - pace.rtf * computed[0]) / 2)

    def sessions(self) -> list:
        return [self.voice.session] if self.split is None else [self.split.text_session, self.split.decoder_session]

    def set_gain(self, audio: np.ndarray) -> None:
        """The gain that brings `audio` (the warm-up sentence, as the model makes it) to TARGET_PEAK."""
        peak = float(np.max(np.abs(audio))) if audio.size else 0.0
        self.gain = TARGET_PEAK / peak if peak > 1e-4 else 1.0

    def piece_audio(
        self,
        piece: str,
        pace: VoicePace,
        ahead_s: Callable[[], float],
        clock: Callable[[], float],
        length_scale: float = 1.0,
    ) -> Iterator[tuple[bytes, bool]]:
        """The piece's audio as 16-bit PCM as it is made, stretch by stretch, each with whether it is the piece's
        last; notes the pace as it goes."""
        runs = [self.voice.phonemes_to_ids(phonemes) for phonemes in self.voice.phonemize(piece) if phonemes]
        all_ids = sum(map(len, runs)) or 1
        for number, ids in enumerate(runs):
            last_run = number == len(runs) - 1
            chars = round(spoken_chars(piece) * len(ids) / all_ids)
            for audio, last in self._run_audio(ids, chars, pace, ahead_s, clock, length_scale):
                yield self._pcm(audio), last and last_run

    def _scales(self, length_scale: float = 1.0, *, noise: bool = True) -> np.ndarray:
        """The text part's scales input: the voice's noise (or none, for a result that is the same every run) and
        `length_scale`."""
        config = self.voice.config
        noise_scale, noise_w = (config.noise_scale, config.noise_w_scale) if noise else (0.0, 0.0)
        return np.array([noise_scale, length_scale, noise_w], dtype=np.float32)

    def _run_audio(self, ids, chars, pace, ahead_s, clock, length_scale) -> Iterator[tuple[np.ndarray, bool]]:
        if self.split is None:
            from piper import SynthesisConfig

            started = clock()
            audio = self.voice.phoneme_ids_to_audio(ids, SynthesisConfig(length_scale=length_scale))
            pace.note_rtf(len(audio) / self.rate, clock() - started)
            yield audio, True
            return
        started = clock()
        latent = self.split.latent(ids, self._scales(length_scale))
        pace.note_text(chars, clock() - started)
        start = 0
        while start < latent.frames:
            ahead = ahead_s()
            stretch_s = pace.stretch_s(ahead) if start else pace.first_stretch_s(ahead)
            end = self._stretch_end(latent.frames, start, stretch_s)
            started = clock()
            audio = self.split.audio(latent, start, end)
            made_s = self.split.computed_frames(latent, start, end) * self.split.hop_length / self.rate
            pace.note_rtf(made_s, clock() - started)
            yield audio, end == latent.frames
            start = end

    def _stretch_end(self, frames: int, start: int, stretch_s: float) -> int:
        """Where a stretch from `start` ends: about `stretch_s` on (at least MIN_STRETCH_S), and earlier rather than
        later where the piece's last stretch would be left shorter than TAIL_FRAMES (a longer stretch than planned
        is made late)."""
        least = round(MIN_STRETCH_S * self.rate / self.split.hop_length)
        end = start + min(MAX_STRETCH_FRAMES, max(least, round(stretch_s * self.rate / self.split.hop_length)))
        if end >= frames or frames - end >= TAIL_FRAMES:
            return min(end, frames)
        return frames - TAIL_FRAMES if frames - TAIL_FRAMES - start >= least else frames

    def _pcm(self, audio: np.ndarray) -> bytes:
        # Native-endian 16-bit: little-endian on the Pi and on x86, as the device format says.
        return (np.clip(audio * self.gain, -1.0, 1.0) * 32767).astype(np.int16).tobytes()
