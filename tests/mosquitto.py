"""A real Mosquitto broker for the fleet tests, on a free loopback port, and a test's own MQTT client to watch it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def need_mosquitto() -> str:
    """The mosquitto binary; a test without it is skipped with the reason, or fails in CI (CI=true)."""
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None
    )
    if found:
        return found
    reason = "the mosquitto broker is not installed (apt-get install mosquitto, or ./install.sh --dev --test)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


class Broker:
    """`mosquitto -c` with a two-line config: a listener on 127.0.0.1:<port>, anonymous clients allowed."""

    def __init__(self, workdir: Path):
        self.binary = need_mosquitto()
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n")
        self.log = workdir / "mosquitto.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + 5
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not start: {self.log.read_text()[-1000:]}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None


@dataclass
class Seen:
    topic: str
    payload: bytes
    retain: bool
    at: float

    @property
    def text(self) -> str:
        return self.payload.decode()


class Watcher:
    """The test's own MQTT client: every message under `topics`, in order of arrival."""

    def __init__(self, port: int, topics: tuple[str, ...] = ("#",)):
        self.port, self.topics = port, topics
        self.seen: list[Seen] = []
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> Watcher:
        self._client = aiomqtt.Client("127.0.0.1", self.port, identifier=f"watcher-{free_port()}")
        await asyncio.wait_for(self._client.__aenter__(), 10)
        for topic in self.topics:
            await self._client.subscribe(topic, qos=1)
        self._task = asyncio.create_task(self._collect())
        return self

    async def __aexit__(self, *exc) -> None:
        if self._task:
            self._task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._client.__aexit__(None, None, None), 2)

    async def _collect(self) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            async for message in self._client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else b""
                self.seen.append(Seen(message.topic.value, payload, message.retain, time.monotonic()))

    async def publish(self, topic: str, payload: str | bytes, retain: bool = False) -> None:
        await asyncio.wait_for(self._client.publish(topic, payload, qos=1, retain=retain), 10)

    async def wait_for(self, match: Callable[[Seen], bool], timeout: float = 10, after: float = 0.0) -> Seen:
        """The first message (arrived after `after`, a time.monotonic()) that `match`es, waiting up to `timeout`."""

        async def poll() -> Seen:
            while True:
                for seen in self.seen:
                    if seen.at >= after and match(seen):
                        return seen
                await asyncio.sleep(0.02)

        try:
            return await asyncio.wait_for(poll(), timeout)
        except TimeoutError:
            topics = sorted({s.topic for s in self.seen})
            raise AssertionError(f"no matching message within {timeout} s; topics seen: {topics}") from None

    def on(self, topic: str) -> list[Seen]:
        return [s for s in self.seen if s.topic == topic]
