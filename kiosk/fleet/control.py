"""The commands that MQTT and OSC carry, by the HTTP API's rules and in its words (kiosk.commands): play a line,
stop, set the volume (saved as the staff page saves it), mute, reload. Unmuting brings back the last audible
volume, also after a restart and after the volume was set to 0 rather than muted (UNMUTE_FILE).

Transport-neutral: MQTT hands in a topic's payload, OSC its typed arguments; both get a dict back or a
CommandError saying, in one sentence, why not.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from kiosk.commands import (
    CommandError,
    IdempotencyKeys,
    bad_idempotency_key,
    check_choice,
    parse_body,
    parse_json,
    refused,
    start_field,
    string_field,
    too_many,
)
from kiosk.config import Config, load_config, read_staff_settings
from kiosk.errors import ConfigError
from kiosk.fileio import write_atomically
from kiosk.speaker import Rejected, Request
from kiosk.staff.account import write_settings

if TYPE_CHECKING:
    from kiosk.fleet.download import Updates

log = logging.getLogger(__name__)

VOLUME_PROBLEM = "'volume' must be a whole number from 0 to 100"
#: Beside the staff settings: the last audible volume, kept when the speaker went silent (muted, or its volume set to
#: 0) so that unmuting brings it back, also after a restart. Not in the staff settings themselves: the config allows
#: only audio.volume there, and the staff page's volume form rewrites the whole audio section.
UNMUTE_FILE = "unmute.json"
#: Unmuting with no audible volume remembered and the operator's own audio.volume 0.
UNMUTE_VOLUME = 50


class Backend(Protocol):
    """What the commands need of the speaker: the part of kiosk.app.App they use."""

    cfg: Config
    config_path: Path | None

    settings_lock: asyncio.Lock

    def play(
        self, *, phrase: str | None, text: str | None, origin: str, language: str | None, at: float | None
    ) -> Request: ...
    def stop_speaking(self) -> bool: ...
    def allow_trigger(self) -> float | None: ...
    async def reload(self) -> bool: ...
    def event(self, text: str) -> None: ...


class Control:
    def __init__(self, backend: Backend, updates: Updates | None = None):
        self._backend = backend
        self._updates = updates  # the `update` command (kiosk.fleet.download); None: not taken here
        self._keys = IdempotencyKeys()
        self._unmuted: int | None = None  # the volume to unmute to, as UNMUTE_FILE keeps it (where it can)

    # -- from an MQTT payload

    async def payload(self, command: str, raw: bytes, origin: str) -> dict:
        """Carry out `command` with an MQTT payload (JSON as the HTTP API takes it; the volume as a bare number,
        as Home Assistant sends it, or {"volume": N}; mute as ON or OFF)."""
        if command == "play":
            body = parse_body(raw, {"phrase", "text", "id", "language", "at"})
            key = string_field(body, "id")
            if key is not None and bad_idempotency_key(key):
                raise CommandError(400, "'id' must be 1 to 255 printable characters")
            phrase, text = string_field(body, "phrase"), string_field(body, "text")
            language, at = string_field(body, "language"), start_field(body)
            return self.play(phrase=phrase, text=text, origin=origin, key=key, language=language, at=at)
        if command == "stop":
            parse_body(raw, set())
            return self.stop()
        if command == "volume":
            value = parse_json(raw)
            if isinstance(value, dict):
                value = parse_body(raw, {"volume"}).get("volume")
            return await self.volume(value, origin)
        if command == "mute":
            return await self.mute(switch_of(raw), origin)
        if command == "reload":
            parse_body(raw, set())
            return await self.reload()
        if command == "update" and self._updates is not None:
            if not self._backend.cfg.mqtt.accept_updates:
                raise CommandError(403, "this speaker does not take updates over MQTT (mqtt.accept_updates is off)")
            order = self._updates.order_of(raw)  # checked before it takes a token of the rate limit
            self._take_token()
            return self._updates.start(order)
        raise CommandError(404, f"unknown command '{command[:64]}'; known: play, stop, volume, mute, reload")

    # -- the commands themselves

    def play(
        self,
        *,
        phrase: str | None,
        text: str | None,
        origin: str,
        key: str | None = None,
        language: str | None = None,
        at: float | None = None,
    ) -> dict:
        """Speak a line (at `at`, Unix seconds: kiosk.in_step; None: at once)."""
        check_choice(phrase, text)
        if key is not None:
            earlier = self._keys.get(key, (phrase, text, language))
            if earlier is not None:
                return {**earlier, "replayed": True}
        retry_after = self._backend.allow_trigger()
        if retry_after is not None:
            raise too_many(retry_after)
        try:
            when = {} if at is None else {"at": at}
            req = self._backend.play(phrase=phrase, text=text, origin=origin, language=language, **when)
        except Rejected as exc:
            raise refused(exc) from None
        answer = {"id": req.id, "state": req.state, **({"language": req.language} if req.language else {})}
        if key is not None:
            self._keys.put(key, (phrase, text, language), answer)
        return answer

    def stop(self) -> dict:
        return {"stopped": self._backend.stop_speaking()}

    async def volume(self, value: Any, origin: str) -> dict:
        """Save audio.volume in the staff settings (checked with the config file, as the staff page does), reload."""
        volume = volume_of(value)
        self._take_token()
        await self._set_volume(volume)
        self._backend.event(f"volume set to {volume} % ({origin})")
        return {"volume": volume}

    async def mute(self, on: bool, origin: str) -> dict:
        """Mute: volume 0, the volume before it remembered; unmute: the last audible volume again (see `_unmuted`)."""
        current = self._backend.cfg.audio.volume
        if on == (current == 0):
            return {"muted": on, "volume": current}
        self._take_token()
        volume = await self._set_volume(0 if on else None)
        self._backend.event(f"{'muted' if on else 'unmuted'} ({origin})")
        return {"muted": on, "volume": volume}

    async def reload(self) -> dict:
        self._take_token()
        if not await self._backend.reload():
            raise CommandError(422, "the config was not reloaded (see the events); the running one is kept")
        return {"reloaded": True}

    def _take_token(self) -> None:
        retry_after = self._backend.allow_trigger()
        if retry_after is not None:
            raise too_many(retry_after)

    async def _set_volume(self, volume: int | None) -> int:
        """Set the volume (None: unmute, see `_audible`) and return it. Going silent from an audible volume (mute, or
        the slider moved to 0) remembers that volume in UNMUTE_FILE, beside the staff settings, so that unmuting
        brings it back, also after a restart; an audible volume set makes it forgotten."""
        backend = self._backend
        if backend.config_path is None:
            raise CommandError(409, "the volume cannot be saved: this speaker was started without a config file")
        async with backend.settings_lock:  # one settings write at a time, whichever way it came
            before = backend.cfg.audio.volume
            if volume is None:
                volume = await self._audible(backend.config_path) if before == 0 else before
            if volume == 0 and before > 0:
                await self._remember(before)  # first: a power cut between the two leaves a volume to go back to
            await self._save_volume(volume)
            if volume > 0:
                await self._remember(None)
        return volume

    async def _audible(self, config_path: Path) -> int:
        """The volume to unmute to: the one remembered when the speaker went silent, else the operator's
        audio.volume (kiosk.yaml without the staff settings) if it is audible, else UNMUTE_VOLUME."""
        remembered = await asyncio.to_thread(read_unmuted, self._unmute_file())
        if remembered is None:
            remembered = self._unmuted  # the file could not be kept (a read-only disk): what this process knows
        if remembered is not None:
            return remembered
        operator = await asyncio.to_thread(operator_volume, config_path)
        return operator if operator > 0 else UNMUTE_VOLUME

    async def _remember(self, volume: int | None) -> None:
        """Keep `volume` as the one to unmute to (None: forget it), in memory and in UNMUTE_FILE."""
        self._unmuted = volume
        try:
            await asyncio.to_thread(keep_unmuted, self._unmute_file(), volume)
        except OSError as exc:  # the volume is still set; only a restart forgets what to unmute to
            log.warning("could not keep the volume to unmute to in %s: %s", self._unmute_file(), exc)

    def _unmute_file(self) -> Path:
        return self._backend.cfg.staff.settings_file.parent / UNMUTE_FILE

    async def _save_volume(self, volume: int) -> None:
        """Write audio.volume into the staff settings and reload (the settings lock held)."""
        backend = self._backend
        path = backend.cfg.staff.settings_file
        try:
            settings = await asyncio.to_thread(read_staff_settings, path)
            audio = settings.get("audio") if isinstance(settings.get("audio"), dict) else {}
            settings = {**settings, "audio": {**audio, "volume": volume}}
            await asyncio.to_thread(load_config, backend.config_path, settings)  # the staff page's rules
            await asyncio.to_thread(write_settings, path, settings)
        except ConfigError as exc:
            raise CommandError(422, "; ".join(exc.problems[:3])) from None
        if not await backend.reload():
            raise CommandError(422, "the volume was saved but the config could not be reloaded (see the events)")


def read_unmuted(path: Path) -> int | None:
    """The volume kept in UNMUTE_FILE; None when there is none or it cannot be read as one."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(1024))
    except (OSError, ValueError):
        return None
    volume = data.get("volume") if isinstance(data, dict) else None
    if isinstance(volume, int) and not isinstance(volume, bool) and 0 < volume <= 100:
        return volume
    return None


def keep_unmuted(path: Path, volume: int | None) -> None:
    if volume is None:
        path.unlink(missing_ok=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps({"volume": volume}).encode() + b"\n", mode=0o640)


def operator_volume(config_path: Path) -> int:
    """audio.volume as the operator's kiosk.yaml sets it (the staff settings left out); 0 if it cannot be read."""
    try:
        return load_config(config_path, {}).audio.volume
    except ConfigError:
        return 0


def volume_of(value: Any) -> int:
    """A volume of 0 to 100 from JSON or OSC: a whole number (55 or 55.0); anything else is refused."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CommandError(400, VOLUME_PROBLEM)
    if isinstance(value, float) and not value.is_integer():  # also NaN and infinity
        raise CommandError(400, VOLUME_PROBLEM)
    if not 0 <= value <= 100:
        raise CommandError(400, VOLUME_PROBLEM)
    return int(value)


def switch_of(raw: bytes) -> bool:
    """ON or OFF (any case; Home Assistant's switch sends these), or JSON true / false."""
    word = raw.strip().lower()
    if word in (b"on", b"true"):
        return True
    if word in (b"off", b"false"):
        return False
    raise CommandError(400, "send ON or OFF")
