"""Home Assistant MQTT discovery: one device per speaker, published retained under `<discovery_prefix>/`.

The device has a trigger per physical button, a `notify` entity that speaks text (only where api.allow_text), a
`number` for the volume, a `button` to stop, a `switch` to mute, and sensors read from the retained status.
Every entity is available while the speaker's availability topic says online.
Payloads follow https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery (abbreviations not used, for
readability).
"""

from __future__ import annotations

from dataclasses import dataclass

from kiosk.config import ButtonConfig
from kiosk.fleet.topics import Topics


@dataclass(frozen=True)
class DeviceInfo:
    """What Home Assistant shows about a speaker."""

    version: str
    buttons: tuple[ButtonConfig, ...] = ()
    allow_text: bool = False
    staff_url: str | None = None


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
        "availability_topic": topics.availability,
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": device,
    }

    def entity(component: str, object_id: str, name: str, **fields) -> tuple[str, dict]:
        payload = {"name": name, "unique_id": f"{node}_{object_id}", "object_id": f"{node}_{object_id}"}
        return f"{discovery_prefix}/{component}/{node}/{object_id}/config", {**payload, **common, **fields}

    out: list[tuple[str, dict | None]] = [
        entity(
            "number",
            "volume",
            "Volume",
            command_topic=topics.own("volume"),
            state_topic=topics.status,
            value_template="{{ value_json.volume }}",
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
                },
            )
        )
    return out
