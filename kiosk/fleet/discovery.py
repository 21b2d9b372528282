"""Home Assistant MQTT discovery: one device per speaker, published retained under `<discovery_prefix>/`.

The device has a trigger per physical button, a `notify` entity that speaks text (only where api.allow_text), a
`number` for the volume, a `button` to stop, a `switch` to mute, and sensors read from the retained status, among
them "Last refusal": Home Assistant gets no answer to a command it sends, so the speaker's last refusal (also answered
on its error topic) is in the status for it to show. Every entity is available while the availability topic says
online; each names the entity id Home Assistant should give it (`default_entity_id`, Home Assistant 2025.10 on) and
this program as its `origin`; commands are sent at QoS 1.
Payloads follow https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery (abbreviations not used, for
readability).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass

from kiosk import __version__
from kiosk.config import ButtonConfig, Config
from kiosk.fleet.topics import Topics


@dataclass(frozen=True)
class DeviceInfo:
    """What Home Assistant shows about a speaker."""

    version: str
    buttons: tuple[ButtonConfig, ...] = ()
    allow_text: bool = False
    staff_url: str | None = None


ORIGIN = {"name": "kiosk", "sw_version": __version__}
#: The state of the "Last refusal" sensor: the command and the sentence it was refused with (a state is at most 255
#: characters), or "none"; its attributes: the whole refusal (command, topic, status, error, time).
REFUSAL_TEMPLATE = "{% set r = value_json.last_refusal %}{{ (r.command ~ ': ' ~ r.error)[:255] if r else 'none' }}"
REFUSAL_ATTRIBUTES = "{{ (value_json.last_refusal or {}) | tojson }}"
#: The volume's attributes: its last refused set. Home Assistant writes an MQTT entity's state only when its value or
#: attributes change, and a refused set leaves the volume as it was: the refusal's time and words are what make it
#: send its dashboards the volume again, so that a slider moved to the refused value is told where it is.
VOLUME_ATTRIBUTES = (
    "{% set r = value_json.last_refusal %}"
    "{{ ({'refused': r.error, 'refused_at': r.time} if r and r.command == 'volume' else {}) | tojson }}"
)


#: (object id, name, status key, unit, device class, state class, icon)
SENSORS = (
    ("lines_ready", "Lines ready offline", "lines_ready", None, None, "measurement", "mdi:playlist-check"),
    ("last_response", "Last response time", "last_response_ms", "ms", "duration", "measurement", "mdi:timer-outline"),
    ("stutters", "Stutters", "stutters", None, None, "total_increasing", "mdi:waveform"),
    ("presses_today", "Presses today", "presses_today", None, None, "total_increasing", "mdi:gesture-tap-button"),
)


def node_id(device: str) -> str:
    """The node id in discovery topics: the device id kept as it is, so a broker ACL can name it (kiosk_%u)."""
    return f"kiosk_{device}"


def entity_id(component: str, node: str, object_id: str) -> str:
    """The entity id Home Assistant should create: `<component>.<node>_<object id>` in its letters (a-z, 0-9, "_")."""
    slug = re.sub(r"[^a-z0-9]+", "_", f"{node}_{object_id}".lower()).strip("_")
    return f"{component}.{slug}"


def staff_url(cfg: Config, port: int | None = None) -> str | None:
    """The staff page's address for Home Assistant's device page: the first configured host name, else
    <hostname>.local; None when there is none to reach from elsewhere (staff page off, or bound to loopback)."""
    if not cfg.staff.enabled or _loopback(cfg.staff.bind):
        return None
    host = cfg.hostnames[0] if cfg.hostnames else f"{socket.gethostname().lower()}.local"
    return f"http://{host}:{port or cfg.staff.port}/"


def _loopback(bind: str) -> bool:
    if bind.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind.strip()).is_loopback
    except ValueError:
        return False


def wanted(found: list[tuple[str, dict | None]]) -> set[str]:
    """The discovery topics of `messages` that carry an entity (not a removal)."""
    return {topic for topic, payload in found if payload is not None}


def own_filter(discovery_prefix: str, device: str) -> str:
    """The topic filter of every discovery config this speaker may have published."""
    return f"{discovery_prefix}/+/{node_id(device)}/+/config"


def messages(discovery_prefix: str, topics: Topics, info: DeviceInfo) -> list[tuple[str, dict | None]]:
    """Every discovery (topic, payload) for this speaker; publish each retained. A payload of None removes the
    entity (the `notify` entity where free text is not allowed)."""
    node = node_id(topics.device)
    device = {
        "identifiers": [node],
        "name": f"Exhibit speaker {topics.device}",
        "manufacturer": "kiosk",
        "model": "Exhibit speaker",
        "sw_version": info.version,
    }
    if info.staff_url:
        device["configuration_url"] = info.staff_url
    common = {
        "origin": ORIGIN,
        "availability_topic": topics.availability,
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": device,
    }

    def entity(component: str, object_id: str, name: str, **fields) -> tuple[str, dict]:
        payload = {
            "name": name,
            "unique_id": f"{node}_{object_id}",
            "default_entity_id": entity_id(component, node, object_id),
        }
        if "command_topic" in fields:
            payload["qos"] = 1  # a command Home Assistant sends reaches the speaker even over a lossy link
        return f"{discovery_prefix}/{component}/{node}/{object_id}/config", {**payload, **common, **fields}

    out: list[tuple[str, dict | None]] = [
        entity(
            "number",
            "volume",
            "Volume",
            command_topic=topics.own("volume"),
            state_topic=topics.status,
            value_template="{{ value_json.volume }}",
            json_attributes_topic=topics.status,
            json_attributes_template=VOLUME_ATTRIBUTES,
            min=0,
            max=100,
            step=1,
            unit_of_measurement="%",
            mode="slider",
            icon="mdi:volume-high",
        ),
        entity(
            "button", "stop", "Stop speaking", command_topic=topics.own("stop"), payload_press="{}", icon="mdi:stop"
        ),
        entity(
            "switch",
            "mute",
            "Mute",
            command_topic=topics.own("mute"),
            state_topic=topics.status,
            value_template="{{ 'ON' if value_json.muted else 'OFF' }}",
            payload_on="ON",
            payload_off="OFF",
            icon="mdi:volume-off",
        ),
        entity(
            "sensor",
            "state",
            "State",
            state_topic=topics.status,
            value_template="{{ value_json.state }}",
            icon="mdi:account-voice",
        ),
    ]
    out.append(
        entity(
            "sensor",
            "last_refusal",
            "Last refusal",
            state_topic=topics.status,
            value_template=REFUSAL_TEMPLATE,
            json_attributes_topic=topics.status,
            json_attributes_template=REFUSAL_ATTRIBUTES,
            entity_category="diagnostic",
            icon="mdi:alert-circle-outline",
        )
    )
    for object_id, name, key, unit, device_class, state_class, icon in SENSORS:
        fields = {"state_topic": topics.status, "value_template": f"{{{{ value_json.{key} }}}}", "icon": icon}
        fields |= {"state_class": state_class}
        if unit:
            fields["unit_of_measurement"] = unit
        if device_class:
            fields["device_class"] = device_class
        out.append(entity("sensor", object_id, name, **fields))
    say = entity(
        "notify",
        "say",
        "Say",
        command_topic=topics.own("play"),
        command_template="{{ {'text': value} | tojson }}",
        icon="mdi:bullhorn",
    )
    out.append(say if info.allow_text else (say[0], None))
    for button in info.buttons:
        out.append(
            (
                f"{discovery_prefix}/device_automation/{node}/button_{button.pin}/config",
                {
                    "automation_type": "trigger",
                    "topic": topics.action,
                    "payload": f"button_{button.pin}",
                    "type": "button_short_press",
                    "subtype": button.name or f"GPIO {button.pin}",
                    "device": device,
                    "origin": common["origin"],
                },
            )
        )
    return out
