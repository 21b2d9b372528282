"""Fleet control over a real Mosquitto broker: two speakers in one process, `kiosk run` killed, the broker
restarted, Home Assistant discovery, and `kiosk fleet status|say` as a staff member runs them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import file_sink_opener
from fake_openai import pcm_for
from gpiozero.pins.mock import MockFactory
from mosquitto import Watcher

from kiosk.config import load_config
from kiosk.fleet import mqtt as fleet_mqtt
from kiosk.service import Service
from kiosk.systemd import Notifier

WELCOME = "Welcome to the hall of minerals."
QUARTZ = "Quartz grows as six-sided prisms."
STATUS_KEYS = {"state", "lines_ready", "lines_configured", "volume", "problems", "version", "muted", "presses_today"}


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-secret")
    monkeypatch.setattr(fleet_mqtt, "FIRST_RETRY_S", 0.2)  # reconnect within the tests' waits
    monkeypatch.setattr(fleet_mqtt, "MAX_RETRY_S", 1.0)
    monkeypatch.setattr(fleet_mqtt, "STATUS_CHECK_S", 0.5)  # lines made ready by warming show up soon


def write_config(tmp_path: Path, name: str, server_url: str, port: int, groups=(), extra="") -> Path:
    home = tmp_path / name
    home.mkdir(exist_ok=True)
    path = home / "kiosk.yaml"
    path.write_text(
        f"openai:\n  base_url: {server_url}/v1\n  first_byte_timeout_s: 2\n"
        f"cache:\n  dir: {home / 'cache'}\n"
        f"history:\n  file: {home / 'history.sqlite3'}\n"
        f"staff:\n  enabled: false\n  settings_file: {home / 'settings.yaml'}\n"
        f"api:\n  port: 0\n  allow_text: true\n"
        f"mqtt:\n  host: 127.0.0.1\n  port: {port}\n  device_id: {name}\n  groups: {list(groups)}\n"
        f"  keepalive_s: 5\n{extra}"
        f"buttons:\n  - {{pin: 17, phrase: welcome, name: Entrance case}}\n"
        f"phrases:\n  welcome: {WELCOME}\n  quartz: {QUARTZ}\n"
    )
    return path


class Speaker:
    def __init__(self, service: Service, out: Path, config: Path, pins: MockFactory):
        self.service, self.out, self.config, self.pins = service, out, config, pins

    @property
    def origins(self) -> list[tuple[str, str | None]]:
        return [(r.origin, r.phrase) for r in self.service.speaker.history.values()]

    async def idle(self) -> None:
        await asyncio.wait_for(self.service.speaker.idle(), 10)


@contextlib.asynccontextmanager
async def speakers(tmp_path, server, broker_port, *specs, extra=""):
    """Started services, one per (name, groups); each has its own ALSA `file` device and mock GPIO pins. `extra`:
    more lines for the mqtt: section of each config."""
    started = []
    try:
        for name, groups in specs:
            config = write_config(tmp_path, name, server.url, broker_port, groups, extra)
            out = tmp_path / name / "alsa-out.raw"
            pins = MockFactory()
            service = Service(
                load_config(config),
                config_path=config,
                open_sink=file_sink_opener(f"file:FILE={out},FORMAT=raw"),
                pin_factory=pins,
                notifier=Notifier({}),
            )
            await asyncio.wait_for(service.start(), 10)
            started.append(Speaker(service, out, config, pins))
        yield started
    finally:
        for speaker in started:
            await speaker.service.stop()


def online(name):
    return lambda seen: seen.topic == f"kiosk/{name}/availability" and seen.text == "online"


def status_of(name, **want):
    def match(seen):
        if seen.topic != f"kiosk/{name}/status":
            return False
        status = json.loads(seen.payload)
        return all(status.get(k) == v for k, v in want.items())

    return match


async def until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.02)


async def test_all_and_group_commands_reach_the_right_speakers(tmp_path, server, broker):
    async with (
        Watcher(broker.port) as watch,
        speakers(tmp_path, server, broker.port, ("hall-a", ["hall"]), ("lobby-b", ["lobby"])) as (a, b),
    ):
        await watch.wait_for(online("hall-a"))
        await watch.wait_for(online("lobby-b"))

        await watch.publish("kiosk/all/play", json.dumps({"phrase": "welcome"}))
        await until(lambda: len(a.origins) == 1 and len(b.origins) == 1)
        await a.idle()
        await b.idle()
        assert a.origins == b.origins == [("mqtt", "welcome")]
        assert a.out.read_bytes().startswith(pcm_for(WELCOME)) and b.out.read_bytes().startswith(pcm_for(WELCOME))

        await watch.publish("kiosk/group/hall/play", json.dumps({"phrase": "quartz"}))
        await until(lambda: len(a.origins) == 2)
        await a.idle()
        await asyncio.sleep(0.2)  # time enough for a stray command to reach the other speaker
        assert a.origins[-1] == ("mqtt", "quartz") and len(b.origins) == 1
        assert pcm_for(QUARTZ) in a.out.read_bytes() and pcm_for(QUARTZ) not in b.out.read_bytes()

        played = await watch.wait_for(lambda s: s.topic == "kiosk/hall-a/event" and b'"played"' in s.payload)
        event = json.loads(played.payload)
        assert event["origin"] == "mqtt" and event["line"] in ("welcome", "quartz") and event["source"]
        assert event["response_ms"] > 0 and not played.retain

        a.pins.pin(17).drive_low()  # a visitor presses the physical button on speaker A
        a.pins.pin(17).drive_high()
        await watch.wait_for(lambda s: s.topic == "kiosk/hall-a/action" and s.text == "button_17")
        press = await watch.wait_for(lambda s: s.topic == "kiosk/hall-a/event" and b'"press"' in s.payload)
        assert json.loads(press.payload)["origin"] == "button:17"
        await watch.wait_for(status_of("hall-a", presses_today=1))

        # the same play twice with one "id" speaks once
        count = len(b.origins)
        for _ in range(2):
            await watch.publish("kiosk/lobby-b/play", json.dumps({"phrase": "quartz", "id": "show-17"}))
        await until(lambda: len(b.origins) == count + 1)
        await asyncio.sleep(0.2)
        assert len(b.origins) == count + 1


BAD_COMMANDS = [
    ("play", b"not json", 400, "body must be JSON"),
    ("play", b'{"phrase": NaN}', 400, "body must be JSON"),
    ("play", b'{"phrase": "welcome", "loud": true}', 400, "unknown field(s): loud; allowed: at, id, language, phrase"),
    ("play", b'{"phrase": ' + b"[" * 20 + b"]" * 20 + b"}", 400, "body is nested more than 8 levels deep"),
    ("play", b'{"text": "' + b"x" * 20_000 + b'"}', 413, "request body too large"),
    ("play", b'{"phrase": 7}', 400, "'phrase' must be a string"),
    ("play", b"{}", 400, "give exactly one of 'phrase' or 'text'"),
    ("play", b'{"phrase": "nope", "id": "x1"}', 404, "no phrase 'nope'"),
    ("volume", b"101", 400, "'volume' must be a whole number from 0 to 100"),
    ("volume", b"NaN", 400, "body must be JSON"),
    ("volume", b'{"volume": 50, "x": 1}', 400, "unknown field(s): x; allowed: volume"),
    ("mute", b"maybe", 400, "send ON or OFF"),
    ("stop", b'{"now": 1}', 400, "unknown field(s): now; allowed: "),
]


async def test_bad_commands_are_answered_on_the_error_topic_and_volume_is_saved(tmp_path, server, broker):
    async with Watcher(broker.port) as watch:
        # left retained on the broker: met at every (re)connect, so refused, never spoken
        await watch.publish("kiosk/all/play", json.dumps({"phrase": "welcome"}), retain=True)
        async with speakers(tmp_path, server, broker.port, ("solo", [])) as (solo,):
            await bad_commands(watch, solo, broker)


async def bad_commands(watch, solo, broker):
    error = await watch.wait_for(lambda s: s.topic == "kiosk/solo/error")
    assert "retained commands are refused" in json.loads(error.payload)["error"]
    sent = time.monotonic()
    await watch.publish("kiosk/all/play", b"", retain=True)  # clears it from the broker: no command, no answer
    await asyncio.sleep(0.3)
    assert [s for s in watch.on("kiosk/solo/error") if s.at >= sent] == []

    for command, payload, status, message in BAD_COMMANDS:
        sent = time.monotonic()
        await watch.publish(f"kiosk/solo/{command}", payload)
        error = await watch.wait_for(lambda s: s.topic == "kiosk/solo/error", after=sent)
        answer = json.loads(error.payload)
        assert (answer["command"], answer["status"]) == (command, status), answer
        assert answer["error"].startswith(message), answer
    assert answer["topic"] == "kiosk/solo/stop"
    assert [a for a in map(json.loads, (s.payload for s in watch.on("kiosk/solo/error"))) if "id" in a] == [
        {"command": "play", "topic": "kiosk/solo/play", "status": 404, "error": "no phrase 'nope'", "id": "x1"}
    ]

    # the speaker is still well and takes a good command
    await watch.publish("kiosk/solo/play", json.dumps({"phrase": "welcome"}))
    await until(lambda: solo.origins == [("mqtt", "welcome")])

    # volume as the staff page sets it: in the staff settings file, then reloaded; mute and unmute
    await watch.publish("kiosk/solo/volume", b"35")
    await until(lambda: solo.service.cfg.audio.volume == 35)
    settings = yaml.safe_load((solo.config.parent / "settings.yaml").read_text())
    assert settings == {"audio": {"volume": 35}}
    await watch.wait_for(status_of("solo", volume=35, muted=False))
    await watch.publish("kiosk/solo/mute", b"ON")
    await watch.wait_for(status_of("solo", volume=0, muted=True))
    await watch.publish("kiosk/solo/mute", b"OFF")
    await watch.wait_for(status_of("solo", volume=35, muted=False))
    status = await solo.service.status()
    assert status["mqtt"] == {
        "state": "connected",
        "broker": f"127.0.0.1:{broker.port}",
        "device_id": "solo",
        "error": None,
    }


async def test_status_and_home_assistant_discovery_are_retained_and_announced_again(
    tmp_path, server, broker, monkeypatch
):
    monkeypatch.setattr(fleet_mqtt, "BIRTH_SPREAD_S", 1.0)  # spread over up to 5 s in a fleet; 1 s here
    async with speakers(tmp_path, server, broker.port, ("hall-a", ["hall"])):
        async with Watcher(broker.port) as watch:
            await watch.wait_for(status_of("hall-a"))
        async with Watcher(broker.port) as watch:  # subscribed later: what it gets now is what the broker retained
            status = await watch.wait_for(status_of("hall-a"))
            assert status.retain and set(json.loads(status.payload)) >= STATUS_KEYS
            assert json.loads(status.payload)["lines_configured"] == 2
            assert (await watch.wait_for(online("hall-a"))).retain
            await asyncio.sleep(0.3)
            retained = [s for s in watch.seen if s.topic.startswith("homeassistant/")]
            assert all(s.retain for s in retained)
            configs = {s.topic: json.loads(s.payload) for s in retained}
        node = "homeassistant/{}/kiosk_hall-a/{}/config"
        expected = {
            node.format(component, object_id)
            for component, object_id in [
                ("number", "volume"),
                ("button", "stop"),
                ("switch", "mute"),
                ("notify", "say"),
                ("sensor", "lines_ready"),
                ("sensor", "last_response"),
                ("sensor", "stutters"),
                ("sensor", "presses_today"),
                ("sensor", "state"),
                ("sensor", "last_refusal"),
            ]
        } | {"homeassistant/device_automation/kiosk_hall-a/button_17/config"}
        assert set(configs) == expected
        for topic, payload in configs.items():
            device = payload["device"]
            assert device["identifiers"] == ["kiosk_hall-a"] and device["sw_version"] and device["name"]
            if "device_automation" in topic:
                assert payload["automation_type"] == "trigger" and payload["topic"] == "kiosk/hall-a/action"
                assert payload["payload"] == "button_17" and payload["subtype"] == "Entrance case"
                continue
            assert payload["unique_id"].startswith("kiosk_hall-a_") and payload["name"]
            assert payload["availability_topic"] == "kiosk/hall-a/availability"
            assert "state_topic" in payload or "command_topic" in payload
        assert configs[node.format("number", "volume")]["command_topic"] == "kiosk/hall-a/volume"
        assert configs[node.format("notify", "say")]["command_topic"] == "kiosk/hall-a/play"

        async with Watcher(broker.port, ("homeassistant/#",)) as ha:
            await ha.wait_for(lambda s: s.topic.endswith("/config"))
            sent = time.monotonic()
            await ha.publish("homeassistant/status", "online")  # Home Assistant restarted
            fresh = await ha.wait_for(lambda s: s.topic == node.format("number", "volume"), after=sent)
            assert not fresh.retain  # published anew, not replayed from the broker's store
            assert fresh.at - sent < 1.0 + 2.0  # within the spread (and a loaded machine's slack)


async def test_broker_restart_both_reconnect_and_the_speakers_work_alone_meanwhile(tmp_path, server, broker):
    async with speakers(tmp_path, server, broker.port, ("hall-a", ["hall"]), ("lobby-b", [])) as (a, b):
        async with Watcher(broker.port) as watch:
            await watch.wait_for(online("hall-a"))
            await watch.wait_for(online("lobby-b"))
        broker.stop()
        await until(lambda: a.service.fleet.mqtt.state()["state"] == "disconnected")
        await until(lambda: b.service.fleet.mqtt.state()["state"] == "disconnected")
        status = await a.service.status()
        assert status["mqtt"]["state"] == "disconnected" and status["mqtt"]["error"]
        assert any(p.startswith("Not connected to the MQTT broker") for p in status["problems"])
        a.service.play(phrase="welcome", text=None, origin="api")  # alone, the speaker still speaks
        await a.idle()
        assert a.out.read_bytes().startswith(pcm_for(WELCOME))

        broker.start()  # the same port, and nothing retained: they must say it all again
        async with Watcher(broker.port) as watch:
            for name in ("hall-a", "lobby-b"):
                await watch.wait_for(online(name), timeout=10)
                await watch.wait_for(status_of(name), timeout=10)
        assert not any(p.startswith("Not connected") for p in (await a.service.status())["problems"])


async def test_kiosk_fleet_status_lists_both_and_fleet_say_speaks_to_a_group(tmp_path, server, broker):
    async with speakers(tmp_path, server, broker.port, ("hall-a", ["hall"]), ("lobby-b", ["lobby"])) as (a, b):
        async with Watcher(broker.port) as watch:
            await watch.wait_for(status_of("hall-a", lines_ready=2))
            await watch.wait_for(status_of("lobby-b", lines_ready=2))
        cli_config = tmp_path / "cli.yaml"
        cli_config.write_text(f"staff:\n  enabled: false\nmqtt:\n  host: 127.0.0.1\n  port: {broker.port}\n")

        code, out, err = await kiosk("fleet", "status", "--config", str(cli_config))
        assert code == 0, err
        rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
        assert set(rows) == {"hall-a", "lobby-b"}
        assert rows["hall-a"][1:4] == ["yes", "2/2", "-"] and rows["hall-a"][4] == "none"

        code, out, err = await kiosk("fleet", "say", "--group", "lobby", "quartz", "--config", str(cli_config))
        assert code == 0, err
        assert "sent 'quartz' to kiosk/group/lobby/play" in out
        await until(lambda: b.origins == [("mqtt", "quartz")])
        await b.idle()
        assert a.origins == [] and b.out.read_bytes().startswith(pcm_for(QUARTZ))

        code, out, err = await kiosk("fleet", "say", "--device", "hall-a", "nope", "--config", str(cli_config))
        assert code == 1 and "hall-a: no phrase 'nope'" in err


async def kiosk(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "KIOSK_"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kiosk", *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 10)
    return proc.returncode, out.decode(), err.decode()


async def test_sigkill_turns_availability_offline_through_the_last_will(tmp_path, server, broker):
    config = write_config(tmp_path, "doomed", server.url, broker.port)
    out = tmp_path / "doomed" / "alsa-out.raw"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "KIOSK_", "NOTIFY_", "WATCHDOG_"))}
    env.update(OPENAI_API_KEY="sk-test", GPIOZERO_PIN_FACTORY="mock")
    async with Watcher(broker.port) as watch:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "kiosk",
            "run",
            "--config",
            str(config),
            "--device",
            f"file:FILE={out},FORMAT=raw",
            env=env,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            await watch.wait_for(online("doomed"), timeout=10)
            killed = time.monotonic()
            proc.send_signal(signal.SIGKILL)
            offline = await watch.wait_for(
                lambda s: s.topic == "kiosk/doomed/availability" and s.text == "offline", after=killed
            )
            assert offline.at - killed < 5
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.wait_for(proc.wait(), 10)
