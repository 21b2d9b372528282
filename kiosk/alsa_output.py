"""The only module that imports `alsaaudio`: an ALSA playback device behind the small `AudioSink` interface."""

from __future__ import annotations

import errno
import logging
import threading
import time

import alsaaudio

from kiosk.errors import AudioError
from kiosk.pcm import AudioFormat

log = logging.getLogger(__name__)

_FORMATS = {2: alsaaudio.PCM_FORMAT_S16_LE}
# A blocking write that keeps returning 0 frames means the device stopped consuming; give up instead of spinning.
_MAX_STALLED_WRITES = 50
# After an underrun pyalsaaudio has already prepared the device; a device that underruns again on the very next
# write is broken, not late.
_MAX_UNDERRUNS_PER_WRITE = 3


class AlsaOutput:
    """A blocking ALSA playback stream opened for one audio format.

    Not thread-safe: the player's writer thread is its only user.
    """

    def __init__(self, device: str, fmt: AudioFormat, period_ms: int, buffer_periods: int):
        if fmt.sample_width not in _FORMATS:
            raise AudioError(f"unsupported sample width {fmt.sample_width} bytes")
        self.device = device
        self.fmt = fmt
        try:
            self._pcm = alsaaudio.PCM(
                type=alsaaudio.PCM_PLAYBACK,
                mode=alsaaudio.PCM_NORMAL,
                device=device,
                rate=fmt.rate,
                channels=fmt.channels,
                format=_FORMATS[fmt.sample_width],
                periodsize=max(1, fmt.frames_for_ms(period_ms)),
                periods=buffer_periods,
            )
        except alsaaudio.ALSAAudioError as exc:
            raise AudioError(f"cannot open ALSA device '{device}': {exc}. {known_devices()}") from exc
        info = self._pcm.info()
        if info["rate"] != fmt.rate or info["channels"] != fmt.channels:
            self._pcm.close()
            raise AudioError(
                f"ALSA device '{device}' offers {info['rate']} Hz/{info['channels']} ch, not "
                f"{fmt.rate} Hz/{fmt.channels} ch; use a converting device such as 'default' or 'plughw:CARD=...'"
            )
        self.period_frames = int(info["period_size"])
        self.buffer_frames = int(info["buffer_size"])

    def write(self, frames: bytes) -> int:
        """Write whole frames, blocking while the buffer is full; returns the number of underruns recovered.

        On an underrun (EPIPE) pyalsaaudio prepares the device and reports -EPIPE without having written anything;
        as aplay does, the same data is then written again.
        """
        view = memoryview(frames)
        underruns = stalls = 0
        while view:
            written = self._write_once(view)
            if written == -errno.EPIPE:
                underruns += 1
                if underruns > _MAX_UNDERRUNS_PER_WRITE:
                    raise AudioError(f"ALSA device '{self.device}' keeps underrunning")
                continue
            if written <= 0:
                stalls += 1
                if stalls > _MAX_STALLED_WRITES:
                    raise AudioError(f"ALSA device '{self.device}' stopped accepting audio")
                time.sleep(self._period_s / 4)
                continue
            view = view[written * self.fmt.frame_bytes :]
        return underruns

    def _write_once(self, view: memoryview) -> int:
        try:
            return self._pcm.write(view)
        except alsaaudio.ALSAAudioError as exc:
            raise AudioError(f"ALSA device '{self.device}' failed: {exc}") from exc

    def wait_played(self, stop: threading.Event) -> None:
        """Return once everything written has been played, or at once when `stop` is set.

        snd_pcm_drain() cannot be interrupted and some devices (PulseAudio) take far longer than the buffer to
        drain, so poll the free space instead, bounded by twice the buffer length.
        """
        deadline = time.monotonic() + 2 * self.buffer_frames / self.fmt.rate + 0.1
        while not stop.is_set() and time.monotonic() < deadline:
            avail = self._pcm.avail()
            if avail < 0 or avail >= self.buffer_frames:  # negative: the buffer ran empty (xrun)
                break
            stop.wait(self._period_s / 4)
        self.drop()

    def drop(self) -> None:
        """Silence at once: discard whatever is still buffered."""
        try:
            self._pcm.drop()
        except alsaaudio.ALSAAudioError as exc:
            log.warning("ALSA device '%s': drop failed: %s", self.device, exc)

    def close(self) -> None:
        self._pcm.close()

    @property
    def _period_s(self) -> float:
        return self.period_frames / self.fmt.rate


