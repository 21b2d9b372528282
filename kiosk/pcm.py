"""Raw PCM helpers: the audio format, frame alignment of arbitrary chunks, WAV wrapping."""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass


@dataclass(frozen=True)
class AudioFormat:
    """Interleaved signed little-endian PCM."""

    rate: int = 24_000
    channels: int = 1
    sample_width: int = 2

    @property
    def frame_bytes(self) -> int:
        return self.channels * self.sample_width

    def frames_for_ms(self, ms: float) -> int:
        return int(self.rate * ms / 1000)

    def bytes_for_ms(self, ms: float) -> int:
        return self.frames_for_ms(ms) * self.frame_bytes

    def ms_for_bytes(self, nbytes: int) -> float:
        return nbytes / self.frame_bytes / self.rate * 1000

    def describe(self) -> str:
        return f"s{8 * self.sample_width}le/{self.rate}Hz/{self.channels}ch"


#: What OpenAI's speech API returns for response_format="pcm".
OPENAI_PCM = AudioFormat(rate=24_000, channels=1, sample_width=2)


class FrameAligner:
    """Re-cuts a stream of byte chunks at whole-frame boundaries.

    HTTP chunks ignore sample boundaries, so a 16-bit sample may arrive split in two; the partial frame is held
    back until the next chunk completes it.
    """

    def __init__(self, frame_bytes: int):
        self._frame_bytes = frame_bytes
        self._partial = b""

    def push(self, chunk: bytes) -> bytes:
        data = self._partial + chunk if self._partial else chunk
        whole = len(data) - len(data) % self._frame_bytes
        self._partial = data[whole:]
        return data[:whole]

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame still held back."""
        return len(self._partial)


def wav_bytes(fmt: AudioFormat, pcm: bytes) -> bytes:
    """A complete WAV file holding `pcm`."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(fmt.channels)
        w.setsampwidth(fmt.sample_width)
        w.setframerate(fmt.rate)
        w.writeframes(pcm)
    return buf.getvalue()
