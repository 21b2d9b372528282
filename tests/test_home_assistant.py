"""The speaker against a real Home Assistant Core (tests/home_assistant.py), over a real Mosquitto: what HA itself
reports about the device, its entities and triggers, refusals, mute, a removed button and an HA restart.

Opt-in (`KIOSK_HA_TESTS=1`): the first run installs Home Assistant into /var/tmp/ha-venv. One HA, one broker and
one speaker (a `kiosk run` process, its line already cached) serve the whole module, so the tests run in order.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from fake_openai import FakeOpenAI
from home_assistant import HomeAssistant, HomeAssistantUnavailable, ha_venv
from mosquitto import Broker, Seen

pytestmark = pytest.mark.skipif(
    os.environ.get("KIOSK_HA_TESTS") != "1", reason="a real Home Assistant: set KIOSK_HA_TESTS=1 to run"
)

ROOT = Path(__file__).parent.parent
DEVICE = "hall"
NODE = f"kiosk_{DEVICE}"
WELCOME = "Welcome to the hall of minerals."
BUTTONS = {17: "Entrance case", 27: "Quartz case"}
#: Six tokens, one more every 10 s: a burst of six plays leaves none for a volume set.
RATE_LIMIT_PER_MIN = 6
#: What HA's log says when it rejects or cannot use a discovery payload.
DISCOVERY_ERRORS = re.compile(r"extra keys not allowed|Invalid config|Unable to parse|not a valid|schema", re.I)


def speaker_config(home: Path, server_url: str, broker_port: int, buttons: dict[int, str]) -> Path:
    """kiosk.yaml as bench/fleet_fifty.py writes it: the `null` device, no staff page, free text allowed (for HA's
    notify), a small rate limit, discovery on."""
    home.mkdir(parents=True, exist_ok=True)
    lines = "".join(f"  - {{pin: {pin}, name: {name}, phrase: welcome}}\n" for pin, name in buttons.items())
    path = home / "kiosk.yaml"
    path.write_text(
        f"openai:\n  base_url: {server_url}/v1\ncache:\n  dir: {home / 'cache'}\n"
        f"history:\n  file: {home / 'history.sqlite3'}\naudio:\n  device: 'null'\n  volume: 60\n"
        f"staff:\n  enabled: false\n  settings_file: {home / 'settings.yaml'}\n"
        f"api:\n  port: 0\n  allow_text: true\n  rate_limit_per_min: {RATE_LIMIT_PER_MIN}\n"
        "captions:\n  enabled: false\nclock:\n  check: false\n"
        f"mqtt:\n  host: 127.0.0.1\n  port: {broker_port}\n  device_id: {DEVICE}\n  discovery: true\n"
        f"phrases:\n  welcome: {WELCOME}\nbuttons:\n{lines}"
    )
    return path


async def warm_cache(home: Path, broker_port: int) -> None:
    """The line made once against the loopback test server, so that the speaker needs no voice afterwards."""
    async with FakeOpenAI() as server:
        config = speaker_config(home, server.url, broker_port, BUTTONS)
        done = await asyncio.create_subprocess_exec(
            str(ROOT / ".venv" / "bin" / "kiosk"), "cache", "warm", "--config", str(config),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=speaker_env(),
        )  # fmt: skip
        output = (await asyncio.wait_for(done.communicate(), 60))[0].decode()
        if done.returncode != 0:
            raise RuntimeError(f"kiosk cache warm failed: {output[-1000:]}")


def speaker_env() -> dict[str, str]:
    return {**os.environ, "OPENAI_API_KEY": "sk-test-not-secret", "GPIOZERO_PIN_FACTORY": "mock"}


class Listener:
    """The test's own MQTT client on `#` (paho in its own thread: the tests here are plain functions)."""

    def __init__(self, port: int):
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"ha-test-{os.getpid()}")
        self._client.on_message = self._on_message
        self._client.on_connect = lambda client, *_: client.subscribe("#", qos=1)
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()

    def _on_message(self, _client, _userdata, message) -> None:
        with self._lock:
            self.seen.append(Seen(message.topic, bytes(message.payload), bool(message.retain), time.monotonic()))

    def wait_for(self, match: Callable[[Seen], bool], timeout: float = 15, after: float = 0.0) -> Seen:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                found = next((s for s in self.seen if s.at >= after and match(s)), None)
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no matching MQTT message within {timeout} s")

    def status(self) -> dict:
        """The speaker's last status."""
        with self._lock:
            last = [s for s in self.seen if s.topic == f"kiosk/{DEVICE}/status" and s.payload][-1]
        return json.loads(last.payload)

    def stop(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


@dataclass
class Rig:
    ha: HomeAssistant
    broker: Broker
    speaker: subprocess.Popen
    config: Path
    home: Path
    mqtt: Listener

    def device(self) -> dict:
        found = [d for d in self.ha.devices() if ["mqtt", NODE] in d["identifiers"]]
        assert len(found) == 1, found
        return found[0]

    def entity_ids(self) -> dict[str, str]:
        """HA's entity id of each of the speaker's entities, by the object id in its unique id."""
        prefix = f"{NODE}_"
        return {
            e["unique_id"].removeprefix(prefix): e["entity_id"]
            for e in self.ha.entities()
            if e["platform"] == "mqtt" and e["unique_id"].startswith(prefix)
        }

    def button_triggers(self) -> list[tuple[str, str]]:
        triggers = self.ha.triggers(self.device()["id"])
        return sorted((t["type"], t["subtype"]) for t in triggers if t["domain"] == "mqtt")


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    try:
        hass = ha_venv()
    except HomeAssistantUnavailable as exc:
        pytest.skip(str(exc))
    tmp = tmp_path_factory.mktemp("home-assistant")
    broker = Broker(tmp).start()
    home = tmp / "speaker"
    asyncio.run(warm_cache(home, broker.port))
    config = speaker_config(home, "http://127.0.0.1:9", broker.port, BUTTONS)  # no voice: the line is cached
    listener = Listener(broker.port)
    ha = HomeAssistant(hass, tmp / "ha", broker.port)
    speaker = None
    try:
        ha.start()
        with open(home / "kiosk.log", "ab") as log:
            kiosk = [str(ROOT / ".venv" / "bin" / "kiosk"), "run", "--config", str(config)]
            speaker = subprocess.Popen(kiosk, stdout=log, stderr=log, env=speaker_env(), start_new_session=True)
        yield Rig(ha, broker, speaker, config, home, listener)
    finally:
        if speaker is not None:
            speaker.terminate()
            try:
                speaker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                speaker.kill()
                speaker.wait(timeout=5)
        ha.kill()
        listener.stop()
        broker.stop()


def number(state: dict) -> float | None:
    try:
        return float(state["state"])
    except ValueError:
        return None


def until(check: Callable[[], object], timeout: float = 15, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()
        except (AssertionError, KeyError, IndexError):
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.2)


def discovery_errors(rig: Rig) -> list[str]:
    return [line for line in rig.ha.log_lines() if "mqtt" in line.lower() and DISCOVERY_ERRORS.search(line)]


# -- the device, its entities and triggers


#: object id (from the unique id) -> HA domain: everything the speaker announces with free text allowed.
ENTITIES = {
    "volume": "number",
    "stop": "button",
    "mute": "switch",
    "state": "sensor",
    "last_refusal": "sensor",
    "lines_ready": "sensor",
    "last_response": "sensor",
    "stutters": "sensor",
    "presses_today": "sensor",
    "say": "notify",
}


def test_the_speaker_is_one_device_with_its_entities_and_button_triggers(rig):
    until(lambda: len(rig.entity_ids()) == len(ENTITIES), timeout=30, what="every entity in HA's registry")
    device = rig.device()
    assert device["name"] == f"Exhibit speaker {DEVICE}" and device["manufacturer"] == "kiosk"
    ids = rig.entity_ids()
    assert {key: entity.split(".")[0] for key, entity in ids.items()} == ENTITIES
    registry = {e["entity_id"]: e for e in rig.ha.entities()}
    assert all(registry[entity]["device_id"] == device["id"] for entity in ids.values())
    # every entity is available (the availability topic says online) with a state read from the status
    volume = rig.ha.wait_state(ids["volume"], lambda s: s["state"] not in ("unavailable", "unknown"))
    assert float(volume["state"]) == 60
    assert rig.ha.wait_state(ids["last_refusal"], lambda s: s["state"] != "unavailable")["state"] == "none"
    assert rig.ha.wait_state(ids["mute"], lambda s: s["state"] != "unavailable")["state"] == "off"
    assert rig.button_triggers() == sorted(("button_short_press", name) for name in BUTTONS.values())
    assert discovery_errors(rig) == []


def test_ha_2025_4_ignores_default_entity_id_and_names_the_entities_itself(rig):
    """HA before 2025.10 does not know `default_entity_id`: accepted (no entity lost), but the ids are its own."""
    ids = until(lambda: len(rig.entity_ids()) == len(ENTITIES) and rig.entity_ids(), what="entities")
    # from the device's name and the entity's, not `number.kiosk_hall_volume` as HA 2025.10 would make it
    assert ids == {
        "volume": "number.exhibit_speaker_hall_volume",
        "stop": "button.exhibit_speaker_hall_stop_speaking",
        "mute": "switch.exhibit_speaker_hall_mute",
        "state": "sensor.exhibit_speaker_hall_state",
        "last_refusal": "sensor.exhibit_speaker_hall_last_refusal",
        "lines_ready": "sensor.exhibit_speaker_hall_lines_ready_offline",
        "last_response": "sensor.exhibit_speaker_hall_last_response_time",
        "stutters": "sensor.exhibit_speaker_hall_stutters",
        "presses_today": "sensor.exhibit_speaker_hall_presses_today",
        "say": "notify.exhibit_speaker_hall_say",
    }


# -- mute, volume, refusals


def test_mute_on_then_off_brings_back_the_last_audible_volume(rig):
    ids = rig.entity_ids()

    def set_45() -> None:
        assert rig.ha.call("number", "set_value", {"entity_id": ids["volume"], "value": 45})[0] == 200
        rig.ha.wait_state(ids["volume"], lambda s: number(s) == 45)

    # what a dashboard is sent when the value does change (the refused set below counts on the same subscription)
    assert any(ids["volume"] in change for change in rig.ha.changes_during(ids["volume"], set_45, seconds=1))
    assert rig.ha.call("switch", "turn_on", {"entity_id": ids["mute"]})[0] == 200
    rig.ha.wait_state(ids["mute"], lambda s: s["state"] == "on")
    assert float(rig.ha.state(ids["volume"])["state"]) == 0
    assert rig.ha.call("switch", "turn_off", {"entity_id": ids["mute"]})[0] == 200
    rig.ha.wait_state(ids["mute"], lambda s: s["state"] == "off")
    rig.ha.wait_state(ids["volume"], lambda s: number(s) == 45)
    assert rig.mqtt.status()["volume"] == 45


def test_a_volume_out_of_range_is_refused_by_ha_itself(rig):
    ids = rig.entity_ids()
    sent = time.monotonic()
    status, _ = rig.ha.call("number", "set_value", {"entity_id": ids["volume"], "value": 101})
    # HA 2025.4's REST API answers its own ServiceValidationError with a 500; the log says why
    assert status >= 400
    said = f"Value 101.0 for {ids['volume']} is outside valid range"
    until(lambda: any(said in line for line in rig.ha.log_lines()), 5, "HA's log line")  # the log is written later
    time.sleep(0.5)
    assert not [s for s in rig.mqtt.seen if s.topic == f"kiosk/{DEVICE}/volume" and s.at >= sent]  # never sent


def spend_tokens(rig: Rig) -> None:
    """The rate limit's tokens spent, as a burst of presses would (the line plays from the cache). HA's MQTT
    messages reach the speaker in order: a command sent after these finds no token left."""
    for _ in range(RATE_LIMIT_PER_MIN):
        play = {"topic": f"kiosk/{DEVICE}/play", "payload": json.dumps({"phrase": "welcome"})}
        assert rig.ha.call("mqtt", "publish", play)[0] == 200


def refused_set(rig: Rig, value: int) -> float:
    """A volume set from HA that the speaker refuses (429); when it was sent."""
    spend_tokens(rig)
    sent = time.monotonic()
    assert rig.ha.call("number", "set_value", {"entity_id": rig.entity_ids()["volume"], "value": value})[0] == 200
    error = rig.mqtt.wait_for(lambda s: s.topic == f"kiosk/{DEVICE}/error", after=sent)
    assert json.loads(error.payload)["status"] == 429
    return sent


def test_a_rate_limited_volume_shows_in_last_refusal_and_ha_keeps_the_real_value(rig):
    ids = rig.entity_ids()
    assert rig.ha.call("number", "set_value", {"entity_id": ids["volume"], "value": 35})[0] == 200
    rig.ha.wait_state(ids["volume"], lambda s: number(s) == 35)
    sent = refused_set(rig, 80)
    refusal = rig.ha.wait_state(ids["last_refusal"], lambda s: s["state"].startswith("volume: "))
    assert refusal["attributes"]["status"] == 429 and refusal["attributes"]["command"] == "volume"
    assert "retry_after_s" in refusal["attributes"]
    # the status was sent again after the refusal; HA's number state is the speaker's, not the 80 asked for
    rig.mqtt.wait_for(lambda s: s.topic == f"kiosk/{DEVICE}/status", after=sent)
    assert number(rig.ha.state(ids["volume"])) == 35 and rig.mqtt.status()["volume"] == 35


def test_after_a_refused_set_ha_tells_its_frontend_the_volume_again(rig):
    volume = rig.entity_ids()["volume"]
    outcome: dict[str, float] = {}

    def refuse() -> None:
        try:
            outcome["sent"] = refused_set(rig, 90)
            rig.mqtt.wait_for(lambda s: s.topic == f"kiosk/{DEVICE}/status", after=outcome["sent"])
        except AssertionError as exc:  # not the finding: the refusal itself did not happen
            outcome["error"] = str(exc)

    changes = rig.ha.changes_during(volume, refuse, seconds=3)
    if "error" in outcome:
        pytest.fail(f"the set was not refused as planned: {outcome['error']}")
    assert any(volume in change for change in changes), changes


def test_an_over_long_notify_is_answered_in_last_refusal(rig):
    ids = rig.entity_ids()
    sent = time.monotonic()
    status, _ = rig.ha.call("notify", "send_message", {"entity_id": ids["say"], "message": "x" * 5000})
    assert status == 200  # HA only publishes; the speaker's answer is the sensor
    rig.mqtt.wait_for(lambda s: s.topic == f"kiosk/{DEVICE}/error", after=sent)
    refusal = rig.ha.wait_state(ids["last_refusal"], lambda s: s["state"].startswith("play: "))
    assert refusal["state"] == "play: 'text' is 5000 characters; the limit is 4096"
    assert refusal["attributes"]["status"] == 400 and refusal["attributes"]["topic"] == f"kiosk/{DEVICE}/play"


def test_a_retained_command_from_ha_is_refused(rig):
    ids = rig.entity_ids()
    stop = {"topic": f"kiosk/{DEVICE}/stop", "payload": "{}", "retain": True}
    assert rig.ha.call("mqtt", "publish", stop)[0] == 200
    try:
        refusal = rig.ha.wait_state(ids["last_refusal"], lambda s: s["state"].startswith("stop: "))
        assert "retained commands are refused" in refusal["state"]
    finally:
        assert rig.ha.call("mqtt", "publish", {**stop, "payload": ""})[0] == 200  # cleared on the broker


# -- a removed button, an HA restart


def test_a_button_removed_and_the_speaker_reloaded_leaves_no_trigger_in_ha(rig):
    before = dict(BUTTONS)
    assert len(rig.button_triggers()) == len(before)
    text = rig.config.read_text()
    rig.config.write_text(text.replace("  - {pin: 27, name: Quartz case, phrase: welcome}\n", ""))
    os.kill(rig.speaker.pid, signal.SIGHUP)  # what `systemctl reload` sends
    until(lambda: rig.button_triggers() == [("button_short_press", "Entrance case")], 20, "the trigger gone")
    assert discovery_errors(rig) == []


def test_volume_sets_one_after_another_are_rate_limited(rig):
    volume = rig.entity_ids()["volume"]
    refused = []
    for value in range(41, 41 + 2 * RATE_LIMIT_PER_MIN):  # twice the burst, within a few seconds
        sent = time.monotonic()
        assert rig.ha.call("number", "set_value", {"entity_id": volume, "value": value})[0] == 200
        done = until(lambda sent=sent, value=value: _error_after(rig, sent) or number(rig.ha.state(volume)) == value)
        if isinstance(done, dict):
            refused.append((value, done["status"]))
    assert refused, "none of the volume sets was refused"


def _error_after(rig: Rig, sent: float) -> dict | None:
    errors = [s for s in list(rig.mqtt.seen) if s.topic == f"kiosk/{DEVICE}/error" and s.at >= sent]
    return json.loads(errors[0].payload) if errors else None


def test_ha_restarted_finds_the_device_again_and_the_speaker_announces_itself(rig):
    ids = until(lambda: len(rig.entity_ids()) == len(ENTITIES) and rig.entity_ids(), what="entities")
    rig.ha.stop()
    stopped = time.monotonic()
    rig.ha.start()
    # HA's birth message (`homeassistant/status` online) has the speaker send its discovery again within 5 s
    birth = rig.mqtt.wait_for(
        lambda s: s.topic == "homeassistant/status" and s.payload == b"online", timeout=30, after=stopped
    )
    again = rig.mqtt.wait_for(
        lambda s: s.topic == f"homeassistant/number/{NODE}/volume/config" and not s.retain, 10, after=birth.at
    )
    assert again.at - birth.at <= 5.5
    assert rig.entity_ids() == ids and rig.device()["name"] == f"Exhibit speaker {DEVICE}"
    volume = rig.ha.wait_state(ids["volume"], lambda s: s["state"] not in ("unavailable", "unknown"))
    assert float(volume["state"]) == rig.mqtt.status()["volume"]
    assert rig.button_triggers() == [("button_short_press", "Entrance case")]
    assert discovery_errors(rig) == []
