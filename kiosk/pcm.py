"""Raw PCM helpers: the audio format, frame alignment of arbitrary chunks, a streaming WAV header."""

from __future__ import annotations

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


def wav_stream_header(fmt: AudioFormat) -> bytes:
    """A WAV header for audio of unknown length, sent before the audio exists: both sizes are 0xFFFFFFFF, which
    players (browsers, ffplay) read as "until the stream ends"."""
    block = fmt.frame_bytes
    return b"".join(
        [
            b"RIFF",
            (0xFFFFFFFF).to_bytes(4, "little"),
            b"WAVE",
            b"fmt ",
            (16).to_bytes(4, "little"),
            (1).to_bytes(2, "little"),
            fmt.channels.to_bytes(2, "little"),
            fmt.rate.to_bytes(4, "little"),
            (fmt.rate * block).to_bytes(4, "little"),
            block.to_bytes(2, "little"),
            (8 * fmt.sample_width).to_bytes(2, "little"),
            b"data",
            (0xFFFFFFFF).to_bytes(4, "little"),
        ]
    )
