"""A Piper voice as loaded, its model in two parts, so that a piece of text is heard while the rest of it is made.
The only module that imports `piper`, `onnx` and `onnxruntime`; kiosk.speech.piper_engine imports it only once the
voice is loaded.

A Piper voice (VITS) works in two steps. The text part turns phoneme ids into latent frames (text encoder,
duration predictor, the prior sampled at each frame): about a tenth of the work. The frames part turns frames into
audio, 256 samples each (a normalizing flow, then the HiFi-GAN decoder): the rest. Every layer of the frames part
is a convolution of bounded reach along time, so a stretch of frames made together with CONTEXT_FRAMES of its
neighbours on each side gives the samples one run over the whole would give (measured on the bundled voice, the
stretches joined against one run: 71 dB signal to difference with 24 frames, largest sample difference 0.0013 of
full scale; 44 dB with 20, 28 dB with 16). So the model file is split once when the voice loads, with onnx's own
Extractor at the two tensors that join the parts, into two onnxruntime sessions: a sentence's first audio then
waits for its text part and one short stretch, not for all of it, and the sentence keeps its prosody whole.

A piece's audio is made stretch by stretch (`LoadedVoice.piece_audio`): a line's first stretch is short, each later
one as long as can be made before the audio queued ahead of it runs out (kiosk.speech.pace.VoicePace.stretch_s), and
the pace is noted as it goes: the text part per character, the frames part per second of audio made.

The model's own level is kept (no per-sentence peak normalisation as in piper's `synthesize`, which would need the
whole sentence before its first sample): one gain per voice, set when it loads so that the warm-up sentence peaks
at TARGET_PEAK, so that every line of a voice is at one level (kiosk.loudness then matches it to other voices).

The tensor names are those of Piper's own exporter for a single-speaker voice. For any other model (several
speakers, another exporter) `split_voice` gives None and the engine makes each piece in one run of the whole model.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kiosk.memory import limit_malloc_arenas, release_freed_memory
from kiosk.speech.pace import VoicePace, spoken_chars

#: The prior sampled at each frame, [1, channels, frames]: the frames part's input.
LATENT = "/Add_output_0"
#: Which frames are real, [1, 1, frames] (all of them for one sentence).
FRAME_MASK = "/Cast_2_output_0"
TEXT_INPUTS = ("input", "input_lengths", "scales")
#: Frames of context made on each side of a stretch and then dropped (see the module docstring).
CONTEXT_FRAMES = 24
#: A stretch holds at most this many frames (4.6 s at 22 050 Hz): the frames part's memory grows with a stretch.
MAX_STRETCH_FRAMES = 400
#: A piece's last stretch holds at least this many frames, so that the silence the voice ends it with (about 0.3 s)
#: comes in one stretch and can be trimmed where the sentence goes on.
TAIL_FRAMES = 32
#: The warm-up sentence's peak after the voice's gain (-3 dBFS).
TARGET_PEAK = 0.7


@dataclass
class Latent:
    """One sentence's latent frames, made by the text part."""

    z: np.ndarray
    mask: np.ndarray

    @property
    def frames(self) -> int:
        return int(self.z.shape[-1])


class SplitVoice:
    """The two parts of a voice's model as onnxruntime sessions."""

    def __init__(self, text_session, frames_session, hop_length: int):
        self.text_session, self.frames_session = text_session, frames_session
        self.hop_length = hop_length

    def latent(self, phoneme_ids: list[int], scales: np.ndarray) -> Latent:
        ids = np.array([phoneme_ids], dtype=np.int64)
        inputs = {"input": ids, "input_lengths": np.array([ids.shape[1]], dtype=np.int64), "scales": scales}
        z, mask = self.text_session.run(None, inputs)
        return Latent(z, mask)

    def audio(self, latent: Latent, start: int, end: int) -> np.ndarray:
        """The float samples of frames [start, end), made with their context."""
        first, last = max(0, start - CONTEXT_FRAMES), min(latent.frames, end + CONTEXT_FRAMES)
        inputs = {LATENT: latent.z[:, :, first:last], FRAME_MASK: latent.mask[:, :, first:last]}
        samples = self.frames_session.run(None, inputs)[0].reshape(-1)
        return samples[(start - first) * self.hop_length : (end - first) * self.hop_length]

    @staticmethod
    def computed_frames(latent: Latent, start: int, end: int) -> int:
        """How many frames `audio(latent, start, end)` runs the frames part over (its cost)."""
        return min(latent.frames, end + CONTEXT_FRAMES) - max(0, start - CONTEXT_FRAMES)