_VOLUME_CONTROLS = ("Master", "PCM", "Speaker", "Headphone", "Digital")


def _volume_control(device: str) -> tuple[str, str] | None:
    """(mixer device, control name) of the main volume control behind a playback device, if it has one.

    Only a card (hw:, plughw:) or the default device has a mixer of its own; plugins such as file:, null or
    pulse get software volume.
    """
    if device.startswith(("hw:", "plughw:")):
        mixer_device = device.split(":", 1)[1].split(",")[0]
    elif device in ("default", "sysdefault"):
        mixer_device = "default"
    else:
        return None
    if mixer_device.startswith("CARD="):
        mixer_device = f"hw:{mixer_device}"
    try:
        controls = alsaaudio.mixers(device=mixer_device)
    except alsaaudio.ALSAAudioError:
        return None
    control = next((c for c in _VOLUME_CONTROLS if c in controls), None)
    return (mixer_device, control) if control else None


def set_volume(device: str, percent: int) -> str | None:
    """Set the device's mixer to `percent`; the control's name, or None when there is no mixer to set."""
    found = _volume_control(device)
    if found is None:
        return None
    mixer = alsaaudio.Mixer(control=found[1], device=found[0])
    try:
        mixer.setvolume(percent)
    except alsaaudio.ALSAAudioError as exc:
        log.warning("cannot set volume on '%s': %s", found[1], exc)
        return None
    finally:
        mixer.close()
    return found[1]


def mixer_report(device: str) -> tuple[bool, str]:
    """(ok, description) of the main volume control behind `device`; not ok when muted or at zero."""
    found = _volume_control(device)
    if found is None:
        return True, "no hardware mixer (volume is set in software)"
    mixer_device, control = found
    mixer = alsaaudio.Mixer(control=control, device=mixer_device)
    try:
        volumes = mixer.getvolume()
        try:
            muted = any(mixer.getmute())
        except alsaaudio.ALSAAudioError:  # this control has no mute switch
            muted = False
    finally:
        mixer.close()
    level = f"'{control}' at {max(volumes)}%"
    if muted:
        return False, f"{level} but MUTED (unmute with: amixer sset '{control}' unmute)"
    if max(volumes) == 0:
        return False, f"{level}: nothing will be heard (amixer sset '{control}' 80%)"
    return True, level


def has_sound_card() -> bool:
    try:
        return bool(alsaaudio.cards())
    except alsaaudio.ALSAAudioError:
        return False


def wav_file_device(path: str) -> str:
    """An ALSA device name that writes a WAV file through ALSA's own `file` plugin."""
    if any(c in path for c in ",'\"{}"):
        raise AudioError(f"cannot write audio to {path!r}: the path may not contain , ' \" {{ or }}")
    return f"file:FILE={path},FORMAT=wav"


def known_devices() -> str:
    """One sentence naming the sound cards and PCMs ALSA knows, for error messages."""
    try:
        cards = alsaaudio.cards()
        pcms = alsaaudio.pcms(alsaaudio.PCM_PLAYBACK)
    except alsaaudio.ALSAAudioError:
        return "ALSA could not list its devices."
    card_text = ", ".join(cards) if cards else "none (no sound card found)"
    return f"Sound cards: {card_text}. Playback devices include: {', '.join(pcms[:12]) or 'none'}."
