"""`kiosk fleet update FILE --group G | --all | --device ID`: send a release to speakers over the museum's broker.

The archive is checked first (a damaged or wrong file is refused before anything is sent), then served once, for
this run, from this machine by a small HTTP server on an unguessable path (any other request is a 404). The
`update` command with {"url", "sha256", "version"} goes to the speakers (kiosk.fleet.download is their side);
each downloads, checks and hands the release to its updater, which installs it, restarts and rolls back by itself.
Every outcome lands in the speaker's update record, which its retained status carries: one line is printed per
speaker as its result arrives, and the exit is non-zero when any speaker did not update or did not answer within
`--wait` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import ipaddress
import secrets
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from kiosk.commands import CommandError, parse_json
from kiosk.config import PHRASE_ID, MqttConfig, load_config
from kiosk.errors import ConfigError, KioskError
from kiosk.fleet.topics import target_base
from kiosk.update.archive import read_release

#: The results after which nothing more happens to this update on a speaker (kiosk.update.rollout).
FINAL = ("updated", "rolled back", "refused", "failed")
DEFAULT_WAIT_S = 300.0
#: How long the retained availability and status are collected before the command is sent.
BASELINE_S = 1.0
#: How long a download still running when the command ends may take to be cut off.
SHUTDOWN_S = 1.0

Say = Callable[[str], None]


def add_command(fleet_commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    update = fleet_commands.add_parser(
        "update", parents=[common], help="send a release to speakers; each installs it and rolls back if it fails"
    )
    target = update.add_mutually_exclusive_group(required=True)
    target.add_argument("--all", action="store_true", help="every speaker")
    target.add_argument("--group", metavar="G", help="the speakers in group G (mqtt.groups)")
    target.add_argument("--device", metavar="ID", help="one speaker (its mqtt.device_id)")
    update.add_argument("file", metavar="FILE", type=Path, help="a release archive made by 'kiosk release'")
    update.add_argument("--address", help="the host name or IP speakers reach this machine by (default: found)")
    update.add_argument("--bind", default="0.0.0.0", help="the address to serve the file on (default: %(default)s)")
    update.add_argument("--port", type=int, default=0, help="the port to serve it on (default: any free one)")
    update.add_argument(
        "--wait", type=float, default=DEFAULT_WAIT_S, help="seconds to wait for results (default: %(default).0f)"
    )
    update.set_defaults(func=cmd_fleet_update)


def cmd_fleet_update(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    if not cfg.mqtt.enabled:
        raise ConfigError([f"mqtt.host: not set in {args.config}; the fleet commands talk to the museum's broker"])
    for what, name in (("--group", args.group), ("--device", args.device)):
        if name is not None and not PHRASE_ID.fullmatch(name):
            raise ConfigError([f"fleet update: {what} {name!r} is not a name (lowercase letters, digits, '-', '_')"])
    if not 0 <= args.port <= 65535 or not 0 < args.wait <= 24 * 3600:
        raise ConfigError(["fleet update: --port must be 0 to 65535 and --wait 1 s to a day"])
    ok = asyncio.run(
        update_fleet(
            cfg.mqtt,
            args.file,
            device=args.device,
            group=args.group,
            address=args.address,
            bind=args.bind,
            port=args.port,
            wait_s=args.wait,
        )
    )
    return 0 if ok else 1


@dataclass
class Speaker:
    online: bool = False
    groups: list[str] = field(default_factory=list)
    before: dict | None = None  # the update record when the command was sent
    last: dict | None = None  # the newest record about this update
    final: tuple[str, str] | None = None  # (result, message)


async def update_fleet(
    cfg: MqttConfig,
    archive: Path,
    *,
    device: str | None = None,
    group: str | None = None,
    address: str | None = None,
    bind: str = "0.0.0.0",
    port: int = 0,
    wait_s: float = DEFAULT_WAIT_S,
    say: Say = lambda text: print(text, flush=True),
    warn: Say = lambda text: print(text, file=sys.stderr, flush=True),
) -> bool:
    """Send the release in `archive` to one speaker, a group or all; True when every one of them updated."""
    from kiosk.fleet import mqtt  # the MQTT client, only for the fleet commands

    release = await asyncio.to_thread(read_release, archive)  # BadRelease: nothing is sent
    data = await asyncio.to_thread(archive.read_bytes)
    if address is None:
        address = await asyncio.to_thread(route_address, cfg.host, cfg.port)
        if ipaddress.ip_address(address).is_loopback:
            warn(f"note: speakers will fetch from {address}, which only this machine reaches; give --address")
    base = target_base(cfg.prefix, device=device, group=group)
    topics = [f"{cfg.prefix}/+/{kind}" for kind in ("availability", "status", "error")]
    async with serve(data, archive.name, bind, port) as server, mqtt.session(cfg, topics) as talk:
        inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        pump = asyncio.create_task(_pump(talk.messages(), inbox))
        try:
            speakers: dict[str, Speaker] = {}
            await _read(inbox, speakers, cfg.prefix, BASELINE_S, lambda *_: None)
            for speaker in speakers.values():
                speaker.before = speaker.last
            targets = _targets(speakers, device, group, base)
            body = {"url": server.url(address), "sha256": hashlib.sha256(data).hexdigest(), "version": release.version}
            await talk.publish(f"{base}/update", body)
            say(
                f"sent {release.version} ({len(data) // 1024} KB) to {base}/update, served from "
                f"{_url_host(address)}:{server.port}; waiting up to {wait_s:.0f} s for {', '.join(sorted(targets))}"
            )
            follow = _Follow(release.version, f"{base}/update", targets, say)
            await _read(inbox, speakers, cfg.prefix, wait_s, follow.seen, until=follow.finished)
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, KioskError):
                await pump
    return follow.report(speakers, wait_s, server.served)


class _Follow:
    """What the speakers say about this update after it was sent."""

    def __init__(self, version: str, topic: str, targets: set[str], say: Say):
        self.version, self.topic, self.targets, self._say = version, topic, targets, say
        self.results: dict[str, tuple[str, str]] = {}

    def finished(self) -> bool:
        return self.targets <= set(self.results)

    def seen(self, name: str, speaker: Speaker, answer: dict | None) -> None:
        if name in self.results:
            return
        if answer is not None:  # a refusal on the error topic
            if answer.get("command") == "update" and answer.get("topic") == self.topic:
                self._result(name, "refused", str(answer.get("error")))
            return
        record = speaker.last
        if record is None or record == speaker.before or not isinstance(record.get("result"), str):
            return
        ours = record.get("version") == self.version or (name in self.targets and record.get("version") is None)
        if ours and record["result"] in FINAL:
            self._result(name, record["result"], str(record.get("message")))

    def _result(self, name: str, result: str, message: str) -> None:
        self.targets.add(name)  # a speaker that answered was reached, whether expected or not
        self.results[name] = (result, message)
        self._say(f"{_printable(name)}: {result}: {_printable(message)[:300]}")

    def report(self, speakers: dict[str, Speaker], wait_s: float, served: int) -> bool:
        for name in sorted(self.targets - set(self.results)):
            last = speakers[name].last if name in speakers else None
            if last is not None and last != speakers[name].before and last.get("version") == self.version:
                self._say(f"{_printable(name)}: no result within {wait_s:.0f} s (last: {last.get('result')})")
            else:
                self._say(f"{_printable(name)}: no answer within {wait_s:.0f} s")
        updated = sorted(name for name, (result, _) in self.results.items() if result == "updated")
        self._say(f"{len(updated)} of {len(self.targets)} updated to {self.version}; the file was fetched {served}x")
        return len(updated) == len(self.targets)


def _targets(speakers: dict[str, Speaker], device: str | None, group: str | None, base: str) -> set[str]:
    """The speakers online now that the command is for; KioskError when there is none (nothing is sent)."""
    if device is not None:
        if not (device in speakers and speakers[device].online):
            raise KioskError(f"{device} is not online on the broker; nothing was sent")
        return {device}
    online = {name for name, s in speakers.items() if s.online and (group is None or group in s.groups)}
    if not online:
        raise KioskError(f"no speaker online for {base}; nothing was sent ('kiosk fleet status' lists them)")
    return online


async def _pump(messages: AsyncIterator[tuple[str, bytes]], inbox: asyncio.Queue) -> None:
    async for message in messages:
        inbox.put_nowait(message)


async def _read(inbox: asyncio.Queue, speakers: dict[str, Speaker], prefix: str, seconds: float, seen, until=None):
    """Take in what arrives for `seconds` (or `until()` says enough), keeping each speaker's state in `speakers`
    and telling `seen(name, speaker, error_answer)` of each status and error."""
    deadline = time.monotonic() + seconds
    while not (until and until()) and (left := deadline - time.monotonic()) > 0:
        try:
            topic, payload = await asyncio.wait_for(inbox.get(), left)
        except TimeoutError:
            break
        name, _, kind = topic.removeprefix(f"{prefix}/").partition("/")
        if not payload or "/" in kind:
            continue
        speaker = speakers.setdefault(name, Speaker())
        if kind == "availability":
            speaker.online = payload.strip() == b"online"
            continue
        try:
            body = parse_json(payload)
        except CommandError:
            continue
        if not isinstance(body, dict):
            continue
        if kind == "status":
            groups, record = body.get("groups"), body.get("update")
            speaker.groups = [g for g in groups if isinstance(g, str)] if isinstance(groups, list) else []
            speaker.last = record if isinstance(record, dict) else None
            seen(name, speaker, None)
        elif kind == "error":
            seen(name, speaker, body)


@dataclass
class Server:
    port: int
    path: str
    served: int = 0

    def url(self, address: str) -> str:
        return f"http://{_url_host(address)}:{self.port}{self.path}"


@contextlib.asynccontextmanager
async def serve(data: bytes, name: str, bind: str, port: int) -> AsyncIterator[Server]:
    """`data` served at GET /<secret>/<name> on `bind`:`port` until the block ends; anything else is a 404."""
    safe_name = "".join(c if c.isalnum() or c in "-._" else "_" for c in name)[:80] or "release.tar"
    server = Server(0, f"/{secrets.token_urlsafe(24)}/{safe_name}")

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.method != "GET" or request.path != server.path or request.query_string:
            return web.Response(status=404, text="not found\n")
        server.served += 1
        return web.Response(body=data, content_type="application/x-tar")

    runner = web.ServerRunner(web.Server(handle), shutdown_timeout=SHUTDOWN_S)
    await runner.setup()
    try:
        site = web.TCPSite(runner, bind, port)
        try:
            await site.start()
        except OSError as exc:
            raise KioskError(f"cannot serve the file on {bind}:{port} ({exc.strerror or exc})") from exc
        server.port = runner.addresses[0][1]
        yield server
    finally:
        await runner.cleanup()


def route_address(host: str, port: int) -> str:
    """This machine's address on the route to the broker: a UDP socket 'connected' there (no packet is sent)."""
    try:
        family, kind, proto, _, where = socket.getaddrinfo(host.strip(), port, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, kind, proto) as sock:
            sock.connect(where)
            return sock.getsockname()[0]
    except OSError as exc:
        raise KioskError(f"cannot find this machine's address toward {host} ({exc}); give --address") from exc


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)
