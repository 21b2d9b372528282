"""Home Assistant's side of the fleet, over a real Mosquitto broker: retained commands refused however they come,
stale discovery emptied, refusals HA can see, the discovery schema of HA 2025.10, QoS 1 commands, a quiet reconnect,
and `kiosk doctor`'s broker check."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import time

import aiomqtt
import jinja2
import pytest
from mosquitto import Watcher, free_port
from test_fleet_mqtt import online, speakers, status_of, until

from kiosk import doctor
from kiosk.config import ButtonConfig, load_config, parse_config
from kiosk.fleet import discovery
from kiosk.fleet import mqtt as fleet_mqtt
from kiosk.fleet.discovery import DeviceInfo, staff_url
from kiosk.fleet.topics import Topics


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-secret")
    monkeypatch.setattr(fleet_mqtt, "FIRST_RETRY_S", 0.2)
    monkeypatch.setattr(fleet_mqtt, "MAX_RETRY_S", 1.0)
    monkeypatch.setattr(fleet_mqtt, "STATUS_CHECK_S", 0.5)
    monkeypatch.setattr(fleet_mqtt, "STATUS_MIN_INTERVAL_S", 0.2)


def ha_render(template: str, payload: bytes) -> str:
    """A discovery value template rendered as Home Assistant renders it (value_json: the payload parsed)."""
    return jinja2.Environment().from_string(template).render(value_json=json.loads(payload), value=payload.decode())


async def retained_on(port: int, topic_filter: str, seconds: float = 0.5) -> dict[str, bytes]:
    """What the broker retains under `topic_filter`, as a fresh subscriber gets it."""
    async with Watcher(port, (topic_filter,)) as fresh:
        await asyncio.sleep(seconds)
    return {s.topic: s.payload for s in fresh.seen if s.retain and s.payload}


# -- 1. a retained command is refused however it comes


async def test_a_retained_play_while_connected_is_refused_and_a_plain_one_spoken(tmp_path, server, broker):
    async with Watcher(broker.port) as watch, speakers(tmp_path, server, broker.port, ("solo", [])) as (solo,):
        await watch.wait_for(status_of("solo"))
        sent = time.monotonic()
        await watch.publish("kiosk/solo/play", json.dumps({"phrase": "welcome"}), retain=True)
        error = await watch.wait_for(lambda s: s.topic == "kiosk/solo/error", after=sent)
        assert json.loads(error.payload)["error"].startswith("retained commands are refused")
        await asyncio.sleep(0.3)
        assert solo.origins == []  # not spoken
        await watch.publish("kiosk/solo/play", b"", retain=True)  # cleared: no command, no answer
        await watch.publish("kiosk/solo/play", json.dumps({"phrase": "quartz"}))
        await until(lambda: solo.origins == [("mqtt", "quartz")])
        assert len([s for s in watch.on("kiosk/solo/error") if s.at >= sent]) == 1


# -- 2. stale discovery is emptied


def with_buttons(path, *pins) -> None:
    text = path.read_text()
    start = text.index("buttons:\n")
    end = text.index("phrases:\n")
    lines = "".join(f"  - {{pin: {pin}, phrase: welcome, name: Case {pin}}}\n" for pin in pins)
    path.write_text(text[:start] + "buttons:\n" + lines + text[end:])


TRIGGER = "homeassistant/device_automation/kiosk_solo/button_{}/config"


async def test_a_removed_button_leaves_no_trigger_behind_on_reload_and_at_start(tmp_path, server, broker):
    async with speakers(tmp_path, server, broker.port, ("solo", [])) as (solo,):
        with_buttons(solo.config, 17, 22)
        assert await solo.service.reload()
        async with Watcher(broker.port, ("homeassistant/#",)) as ha:
            await ha.wait_for(lambda s: s.topic == TRIGGER.format(22) and s.payload)
        with_buttons(solo.config, 17)
        assert await solo.service.reload()
        async with Watcher(broker.port, ("homeassistant/#",)) as ha:
            await ha.wait_for(lambda s: s.topic == TRIGGER.format(22) and not s.payload)  # emptied
        retained = await retained_on(broker.port, "homeassistant/#")
        assert TRIGGER.format(17) in retained and TRIGGER.format(22) not in retained
        config = solo.config

    # left on the broker by an earlier run (here: put there by hand); this run has no button 5
    async with Watcher(broker.port) as watch:
        await watch.publish(TRIGGER.format(5), json.dumps({"automation_type": "trigger"}), retain=True)
        await watch.publish("homeassistant/device_automation/kiosk_other/button_5/config", b"{}", retain=True)
    assert TRIGGER.format(5) in await retained_on(broker.port, "homeassistant/#")
    with_buttons(config, 17)
    async with Watcher(broker.port, ("homeassistant/#",)) as ha, speakers(tmp_path, server, broker.port, ("solo", [])):
        # emptied once the speaker has read what the broker keeps for it (a moment after it connects)
        await ha.wait_for(lambda s: s.topic == TRIGGER.format(5) and not s.payload, timeout=10)
        retained = await retained_on(broker.port, "homeassistant/#")
        assert TRIGGER.format(5) not in retained and TRIGGER.format(17) in retained
        assert "homeassistant/device_automation/kiosk_other/button_5/config" in retained  # another's: left alone


# -- 3. refusals Home Assistant can see


async def test_an_over_long_notify_shows_in_last_refusal_and_a_refused_volume_snaps_back(tmp_path, server, broker):
    async with Watcher(broker.port) as watch, speakers(tmp_path, server, broker.port, ("solo", [])) as (solo,):
        await watch.wait_for(status_of("solo"))
        configs = {s.topic: json.loads(s.payload) for s in watch.seen if s.topic.startswith("homeassistant/")}
        sensor = configs["homeassistant/sensor/kiosk_solo/last_refusal/config"]
        assert sensor["state_topic"] == "kiosk/solo/status"
        first = watch.on("kiosk/solo/status")[-1]
        assert ha_render(sensor["value_template"], first.payload) == "none"
        assert ha_render(sensor["json_attributes_template"], first.payload) == "{}"

        notify = configs["homeassistant/notify/kiosk_solo/say/config"]
        sent = time.monotonic()
        await watch.publish(
            notify["command_topic"], jinja2.Template(notify["command_template"]).render(value="x" * 5000)
        )
        status = await watch.wait_for(
            lambda s: s.topic == "kiosk/solo/status" and json.loads(s.payload)["last_refusal"], after=sent
        )
        shown = ha_render(sensor["value_template"], status.payload)
        assert shown == "play: 'text' is 5000 characters; the limit is 4096"
        attributes = json.loads(ha_render(sensor["json_attributes_template"], status.payload))
        assert attributes["status"] == 400 and attributes["topic"] == "kiosk/solo/play" and attributes["time"]

        # volume: set once; then the rate limit's tokens are spent (as a burst of presses would) and a set is refused
        await watch.publish("kiosk/solo/volume", b"35")
        await watch.wait_for(status_of("solo", volume=35))
        sent = time.monotonic()
        while solo.service.app.allow_trigger() is None:
            pass
        await watch.publish("kiosk/solo/volume", b"80")
        error = await watch.wait_for(lambda s: s.topic == "kiosk/solo/error", after=sent)
        assert json.loads(error.payload)["status"] == 429
        again = await watch.wait_for(
            lambda s: s.topic == "kiosk/solo/status" and json.loads(s.payload)["last_refusal"]["command"] == "volume",
            after=sent,
        )
        assert json.loads(again.payload)["volume"] == 35 and again.retain is False  # HA's slider goes back to 35
        volume = configs["homeassistant/number/kiosk_solo/volume/config"]
        assert ha_render(volume["value_template"], again.payload) == "35"


async def test_a_refused_volume_resends_the_status_even_when_nothing_else_changed(tmp_path, server, broker):
    async with Watcher(broker.port) as watch, speakers(tmp_path, server, broker.port, ("solo", [])):
        await watch.wait_for(status_of("solo"))
        for _ in range(2):
            sent = time.monotonic()
            await watch.publish("kiosk/solo/volume", b"101")  # refused the same way twice
            await watch.wait_for(lambda s: s.topic == "kiosk/solo/error", after=sent)
            await watch.wait_for(lambda s: s.topic == "kiosk/solo/status", after=sent)


# -- 6. the discovery schema of Home Assistant 2025.10, commands at QoS 1


def test_discovery_names_default_entity_ids_and_the_origin_and_commands_go_at_qos_1():
    topics = Topics("kiosk", "hall-2.quartz")
    info = DeviceInfo(version="1.2.3", buttons=(ButtonConfig(pin=17, phrase="welcome"),), allow_text=True)
    for topic, payload in discovery.messages("homeassistant", topics, info):
        assert "object_id" not in payload and payload["origin"]["name"] == "kiosk"
        assert payload["origin"]["sw_version"]
        component = topic.split("/")[1]
        if component == "device_automation":
            assert "default_entity_id" not in payload
            continue
        domain, _, slug = payload["default_entity_id"].partition(".")
        assert domain == component and slug.startswith("kiosk_hall_2_quartz_"), payload["default_entity_id"]
        assert slug.replace("_", "").isalnum() and slug == slug.lower() and "__" not in slug
        if "command_topic" in payload:
            assert payload["qos"] == 1, topic
    found = dict(discovery.messages("homeassistant", topics, info))
    volume = found["homeassistant/number/kiosk_hall-2.quartz/volume/config"]
    assert volume["default_entity_id"] == "number.kiosk_hall_2_quartz_volume"


async def test_fleet_say_publishes_its_command_at_qos_1(tmp_path, broker):
    cfg = parse_config(f"mqtt:\n  host: 127.0.0.1\n  port: {broker.port}\n").mqtt
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="qos-watch") as watch:
        await watch.subscribe("kiosk/group/hall/play", qos=1)
        await fleet_mqtt.send_command(cfg, "kiosk/group/hall", "play", {"phrase": "welcome"}, seconds=0.1)
        message = await asyncio.wait_for(anext(aiter(watch.messages)), 5)
        assert message.qos == 1 and json.loads(message.payload)["phrase"] == "welcome"


# -- 7. a quiet reconnect, the staff page's address, the doctor's broker check


async def test_a_keepalive_timeout_reconnects_with_one_line_and_no_traceback(tmp_path, server, broker, caplog):
    caplog.set_level(logging.DEBUG)
    async with speakers(tmp_path, server, broker.port, ("solo", [])) as (solo,):
        async with Watcher(broker.port) as watch:
            await watch.wait_for(online("solo"))
        link = solo.service.fleet.mqtt
        loop = asyncio.get_running_loop()
        # what aiomqtt does when the connection dropped between scheduling and registering its socket
        dead = socket.socket()
        fd = dead.fileno()
        dead.close()
        loop.call_soon(loop.add_writer, fd, lambda: None)
        os.kill(broker.proc.pid, signal.SIGSTOP)  # past the keepalive (5 s): the client gives up on it
        try:
            await until(lambda: link.state()["state"] == "disconnected", timeout=20)
        finally:
            os.kill(broker.proc.pid, signal.SIGCONT)
        await until(lambda: link.state()["state"] == "connected", timeout=20)
    tracebacks = [r for r in caplog.records if r.exc_info or "Exception in callback" in r.getMessage()]
    assert tracebacks == []
    lines = [e for e in solo.service.app.events if "MQTT broker" in e["text"] and "reconnects" in e["text"]]
    assert [e.get("count", 1) for e in lines] == [1], lines


def test_the_staff_page_address_is_left_out_when_it_is_loopback_only_or_off():
    base = "hostnames: [hall-2.museum.lan]\nstaff:\n  port: 8000\n"
    assert staff_url(parse_config(base)) == "http://hall-2.museum.lan:8000/"
    for bind in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert staff_url(parse_config(base + f"  bind: '{bind}'\n")) is None, bind
    assert staff_url(parse_config(base + "  enabled: false\n")) is None


def test_doctor_checks_the_broker_ok_and_unreachable(tmp_path, broker):
    ok = parse_config(f"mqtt:\n  host: 127.0.0.1\n  port: {broker.port}\n")
    assert doctor.broker(ok) == ("ok", f"127.0.0.1:{broker.port} accepts this speaker (anonymously, no TLS)")
    closed = free_port()
    level, detail = doctor.broker(parse_config(f"mqtt:\n  host: 127.0.0.1\n  port: {closed}\n"))
    assert level == "fail" and detail.startswith(f"cannot reach the broker at 127.0.0.1:{closed}: ")
    assert "\n" not in detail and "refused" in detail.lower(), detail
    # no broker configured (the example config): no broker check at all
    example = load_config(doctor.Path(__file__).parent.parent / "config" / "kiosk.yaml")
    assert not example.mqtt.enabled
