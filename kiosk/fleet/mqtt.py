"""The speaker's link to the museum's MQTT broker; the only module that imports the MQTT client (aiomqtt).

`MqttLink.run` is a supervised child of the service: it connects, says `online` (retained, with `offline` as the
last will), subscribes to the commands for this speaker, its groups and all, publishes Home Assistant discovery,
the retained status (on change, at most once a second) and events, and carries out commands through
`kiosk.fleet.control`. When the broker is down or unreachable the speaker goes on alone and tries again with
back-off (1 s doubling to a minute); staff see the state in the status JSON and the problems list.

Every payload from the broker is untrusted: bounded in size and nesting, NaN and unknown fields refused; a bad
command is answered on `<p>/<id>/error`, never with a crash. A retained command is refused (it would otherwise
replay at every reconnect).

`fleet_status` and `send_command` serve `kiosk fleet status|say`, `session` serves `kiosk fleet update`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiomqtt

from kiosk.commands import MAX_BODY_BYTES, CommandError, parse_json
from kiosk.config import MqttConfig, read_secret_file
from kiosk.errors import ConfigError, KioskError
from kiosk.fleet import discovery
from kiosk.fleet.control import Control
from kiosk.fleet.topics import Topics

log = logging.getLogger(__name__)

FIRST_RETRY_S = 1.0
MAX_RETRY_S = 60.0
#: A connection that lasted this long starts the back-off afresh when it drops.
STABLE_AFTER_S = 30.0
STATUS_MIN_INTERVAL_S = 1.0
#: How often the status is compared with the last one published even when nothing said it changed.
STATUS_CHECK_S = 5.0
GOODBYE_S = 0.3
OUTBOX_LIMIT = 100
SLOW_COMMANDS = ("volume", "mute", "reload")  # they write the settings file and reload: not in the receive loop

Snapshot = Callable[[], Awaitable[dict]]
Discovery = Callable[[], discovery.DeviceInfo]


class MqttLink:
    """One speaker's connection to the broker; `state()` and `problem()` for the status page."""

    def __init__(
        self,
        cfg: MqttConfig,
        *,
        control: Control,
        snapshot: Snapshot,
        device_info: Discovery,
        on_event: Callable[[str], None] = lambda text: None,
    ):
        self.cfg = cfg
        self.topics = Topics(cfg.prefix, cfg.device(), cfg.groups)
        self.broker = f"{cfg.host}:{cfg.port}"
        self._control = control
        self._snapshot = snapshot
        self._device_info = device_info
        self._on_event = on_event
        self._state = "connecting"
        self._error: str | None = None
        self._retry_in: float | None = None
        self._connected = False
        self._up = False  # a connection is up (announced or not): messages may be queued
        self._outbox: asyncio.Queue[tuple[str, bytes, bool]] = asyncio.Queue(OUTBOX_LIMIT)
        self._dirty = asyncio.Event()
        self._rediscover = False
        self._jobs: set[asyncio.Task] = set()

    # -- what the service hands in

    def status_changed(self) -> None:
        self._dirty.set()

    def rediscover(self) -> None:
        """The buttons or free-text setting changed: announce the device to Home Assistant again."""
        self._rediscover = True
        self._dirty.set()

    def publish_event(self, event: dict) -> None:
        self._send(self.topics.event, event)

    def publish_action(self, action: str) -> None:
        self._send(self.topics.action, action)

    # -- what staff see

    def state(self) -> dict:
        return {"state": self._state, "broker": self.broker, "device_id": self.topics.device, "error": self._error}

    def problem(self) -> str | None:
        if self._state != "disconnected":
            return None
        again = f"; trying again in {self._retry_in:.0f} s" if self._retry_in else ""
        return (
            f"Not connected to the MQTT broker {self.broker} ({self._error}): this speaker works on its own, "
            f"but the fleet and Home Assistant cannot see or command it{again}."
        )

    # -- the connection

    async def run(self) -> None:
        """Connect and serve; on any failure wait (back-off) and connect again. Never returns."""
        delay = FIRST_RETRY_S
        while True:
            self._state, self._retry_in = "connecting", None
            started = time.monotonic()
            try:
                await self._session()
                error = "the connection ended"
            except (aiomqtt.MqttError, OSError, ssl.SSLError) as exc:
                error = _plain(exc)
            except ConfigError as exc:
                error = exc.problems[0]
            if self._connected and time.monotonic() - started >= STABLE_AFTER_S:
                delay = FIRST_RETRY_S
            if self._connected or self._error != error:
                self._on_event(f"MQTT broker {self.broker}: {error}; the speaker goes on alone and reconnects")
            self._connected = False
            self._state, self._error = "disconnected", error
            self._retry_in = delay
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # a restarted broker is not hit by all at once
            delay = min(MAX_RETRY_S, delay * 2)

    async def _session(self) -> None:
        async with _client(self.cfg, f"kiosk-{self.topics.device}", will=self.topics.availability) as client:
            try:
                await self._serve(client)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):  # stopping: say so now rather than leave it to the will
                    await asyncio.wait_for(client.publish(self.topics.availability, "offline", 1, True), GOODBYE_S)
                raise

    async def _announce(self, client: aiomqtt.Client) -> None:
        """Online, subscribed, discovered; then the status whenever it changes."""
        await client.publish(self.topics.availability, "online", qos=1, retain=True)
        await client.subscribe([(topic, 1) for topic in self.topics.command_topics()])
        if self.cfg.discovery:
            await client.subscribe(f"{self.cfg.discovery_prefix}/status", qos=1)
            await self._publish_discovery(client)
        self._connected = True
        self._state, self._error = "connected", None
        self._on_event(f"connected to the MQTT broker {self.broker} as {self.topics.device}")
        await self._publish_status(client)

    async def _publish_discovery(self, client: aiomqtt.Client) -> None:
        self._rediscover = False
        for topic, payload in discovery.messages(self.cfg.discovery_prefix, self.topics, self._device_info()):
            body = b"" if payload is None else json.dumps(payload).encode()
            await client.publish(topic, body, qos=1, retain=True)

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Receive, announce and publish side by side: when the connection drops the receiver notices at once and
        ends the others (a publish waiting for its acknowledgement would otherwise wait out its timeout)."""
        while not self._outbox.empty():  # what happened while away is stale now
            self._outbox.get_nowait()
        self._up = True
        tasks = [
            asyncio.create_task(self._receive(client), name="mqtt-receive"),
            asyncio.create_task(self._announce(client), name="mqtt-status"),
            asyncio.create_task(self._send_outbox(client), name="mqtt-outbox"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # the error that ended it
        finally:
            self._up = False
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = message.topic.value
            payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
            if topic == f"{self.cfg.discovery_prefix}/status":
                if bytes(payload).strip() == b"online":  # Home Assistant restarted: it forgot every device
                    await self._publish_discovery(client)
                continue
            command = self.topics.command_of(topic)
            if command is None:
                continue
            if command in SLOW_COMMANDS:
                job = asyncio.create_task(self._command(command, topic, bytes(payload), message.retain))
                self._jobs.add(job)
                job.add_done_callback(self._jobs.discard)
            else:
                await self._command(command, topic, bytes(payload), message.retain)

    async def _command(self, command: str, topic: str, payload: bytes, retained: bool) -> None:
        """Carry out one command; a refusal, or a fault of ours, is answered on the error topic."""
        try:
            if retained:
                raise CommandError(400, "retained commands are refused (they would repeat at every reconnect)")
            await self._control.payload(command, payload, origin="mqtt")
        except CommandError as exc:
            self._answer_error(command, topic, payload, exc.status, str(exc), exc.headers)
        except Exception as exc:  # never a crash or a traceback from a message
            log.error("MQTT command %s on %s failed: %s", command, topic, _plain(exc))
            self._answer_error(command, topic, payload, 500, f"the command failed: {_plain(exc)}", {})

    def _answer_error(self, command: str, topic: str, payload: bytes, status: int, message: str, headers) -> None:
        answer: dict[str, Any] = {"command": command, "topic": topic, "status": status, "error": message}
        request_id = _request_id(payload)
        if request_id is not None:
            answer["id"] = request_id
        if "Retry-After" in headers:
            answer["retry_after_s"] = int(headers["Retry-After"])
        self._send(self.topics.error, answer)

    async def _publish_status(self, client: aiomqtt.Client) -> None:
        """The retained status whenever it differs from the last one sent, at most once a second."""
        last = None
        self._dirty.set()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), STATUS_CHECK_S)
            self._dirty.clear()
            if self._rediscover and self.cfg.discovery:
                await self._publish_discovery(client)
            body = json.dumps(await self._snapshot(), sort_keys=True, default=str)
            if body != last:
                await client.publish(self.topics.status, body, qos=1, retain=True)
                last = body
            await asyncio.sleep(STATUS_MIN_INTERVAL_S)

    async def _send_outbox(self, client: aiomqtt.Client) -> None:
        while True:
            topic, body, retain = await self._outbox.get()
            await client.publish(topic, body, qos=1, retain=retain)

    def _send(self, topic: str, payload: dict | str) -> None:
        """Queue a message while connected; while not, it is dropped (events are of the moment)."""
        if not self._up:
            return
        body = payload.encode() if isinstance(payload, str) else json.dumps(payload, default=str).encode()
        with contextlib.suppress(asyncio.QueueFull):
            self._outbox.put_nowait((topic, body, False))


def _client(cfg: MqttConfig, identifier: str, will: str | None = None) -> aiomqtt.Client:
    """A client for `cfg`: credentials read from the password file, TLS when a CA file is set."""
    password = read_secret_file(cfg.password_file, "mqtt.password_file") if cfg.password_file else None
    return aiomqtt.Client(
        cfg.host.strip(),
        cfg.port,
        username=cfg.username or None,
        password=password,
        identifier=identifier,
        will=aiomqtt.Will(will, "offline", qos=1, retain=True) if will else None,
        keepalive=cfg.keepalive_s,
        tls_params=aiomqtt.TLSParameters(ca_certs=str(cfg.tls_ca_file)) if cfg.tls_ca_file else None,
        timeout=10,
        clean_session=True,
        max_queued_incoming_messages=200,  # a flood of commands is dropped by the client, not queued without end
    )


def _request_id(payload: bytes) -> str | None:
    """The "id" of a play command, to tie an error to its command (only if the payload is sound)."""
    try:
        body = parse_json(payload)
    except CommandError:
        return None
    request_id = body.get("id") if isinstance(body, dict) else None
    return request_id[:255] if isinstance(request_id, str) else None


def _plain(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, aiomqtt.MqttCodeError) and "Connection Refused" in text:
        return "the broker refused the login (check mqtt.username and mqtt.password_file)"
    return text[:300]


# -- `kiosk fleet ...`


async def fleet_status(cfg: MqttConfig, seconds: float = 1.0) -> dict[str, dict]:
    """Every speaker the broker knows under the prefix: {device: {"availability": ..., "status": {...}}}, from the
    retained topics collected for `seconds`."""
    speakers: dict[str, dict] = {}
    async with _connected(cfg) as client:
        await client.subscribe([(f"{cfg.prefix}/+/availability", 0), (f"{cfg.prefix}/+/status", 0)])
        for message in await _collect(client, seconds):
            device, kind = message.topic.value.removeprefix(f"{cfg.prefix}/").split("/", 1)
            payload = message.payload if isinstance(message.payload, bytes) else b""
            if not payload or len(payload) > MAX_BODY_BYTES:
                continue
            entry = speakers.setdefault(device, {"availability": None, "status": {}})
            if kind == "availability":
                entry["availability"] = payload.decode("utf-8", "replace")[:20]
            else:
                with contextlib.suppress(CommandError):
                    status = parse_json(payload)
                    entry["status"] = status if isinstance(status, dict) else {}
    return dict(sorted(speakers.items()))


async def send_command(cfg: MqttConfig, base: str, command: str, body: dict, seconds: float = 1.0) -> list[dict]:
    """Publish one command to `base` (a speaker, a group or all) and return the errors speakers answered with
    within `seconds`, each with its "device"."""
    request_id = body.setdefault("id", uuid.uuid4().hex) if command == "play" else None
    errors = []
    async with _connected(cfg) as client:
        await client.subscribe(f"{cfg.prefix}/+/error", qos=1)
        await client.publish(f"{base}/{command}", json.dumps(body), qos=1)
        for message in await _collect(client, seconds):
            payload = message.payload if isinstance(message.payload, bytes) else b""
            with contextlib.suppress(CommandError):
                answer = parse_json(payload)
                if isinstance(answer, dict) and (request_id is None or answer.get("id") == request_id):
                    device = message.topic.value.removeprefix(f"{cfg.prefix}/").split("/", 1)[0]
                    errors.append({"device": device, **answer})
    return errors


class Session:
    """A command line's conversation with the broker (kiosk.fleet.update): publish, and read what arrives."""

    def __init__(self, client: aiomqtt.Client):
        self._client = client

    async def publish(self, topic: str, body: dict) -> None:
        await self._client.publish(topic, json.dumps(body), qos=1)

    async def messages(self) -> AsyncIterator[tuple[str, bytes]]:
        """(topic, payload) of each message on the topics subscribed, the retained ones first."""
        async for message in self._client.messages:
            yield message.topic.value, message.payload if isinstance(message.payload, bytes) else b""


@contextlib.asynccontextmanager
async def session(cfg: MqttConfig, topics: list[str]) -> AsyncIterator[Session]:
    async with _connected(cfg) as client:
        await client.subscribe([(topic, 1) for topic in topics])
        yield Session(client)


@contextlib.asynccontextmanager
async def _connected(cfg: MqttConfig):
    try:
        async with _client(cfg, f"kiosk-cli-{os.getpid()}-{uuid.uuid4().hex[:6]}") as client:
            yield client
    except (aiomqtt.MqttError, OSError, ssl.SSLError) as exc:
        raise KioskError(f"cannot reach the MQTT broker {cfg.host}:{cfg.port} ({_plain(exc)})") from exc


async def _collect(client: aiomqtt.Client, seconds: float) -> list[aiomqtt.Message]:
    got: list[aiomqtt.Message] = []

    async def gather() -> None:
        async for message in client.messages:
            got.append(message)

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(gather(), seconds)
    return got
