"""Fleet control without a broker: command payloads by the HTTP API's rules, Home Assistant discovery payloads,
the topic contract, and the `mqtt:` and `osc:` config sections."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiosk.commands import CommandError
from kiosk.config import ButtonConfig, default_device_id, load_config, parse_config
from kiosk.errors import ConfigError
from kiosk.fleet.control import Control, switch_of, volume_of
from kiosk.fleet.discovery import DeviceInfo, messages
from kiosk.fleet.topics import Topics, target_base
from kiosk.speaker import Rejected, Request

EXAMPLE = Path(__file__).parent.parent / "config" / "kiosk.yaml"


PLAY_FIELDS = "at, id, language, phrase, text"


class FakeBackend:
    """The service as the commands see it: plays what is configured, refuses what is not, rate-limited on demand."""

    def __init__(self, config_path=None, allow_text=False):
        self.cfg = parse_config(f"api:\n  allow_text: {str(allow_text).lower()}\nphrases:\n  welcome: Welcome.\n")
        self.config_path = config_path
        self.played: list[tuple] = []
        self.retry_after: float | None = None
        self.events: list[str] = []
        self.settings_lock = asyncio.Lock()

    def play(self, *, phrase, text, origin, language=None):
        if phrase is not None and phrase not in self.cfg.phrases:
            raise Rejected(f"no phrase '{phrase}'", "unknown_phrase")
        if text is not None and not self.cfg.api.allow_text:
            raise Rejected("free text is disabled (api.allow_text: false)", "text_disabled")
        self.played.append((phrase, text, origin))
        return Request(id=f"r{len(self.played)}", text=text or phrase, origin=origin, phrase=phrase)

    def stop_speaking(self):
        return bool(self.played)

    def allow_trigger(self):
        return self.retry_after

    async def reload(self):
        self.cfg = load_config(self.config_path)
        return True

    def event(self, text):
        self.events.append(text)


async def refusal(control: Control, command: str, payload: bytes) -> tuple[int, str]:
    with pytest.raises(CommandError) as caught:
        await control.payload(command, payload, origin="mqtt")
    return caught.value.status, str(caught.value)


@pytest.mark.parametrize(
    ("command", "payload", "status", "message"),
    [
        ("play", b"{", 400, "body must be JSON"),
        ("play", b'{"phrase": Infinity}', 400, "body must be JSON"),
        ("play", b"[1]", 400, "body must be a JSON object"),
        ("play", b'{"phrase": "welcome", "speed": 2}', 400, "unknown field(s): speed; allowed: " + PLAY_FIELDS),
        ("play", b"[" * 9 + b"]" * 9, 400, "body is nested more than 8 levels deep"),
        ("play", b" " * 20_000, 413, "request body too large"),
        ("play", b'{"phrase": "welcome", "text": "hi"}', 400, "give exactly one of 'phrase' or 'text'"),
        ("play", b'{"text": "   "}', 400, "'text' is empty"),
        ("play", b'{"text": "hello"}', 403, "free text is disabled (api.allow_text: false)"),
        ("play", b'{"phrase": "gone"}', 404, "no phrase 'gone'"),
        ("play", b'{"phrase": "welcome", "id": ""}', 400, "'id' must be 1 to 255 printable characters"),
        ("play", b"\xff\xfe\x00", 400, "body must be JSON"),
        ("stop", b"now", 400, "body must be JSON"),
        ("volume", b"true", 400, "'volume' must be a whole number from 0 to 100"),
        ("volume", b"-1", 400, "'volume' must be a whole number from 0 to 100"),
        ("volume", b"1e400", 400, "'volume' must be a whole number from 0 to 100"),
        ("volume", b'"50"', 400, "'volume' must be a whole number from 0 to 100"),
        ("mute", b"", 400, "send ON or OFF"),
        ("reload", b'{"force": true}', 400, "unknown field(s): force; allowed: "),
        ("shout", b"", 404, "unknown command 'shout'; known: play, stop, volume, mute, reload"),
    ],
)
async def test_bad_payloads_are_refused_in_the_http_apis_words(command, payload, status, message):
    assert await refusal(Control(FakeBackend()), command, payload) == (status, message)


async def test_play_stop_rate_limit_and_idempotency():
    backend = FakeBackend(allow_text=True)
    control = Control(backend)
    first = await control.payload("play", b'{"phrase": "welcome", "id": "cue-12"}', origin="mqtt")
    again = await control.payload("play", b'{"phrase": "welcome", "id": "cue-12"}', origin="mqtt")
    assert first == {"id": "r1", "state": "queued"} and again == {**first, "replayed": True}
    assert await refusal(control, "play", b'{"text": "Hello", "id": "cue-12"}') == (
        422,
        "this Idempotency-Key was already used for a different request",
    )
    await control.payload("play", b'{"text": "Hello there"}', origin="mqtt")
    assert backend.played == [("welcome", None, "mqtt"), (None, "Hello there", "mqtt")]
    backend.retry_after = 1.4
    with pytest.raises(CommandError) as caught:
        await control.payload("play", b'{"phrase": "welcome"}', origin="mqtt")
    assert (caught.value.status, str(caught.value), caught.value.headers) == (
        429,
        "too many requests",
        {"Retry-After": "1"},
    )
    assert await control.payload("stop", b"", origin="mqtt") == {"stopped": True}  # stop is never rate-limited
    assert await control.payload("stop", b"{}", origin="mqtt") == {"stopped": True}


async def test_volume_and_mute_go_through_the_staff_settings_file(tmp_path):
    settings = tmp_path / "settings.yaml"
    config = tmp_path / "kiosk.yaml"
    config.write_text(f"staff:\n  settings_file: {settings}\naudio:\n  volume: 80\nphrases:\n  welcome: Welcome.\n")
    backend = FakeBackend(config)
    backend.cfg = load_config(config)
    control = Control(backend)
    assert await control.payload("volume", b'{"volume": 55.0}', origin="mqtt") == {"volume": 55}
    assert backend.cfg.audio.volume == 55 and "audio:\n  volume: 55" in settings.read_text()
    assert await control.payload("mute", b"on", origin="mqtt") == {"muted": True, "volume": 0}
    assert await control.payload("mute", b"ON", origin="mqtt") == {"muted": True, "volume": 0}  # already
    assert await control.payload("mute", b"false", origin="mqtt") == {"muted": False, "volume": 55}
    assert backend.events == ["volume set to 55 % (mqtt)", "muted (mqtt)", "unmuted (mqtt)"]
    settings.write_text("phrases: 5\n")  # broken by hand: refused with the config's own words, nothing saved
    status, message = await refusal(control, "volume", b"20")
    assert status == 422 and "phrases: must be a mapping of id: text, not a whole number" in message
    assert settings.read_text() == "phrases: 5\n" and backend.cfg.audio.volume == 55


async def test_volume_needs_a_config_file_to_save_into():
    assert await refusal(Control(FakeBackend()), "volume", b"30") == (
        409,
        "the volume cannot be saved: this speaker was started without a config file",
    )


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.recursive(st.none() | st.booleans() | st.floats() | st.text(), st.lists))
async def test_no_payload_ever_escapes_as_anything_but_a_command_error(payload):
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    control = Control(FakeBackend(allow_text=True))
    for command in ("play", "stop", "volume", "mute"):
        try:
            await control.payload(command, raw, origin="mqtt")
        except CommandError as exc:
            assert 400 <= exc.status < 500 and str(exc)


def test_volume_of_and_switch_of():
    assert [volume_of(v) for v in (0, 100, 42.0)] == [0, 100, 42]
    for bad in (math.nan, math.inf, 100.5, 101, -0.5, None, "5", True, [5]):
        with pytest.raises(CommandError):
            volume_of(bad)
    assert switch_of(b" On\n") is True and switch_of(b"OFF") is False and switch_of(b"true") is True


def test_topics_route_commands_for_this_speaker_its_groups_and_all_only():
    topics = Topics("museum/kiosk", "hall-a", ("hall", "floor1"))
    assert topics.availability == "museum/kiosk/hall-a/availability"
    assert topics.command_of("museum/kiosk/hall-a/play") == "play"
    assert topics.command_of("museum/kiosk/all/stop") == "stop"
    assert topics.command_of("museum/kiosk/group/floor1/volume") == "volume"
    assert topics.command_of("museum/kiosk/group/lobby/play") is None
    assert topics.command_of("museum/kiosk/lobby-b/play") is None
    assert topics.command_of("museum/kiosk/hall-a/status") is None
    assert len(topics.command_topics()) == 4 * 6  # play, stop, volume, mute, reload, update
    assert target_base("kiosk", group="hall") == "kiosk/group/hall"
    assert target_base("kiosk", device="x") == "kiosk/x" and target_base("kiosk") == "kiosk/all"


def test_discovery_payloads_are_json_with_the_required_keys():
    topics = Topics("kiosk", "hall-a")
    buttons = (ButtonConfig(pin=17, phrase="welcome", name="Entrance case"), ButtonConfig(pin=22, action="stop"))
    info = DeviceInfo(version="1.2.3", buttons=buttons, allow_text=False, staff_url="http://hall-a.local:8000/")
    found = dict(messages("homeassistant", topics, info))
    assert found.pop("homeassistant/notify/kiosk_hall-a/say/config") is None  # no free text: the entity is removed
    triggers = {t: p for t, p in found.items() if "/device_automation/" in t}
    assert {p["subtype"] for p in triggers.values()} == {"Entrance case", "GPIO 22"}
    for topic, payload in found.items():
        assert topic.startswith("homeassistant/") and topic.endswith("/config")
        json.dumps(payload, allow_nan=False)
        assert payload["device"]["identifiers"] == ["kiosk_hall-a"]
        assert payload["device"]["configuration_url"] == "http://hall-a.local:8000/"
        assert payload["device"]["sw_version"] == "1.2.3"
        if topic in triggers:
            assert {"automation_type", "topic", "type", "subtype", "payload"} <= set(payload)
        else:
            assert {"name", "unique_id", "availability_topic"} <= set(payload)
            assert ("state_topic" in payload) or ("command_topic" in payload)
    with_text = dict(messages("homeassistant", topics, DeviceInfo(version="1", allow_text=True)))
    say = with_text["homeassistant/notify/kiosk_hall-a/say/config"]
    assert say["command_topic"] == "kiosk/hall-a/play" and "tojson" in say["command_template"]


def test_config_sections_are_off_by_default_and_checked(tmp_path):
    example = load_config(EXAMPLE)
    assert not example.mqtt.enabled and not example.osc.enabled
    assert example.mqtt.prefix == "kiosk" and example.mqtt.discovery and example.mqtt.port == 1883
    assert default_device_id("Hall-2.Museum.lan") == "hall-2-museum-lan"

    secret = tmp_path / "mqtt.pass"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    base = f"mqtt:\n  host: broker.lan\n  username: hall\n  password_file: {secret}\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(base)
    assert caught.value.problems == [
        f"mqtt.password_file: {secret} can be read by others (mode 0644); make it private: chmod 600 {secret}"
    ]
    secret.chmod(0o600)
    assert parse_config(base).mqtt.password_file == secret

    for text, problem in [
        ("mqtt:\n  device_id: all\n", "mqtt.device_id: 'all' is a reserved topic level; choose another name"),
        ("mqtt:\n  host: broker.lan\n  password_file: /x\n", "mqtt.username: must be set when mqtt.password_file is"),
        ("mqtt:\n  host: 'a b'\n", "mqtt.host: 'a b' is not a host name or address"),
        ("mqtt:\n  groups: ['#']\n", "mqtt.groups[0]: '#' is not 1-64 lowercase letters, digits, '-' or '_', "),
        ("mqtt:\n  prefix: kiosk/\n", "mqtt.prefix: 'kiosk/' is not MQTT topic levels of letters, digits, "),
        ("osc:\n  bind: everywhere\n", "osc.bind: 'everywhere' is not an IP address"),
        ("osc:\n  allow_from: [qlab]\n", "osc.allow_from[0]: 'qlab' is not an IP address"),
        ("mqtt:\n  hots: x\n", "mqtt.hots: unknown key (did you mean 'host'?)"),
    ]:
        with pytest.raises(ConfigError) as caught:
            parse_config(text)
        assert caught.value.problems[0].startswith(problem), caught.value.problems
