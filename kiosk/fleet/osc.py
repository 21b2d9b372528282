"""OSC show control over UDP; the only module that imports the OSC library (python-osc).

    /kiosk/play <phrase> [<language>]             speak a configured line (the HTTP API's rules, rate limit, words)
    /kiosk/play_at <phrase> <at> [<language>]     the same, starting at `at` (Unix seconds; kiosk.in_step): a double,
                                                  an integer or a decimal string; a 32-bit float is refused (it
                                                  cannot hold a Unix time closer than two minutes)
    /kiosk/stop              stop speaking and forget what waits
    /kiosk/volume <0-100>    set the volume as the staff page does (saved, then the config reloaded)

Each message is answered to its sender: `/kiosk/ok <address>` or `/kiosk/error <address> <why>`. Datagrams are
untrusted: bounded in size and in messages per bundle; address patterns are matched literally (no wildcards, so
no pattern can cost more than a lookup); a future time tag does not delay anything; a datagram that does not parse
is answered with an error, never a traceback. Senders outside `osc.allow_from` (when set) are ignored.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket
from pythonosc.parsing import osc_types

from kiosk.commands import CommandError, start_field
from kiosk.config import OscConfig
from kiosk.errors import KioskError
from kiosk.fleet.control import Control

log = logging.getLogger(__name__)

MAX_DATAGRAM = 8192
MAX_MESSAGES = 16  # per datagram (a bundle)
ADDRESSES = ("/kiosk/play", "/kiosk/play_at", "/kiosk/stop", "/kiosk/volume")  # named to a sender of an unknown address
PLAY_AT_ARGS = "/kiosk/play_at takes the id of a configured line, its start time, and optionally a language code"
ORIGIN = "osc"


class OscLink:
    """Listens on `osc.bind:osc.port`; `port` is the one bound (osc.port 0 picks one)."""

    def __init__(self, cfg: OscConfig, *, control: Control):
        self.cfg = cfg
        self.port: int | None = None
        self.error: str | None = None
        self.ignored = 0  # datagrams from senders not in allow_from
        self._control = control
        self._transport: asyncio.DatagramTransport | None = None
        self._jobs: set[asyncio.Task] = set()

    def state(self) -> dict:
        state = "listening" if self.port else "failed" if self.error else "starting"
        return {"state": state, "bind": self.cfg.bind, "port": self.port, "error": self.error}

    def problem(self) -> str | None:
        return f"OSC show control is not listening: {self.error}. Retrying." if self.error else None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Protocol(self), local_addr=(self.cfg.bind, self.cfg.port)
            )
        except OSError as exc:
            self.error = f"cannot listen on UDP {self.cfg.bind}:{self.cfg.port} ({exc.strerror or exc})"
            raise KioskError(self.error) from None  # the supervisor tries again, with back-off
        self._transport = transport
        self.port, self.error = transport.get_extra_info("sockname")[1], None
        log.info("OSC show control on UDP %s:%d", self.cfg.bind, self.port)
        try:
            await asyncio.Event().wait()
        finally:
            transport.close()
            self._transport, self.port = None, None

    def received(self, data: bytes, sender: tuple) -> None:
        if self.cfg.allow_from and sender[0] not in self.cfg.allow_from:
            self.ignored += 1
            return
        if len(data) > MAX_DATAGRAM:
            too_large = f"datagram too large ({len(data)} bytes; the limit is {MAX_DATAGRAM})"
            self._reply(sender, "/kiosk/error", "", too_large)
            return
        try:
            messages = [timed.message for timed in OscPacket(data).messages]
        except Exception:  # ParseError, or a bundle nested past the recursion limit
            self._reply(sender, "/kiosk/error", "", "not an OSC message or bundle")
            return
        if len(messages) > MAX_MESSAGES:
            self._reply(sender, "/kiosk/error", "", f"more than {MAX_MESSAGES} messages in one bundle")
            return
        for message in messages:
            self._handle(message.address, list(message.params), sender, _type_tags(message.dgram))

    def _handle(self, address: str, args: list[Any], sender: tuple, tags: str = "") -> None:
        shown = "".join(c if c.isprintable() else "?" for c in address[:64])
        try:
            if address == "/kiosk/play":
                if len(args) not in (1, 2) or not all(isinstance(a, str) for a in args):
                    raise CommandError(
                        400, "/kiosk/play takes the id of a configured line, and optionally a language code"
                    )
                language = args[1] if len(args) == 2 else None
                self._control.play(phrase=args[0], text=None, origin=ORIGIN, language=language)
            elif address == "/kiosk/play_at":
                phrase, at, language = _play_at(args, tags)
                self._control.play(phrase=phrase, text=None, origin=ORIGIN, language=language, at=at)
            elif address == "/kiosk/stop":
                if args:
                    raise CommandError(400, "/kiosk/stop takes no arguments")
                self._control.stop()
            elif address == "/kiosk/volume":
                if len(args) != 1:
                    raise CommandError(400, "/kiosk/volume takes one argument: a whole number from 0 to 100")
                job = asyncio.get_running_loop().create_task(self._volume(args[0], shown, sender))
                self._jobs.add(job)
                job.add_done_callback(self._jobs.discard)
                return
            else:
                raise CommandError(404, f"unknown address '{shown}'; known: {', '.join(ADDRESSES)}")
        except CommandError as exc:
            self._reply(sender, "/kiosk/error", shown, str(exc))
            return
        except Exception as exc:  # never a traceback from a datagram
            log.error("OSC %s failed: %s", shown, exc)
            self._reply(sender, "/kiosk/error", shown, "the command failed")
            return
        self._reply(sender, "/kiosk/ok", shown)

    async def _volume(self, value: Any, shown: str, sender: tuple) -> None:
        try:
            await self._control.volume(value, ORIGIN)
        except CommandError as exc:
            self._reply(sender, "/kiosk/error", shown, str(exc))
        except Exception as exc:
            log.error("OSC %s failed: %s", shown, exc)
            self._reply(sender, "/kiosk/error", shown, "the command failed")
        else:
            self._reply(sender, "/kiosk/ok", shown)

    def _reply(self, sender: tuple, address: str, *args: str) -> None:
        if self._transport is None:
            return
        builder = OscMessageBuilder(address=address)
        for arg in args:
            builder.add_arg(arg[:300])
        try:
            self._transport.sendto(builder.build().dgram, sender)
        except Exception as exc:  # a sender that cannot be answered is not our problem
            log.debug("cannot answer OSC sender %s: %s", sender, exc)


def _play_at(args: list[Any], tags: str) -> tuple[str, float, str | None]:
    """/kiosk/play_at's arguments: (phrase, start time, language or None)."""
    if len(args) not in (2, 3) or not isinstance(args[0], str) or not all(isinstance(a, str) for a in args[2:]):
        raise CommandError(400, PLAY_AT_ARGS)
    at = args[1]
    if tags[1:2] == "f":
        raise CommandError(400, "'at' must be a double, an integer or a string: a 32-bit float is minutes off")
    if isinstance(at, str):
        try:
            at = float(at)
        except ValueError:
            raise CommandError(400, PLAY_AT_ARGS) from None
    return args[0], start_field({"at": at}), args[2] if len(args) == 3 else None


def _type_tags(dgram: bytes) -> str:
    """The message's type tags without the comma ("sd": a string, then a double); "" when it has none."""
    try:
        _, index = osc_types.get_string(dgram, 0)
        tags, _ = osc_types.get_string(dgram, index)
    except osc_types.ParseError:
        return ""
    return tags[1:] if tags.startswith(",") else ""


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, link: OscLink):
        self._link = link

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        try:
            self._link.received(data, addr)
        except Exception as exc:  # the listener must outlive any datagram
            log.error("OSC datagram from %s not handled: %s", addr[0], exc)

    def error_received(self, exc: Exception) -> None:
        log.debug("OSC socket: %s", exc)