def split_voice(model: Path, options, hop_length: int) -> SplitVoice | None:
    """The model split into its two parts, with onnxruntime session `options`; None where it cannot be split."""
    import onnx
    import onnxruntime
    from onnx.utils import Extractor

    graph_model = onnx.load(str(model))
    graph = graph_model.graph
    made = {name for node in graph.node for name in node.output}
    if {i.name for i in graph.input} != set(TEXT_INPUTS) or not {LATENT, FRAME_MASK} <= made:
        return None
    extractor = Extractor(graph_model)
    parts = (
        extractor.extract_model(list(TEXT_INPUTS), [LATENT, FRAME_MASK]),
        extractor.extract_model([LATENT, FRAME_MASK], [graph.output[0].name]),
    )
    del graph_model, extractor  # the parsed file: its weights now live in the two parts
    sessions = []
    for part in parts:
        with contextlib.suppress(Exception):  # onnxruntime raises its own types for a graph it refuses
            sessions.append(
                onnxruntime.InferenceSession(
                    part.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
                )
            )
    if len(sessions) != 2 or [i.name for i in sessions[1].get_inputs()] != [LATENT, FRAME_MASK]:
        return None
    return SplitVoice(*sessions, hop_length)


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
                scales = np.array([self.voice.config.noise_scale, 1.0, self.voice.config.noise_w_scale], np.float32)
                latent = self.split.latent(ids, scales)
                audio.append(self.split.audio(latent, 0, latent.frames))
        return np.concatenate(audio) if audio else np.zeros(0, np.float32)

    def sessions(self) -> list:
        return [self.voice.session] if self.split is None else [self.split.text_session, self.split.frames_session]

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

    def _run_audio(self, ids, chars, pace, ahead_s, clock, length_scale) -> Iterator[tuple[np.ndarray, bool]]:
        config = self.voice.config
        if self.split is None:
            from piper import SynthesisConfig

            started = clock()
            audio = self.voice.phoneme_ids_to_audio(ids, SynthesisConfig(length_scale=length_scale))
            pace.note_rtf(len(audio) / self.rate, clock() - started)
            yield audio, True
            return
        started = clock()
        scales = np.array([config.noise_scale, length_scale, config.noise_w_scale], dtype=np.float32)
        latent = self.split.latent(ids, scales)
        pace.note_text(chars, clock() - started)
        start = 0
        while start < latent.frames:
            end = self._stretch_end(latent.frames, start, pace.stretch_s(ahead_s()))
            started = clock()
            audio = self.split.audio(latent, start, end)
            made_s = self.split.computed_frames(latent, start, end) * self.split.hop_length / self.rate
            pace.note_rtf(made_s, clock() - started)
            yield audio, end == latent.frames
            start = end

    def _stretch_end(self, frames: int, start: int, stretch_s: float) -> int:
        wanted = round(stretch_s * self.rate / self.split.hop_length)
        end = start + min(MAX_STRETCH_FRAMES, max(TAIL_FRAMES, wanted))
        return frames if frames - end < TAIL_FRAMES else end

    def _pcm(self, audio: np.ndarray) -> bytes:
        # Native-endian 16-bit: little-endian on the Pi and on x86, as the device format says.
        return (np.clip(audio * self.gain, -1.0, 1.0) * 32767).astype(np.int16).tobytes()
