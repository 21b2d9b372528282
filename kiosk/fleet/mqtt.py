"""The speaker's link to the museum's MQTT broker; the only module that imports the MQTT client (aiomqtt).

`MqttLink.run` is a supervised child of the service: it connects, says `online` (retained, with `offline` as the
last will), subscribes to the commands for this speaker, its groups and all, publishes Home Assistant discovery,
the retained status (on change, at most once a second) and events, and carries out commands through
`kiosk.fleet.control`. When the broker is down or unreachable the speaker goes on alone and tries again with
back-off (1 s doubling to a minute); staff see the state in the status JSON and the problems list.

Every payload from the broker is untrusted: bounded in size and nesting, NaN and unknown fields refused; a bad
command is answered on `<p>/<id>/error` and kept as the status's `last_refusal` (kiosk.fleet.refusals), never with a
crash. A retained command is refused, whenever it comes: MQTT 5's retain-as-published shows the retain flag on
messages delivered live as well as on the replay at subscribing. An empty retained message on a command topic is
someone clearing a retained command, not a command: it is let pass.

Discovery topics this speaker published once and wants no more (a button removed) are emptied on the broker, so that
Home Assistant forgets them: those published since it started, and at each connect those the broker still retains.

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

import aiomqtt
from aiomqtt.exceptions import MqttConnectError  # not exported by aiomqtt itself
from paho.mqtt.subscribeoptions import SubscribeOptions

from kiosk.commands import CommandError
from kiosk.config import MqttConfig, read_secret_file
from kiosk.errors import ConfigError, KioskError
from kiosk.fleet import discovery, fleet_cli, refusals, stale_sockets
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
#: After Home Assistant's birth message each speaker sends its (also retained) discovery after a random delay up to
#: this: a fleet's configs (13 per speaker) arrive spread over seconds, not in one burst (bench/fleet.py --fifty).
BIRTH_SPREAD_S = 5.0
#: How long, at most, to wait for the broker's retained discovery configs of this speaker after subscribing.
SWEEP_S = 2.0

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
        self._discovered: set[str] = set()  # discovery topics published with an entity (to empty when unwanted)
        self._sweeping: set[str] | None = None  # at connect: this speaker's discovery topics the broker retains
        self._last_refusal: dict | None = None
        self._resend_status = False

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
        stale_sockets.quiet(asyncio.get_running_loop())
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
            except Exception as exc:  # the client library's own fault: one line, and connect again
                error = f"{type(exc).__name__}: {_plain(exc)}"
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
        live_retain = SubscribeOptions(qos=1, retainAsPublished=True)  # a retained command shows as one, always
        await client.subscribe([(topic, live_retain) for topic in self.topics.command_topics()])
        if self.cfg.discovery:
            await self._sweep(client)
            await client.subscribe(f"{self.cfg.discovery_prefix}/status", qos=1)
            await self._publish_discovery(client)
        self._connected = True
        self._state, self._error = "connected", None
        self._on_event(f"connected to the MQTT broker {self.broker} as {self.topics.device}")
        await self._publish_status(client)

    async def _sweep(self, client: aiomqtt.Client) -> None:
        """Learn which discovery configs of this speaker the broker retains (from an earlier run or config), so that
        `_publish_discovery` empties those no longer wanted. The broker sends them right after the subscription;
        a round trip to it after that (a QoS 1 publish) shows they have all arrived."""
        own = discovery.own_filter(self.cfg.discovery_prefix, self.topics.device)
        self._sweeping = set()
        try:
            await client.subscribe(own, options=SubscribeOptions(qos=1, noLocal=True))
            await client.publish(self.topics.availability, "online", qos=1, retain=True)
            deadline = time.monotonic() + SWEEP_S
            while len(client.messages) and time.monotonic() < deadline:  # the receiver takes what came
                await asyncio.sleep(0.01)
            await asyncio.sleep(0)
            await client.unsubscribe(own)
        finally:
            found, self._sweeping = self._sweeping, None
        self._discovered |= found

    async def _publish_discovery(self, client: aiomqtt.Client) -> None:
        """Every entity this speaker has, and an empty retained config for each it had and has no more."""
        self._rediscover = False
        found = discovery.messages(self.cfg.discovery_prefix, self.topics, self._device_info())
        wanted = discovery.wanted(found)
        removed = [(topic, None) for topic in sorted(self._discovered - wanted) if topic not in dict(found)]
        for topic, payload in [*found, *removed]:
            body = b"" if payload is None else json.dumps(payload).encode()
            await client.publish(topic, body, qos=1, retain=True)
            (self._discovered.discard if payload is None else self._discovered.add)(topic)

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

    def _later(self, work) -> None:  # beside the receive loop, a reference kept until it is done
        job = asyncio.create_task(work)
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    async def _discover_again(self, client: aiomqtt.Client) -> None:
        await asyncio.sleep(random.uniform(0, BIRTH_SPREAD_S))
        with contextlib.suppress(aiomqtt.MqttError):  # the connection dropped meanwhile: the next one announces all
            await self._publish_discovery(client)

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = message.topic.value
            payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
            if topic == f"{self.cfg.discovery_prefix}/status":
                if bytes(payload).strip() == b"online":  # Home Assistant restarted: it forgot every device
                    self._later(self._discover_again(client))
                continue
            if self._sweeping is not None and topic.endswith("/config") and message.retain and payload:
                self._sweeping.add(topic)
                continue
            command = self.topics.command_of(topic)
            if command is None or (message.retain and not payload):  # the clearing of a retained command
                continue
            if command in SLOW_COMMANDS:
                self._later(self._command(command, topic, bytes(payload), message.retain))
            else:
                await self._command(command, topic, bytes(payload), message.retain)

    async def _command(self, command: str, topic: str, payload: bytes, retained: bool) -> None:
        """Carry out one command; a refusal, or a fault of ours, is answered on the error topic."""
        try:
            if retained:
                raise CommandError(400, refusals.RETAINED)
            await self._control.payload(command, payload, origin="mqtt")
        except CommandError as exc:
            self._answer_error(command, topic, payload, exc.status, str(exc), exc.headers)
        except Exception as exc:  # never a crash or a traceback from a message
            log.error("MQTT command %s on %s failed: %s", command, topic, _plain(exc))
            self._answer_error(command, topic, payload, 500, f"the command failed: {_plain(exc)}", {})

    def _answer_error(self, command: str, topic: str, payload: bytes, status: int, message: str, headers) -> None:
        """On the error topic, and in the status (Home Assistant's "Last refusal"); a refused volume or mute sends
        the status again even if nothing else changed, so that Home Assistant shows the value the speaker has."""
        answer = refusals.answer(command, topic, payload, status, message, headers)
        self._send(self.topics.error, answer)
        self._last_refusal = refusals.last_refusal(answer)
        self._resend_status = self._resend_status or command in refusals.STATEFUL
        self._dirty.set()

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
            status = {**await self._snapshot(), "last_refusal": self._last_refusal}
            body = json.dumps(status, sort_keys=True, default=str)
            if body != last or self._resend_status:
                self._resend_status = False
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


def _client(cfg: MqttConfig, identifier: str, will: str | None = None, timeout: float = 10) -> aiomqtt.Client:
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
        timeout=timeout,
        protocol=aiomqtt.ProtocolVersion.V5,  # for retain-as-published (Mosquitto 2 and most brokers speak it)
        clean_start=True,  # and no session kept after a disconnect (MQTT 5's session expiry defaults to 0)
        max_queued_incoming_messages=200,  # a flood of commands is dropped by the client, not queued without end
    )


LOGIN_REFUSED = (4, 5, 134, 135)  # MQTT 3.1.1 and 5: bad user name or password, not authorized


def _plain(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, MqttConnectError) and getattr(exc.rc, "value", exc.rc) in LOGIN_REFUSED:
        return "the broker refused the login (check mqtt.username and mqtt.password_file)"
    return text[:300]


async def probe(cfg: MqttConfig, timeout: float = 5.0) -> str | None:
    """Connect and disconnect with `cfg`'s credentials and TLS (kiosk doctor): None, or why not in one line."""
    try:
        async with asyncio.timeout(timeout):
            async with _client(cfg, f"kiosk-doctor-{os.getpid()}-{uuid.uuid4().hex[:6]}", timeout=timeout):
                return None
    except TimeoutError:
        return f"no answer within {timeout:.0f} s"
    except (aiomqtt.MqttError, OSError, ssl.SSLError) as exc:
        return _plain(exc)
    except ConfigError as exc:
        return exc.problems[0]


# -- `kiosk fleet ...`


async def fleet_status(cfg: MqttConfig, seconds: float = 1.0) -> dict[str, dict]:
    """Every speaker the broker knows under the prefix (kiosk.fleet.fleet_cli.status_of)."""
    async with _connected(cfg) as client:
        return await fleet_cli.status_of(client, cfg.prefix, seconds)


async def send_command(cfg: MqttConfig, base: str, command: str, body: dict, seconds: float = 1.0) -> list[dict]:
    """Publish one command at QoS 1 and return the refusals answered (kiosk.fleet.fleet_cli.command)."""
    async with _connected(cfg) as client:
        return await fleet_cli.command(client, cfg.prefix, base, command, body, seconds)


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
