"""Fleet and show control: `mqtt:` (the museum's broker) and `osc:` (show controllers over UDP)."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from kiosk.config.fields import _bounded

#: One MQTT topic level naming a speaker or a group: lowercase, so that a topic is spelled one way.
_TOPIC_LEVEL = {
    "pattern": re.compile(r"[a-z0-9][a-z0-9_-]{0,63}"),
    "pattern_help": "1-64 lowercase letters, digits, '-' or '_', starting with a letter or digit",
}
_TOPIC_PREFIX = {
    "pattern": re.compile(r"(?=.{1,100}$)[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*"),
    "pattern_help": "MQTT topic levels of letters, digits, '-' and '_', separated by '/' (no wildcards)",
}


@dataclass(frozen=True)
class MqttConfig:
    """Fleet control through the museum's MQTT broker (off while `host` is empty); see kiosk.fleet."""

    host: str | None = None  # empty: off
    port: int = _bounded(1883, 1, 65535)
    prefix: str = field(default="kiosk", metadata=_TOPIC_PREFIX)
    device_id: str | None = None  # empty: this machine's host name, lowercased
    username: str | None = None
    password_file: Path | None = None  # mode 0600: a file others can read is refused
    tls_ca_file: Path | None = None  # set: TLS, the broker's certificate checked against this CA
    groups: tuple[str, ...] = field(default=(), metadata=_TOPIC_LEVEL)
    discovery: bool = True  # Home Assistant MQTT discovery
    discovery_prefix: str = field(default="homeassistant", metadata=_TOPIC_PREFIX)
    keepalive_s: int = _bounded(30, 5, 3600)  # a speaker gone silent is reported offline after about 1.5 times this
    # `kiosk fleet update`: off unless the operator turns it on, since whoever may publish commands on the broker
    # could then install a program on the speaker.
    accept_updates: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.host and self.host.strip())

    def device(self) -> str:
        """This speaker's name in topics: `device_id`, else the host name lowercased (made a valid topic level)."""
        return self.device_id or default_device_id()


def default_device_id(hostname: str | None = None) -> str:
    """The host name as one topic level: lowercase, any other character than a-z 0-9 - _ made '-'."""
    name = re.sub(r"[^a-z0-9_-]", "-", (hostname or socket.gethostname()).lower()).strip("-_")[:64]
    return name or "kiosk"


@dataclass(frozen=True)
class OscConfig:
    """OSC show control over UDP: /kiosk/play <phrase>, /kiosk/stop, /kiosk/volume <0-100>. Off by default."""

    enabled: bool = False
    bind: str = "127.0.0.1"
    port: int = _bounded(9000, 0, 65535)  # 0: any free port
    allow_from: tuple[str, ...] = ()  # addresses of show controllers; empty: any sender that can reach `bind`
