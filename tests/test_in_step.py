"""Speakers in step (kiosk.in_step): a play command's start time `at` is checked like any field; two speakers on a
real Mosquitto start a cached line from one `all/play` together at `at`; a start time already past plays at once
and says how late; a speaker whose clock is not synchronized plays at once and says why; a line one speaker has
not cached starts there when its audio arrives, holding back nobody."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import file_sink_opener
from gpiozero.pins.mock import MockFactory
from mosquitto import Watcher

from kiosk import in_step
from kiosk.commands import CommandError, start_field
from kiosk.config import load_config
from kiosk.errors import ConfigError
from kiosk.fleet import mqtt as fleet_mqtt
from kiosk.fleet.control import Control
from kiosk.service import Service
from kiosk.speaker import Request
from kiosk.systemd import Notifier

WELCOME = "Welcome to the hall of minerals."
ONLY_A = "This line is configured on speaker A alone."
#: Generous for a shared CI machine; the measured figures are printed (pytest -s).
IN_STEP_MS = 30.0


# -- the field itself


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, True, False, "1767000000", [1.0], {"s": 1}, 10**400])
def test_a_start_time_must_be_a_finite_number(value):
    with pytest.raises(CommandError) as refused:
        start_field({"at": value})
    assert (refused.value.status, str(refused.value)) == (400, in_step.BAD_AT)


def test_a_start_time_may_be_absent_or_any_finite_number():
    assert start_field({}) is None
    assert start_field({"at": 1767000000}) == 1767000000.0
    assert start_field({"at": 1767000000.25}) == 1767000000.25


def test_a_start_time_is_judged_by_a_synchronized_clock_only():
    wall, mono = (lambda: 1_000_000.0), (lambda: 50.0)
    assert in_step.plan(1_000_000.5, synchronized=True, wall=wall, mono=mono).mono == 50.5
    late = in_step.plan(999_990.0, synchronized=True, wall=wall, mono=mono)
    assert late.mono == 40.0 and late.why is None  # past, within a day: played at once, and said late
    with pytest.raises(in_step.BadStart, match="hours ago; a start time may be at most a day past"):
        in_step.plan(1_000_000.0 - 86_401, synchronized=True, wall=wall, mono=mono)
    with pytest.raises(in_step.BadStart, match="61 s ahead; a start time may be at most 60 s ahead"):
        in_step.plan(1_000_061.0, synchronized=True, wall=wall, mono=mono)
    unsynced = in_step.plan(5.0, synchronized=False, wall=wall, mono=mono)  # any time: this clock cannot judge it
    assert unsynced.mono is None and unsynced.why == in_step.NOT_SYNCHRONIZED


class Backend:
    """The part of the app Control uses for play, recording what it was asked."""

    def __init__(self):
        self.asked: list[dict] = []

    def allow_trigger(self):
        return None

    def play(self, **asked) -> Request:
        self.asked.append(asked)
        return Request(id="1-1", text="x", origin=asked["origin"])


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b'{"phrase": "welcome", "at": true}', in_step.BAD_AT),
        (b'{"phrase": "welcome", "at": "soon"}', in_step.BAD_AT),
        (b'{"phrase": "welcome", "at": 1e999}', in_step.BAD_AT),  # JSON's way to say infinity
        (b'{"phrase": "welcome", "at": NaN}', "body must be JSON"),
        (b'{"phrase": "welcome", "at": null}', None),
        (b'{"phrase": "welcome", "at": 1767000000.5}', None),
    ],
)
async def test_the_mqtt_play_command_checks_at(payload, message):
    backend = Backend()
    control = Control(backend)
    if message is None:
        await control.payload("play", payload, "mqtt")
        at = json.loads(payload)["at"]
        assert backend.asked[0].get("at") == at
        return
    with pytest.raises(CommandError) as refused:
        await control.payload("play", payload, "mqtt")
    assert refused.value.status == 400 and str(refused.value).startswith(message)
    assert backend.asked == []


def test_fleet_say_leads_a_group_but_not_one_speaker():
    assert in_step.lead_for(None, together=True).seconds == in_step.DEFAULT_LEAD_S
    assert in_step.lead_for(None, together=False) is None
    assert in_step.lead_for(0, together=True) is None
    assert in_step.lead_for(2, together=False).seconds == 2
    for bad in (-1, math.nan, 61):
        with pytest.raises(ConfigError):
            in_step.lead_for(bad, together=True)
    assert in_step.stamp({"phrase": "w", "at": in_step.Lead(0.5)}, wall=lambda: 100.0) == {"phrase": "w", "at": 100.5}
    assert in_step.stamp({"phrase": "w"}) == {"phrase": "w"}


# -- speakers on a broker


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-secret")
    monkeypatch.setattr(fleet_mqtt, "FIRST_RETRY_S", 0.2)


def write_config(tmp_path: Path, name: str, server_url: str, port: int, phrases: dict[str, str]) -> Path:
    home = tmp_path / name
    home.mkdir(exist_ok=True)
    path = home / "kiosk.yaml"
    lines = "".join(f"  {key}: {text}\n" for key, text in phrases.items())
    path.write_text(
        f"openai:\n  base_url: {server_url}/v1\n  first_byte_timeout_s: 3\n"
        f"cache:\n  dir: {home / 'cache'}\n"
        f"history:\n  file: {home / 'history.sqlite3'}\n"
        f"staff:\n  enabled: false\n  settings_file: {home / 'settings.yaml'}\n"
        f"captions:\n  enabled: false\n"
        f"api:\n  port: 0\n  allow_text: true\n  rate_limit_per_min: 600\n"
        f"mqtt:\n  host: 127.0.0.1\n  port: {port}\n  device_id: {name}\n  groups: [hall]\n  keepalive_s: 5\n"
        f"phrases:\n{lines}"
    )
    return path


@contextlib.asynccontextmanager
async def speakers(tmp_path, server, port, *specs):
    """Started services for (name, phrases, clock probe), each with its own ALSA `file` device; returned once each
    has cached its configured lines (warmed) and is online."""
    started: list[Service] = []
    try:
        async with Watcher(port) as watch:
            for name, phrases, probe in specs:
                config = write_config(tmp_path, name, server.url, port, phrases)
                service = Service(
                    load_config(config),
                    config_path=config,
                    open_sink=file_sink_opener(f"file:FILE={tmp_path / name / 'out.raw'},FORMAT=raw"),
                    pin_factory=MockFactory(),
                    notifier=Notifier({}),
                    clock_probe=probe,
                )
                await asyncio.wait_for(service.start(), 10)
                started.append(service)
                await watch.wait_for(lambda s, n=name: s.topic == f"kiosk/{n}/availability" and s.text == "online")
            for service, (_, phrases, _) in zip(started, specs, strict=True):
                count = len(phrases)
                await until(lambda s=service, n=count: len(s.app.ready_lines()) == n)
            yield watch, started
    finally:
        for service in started:
            await service.stop()


async def until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.02)


async def played(services: list[Service], count: int):
    """The traces of each speaker's `count`th line, once every speaker has played it (bounded)."""
    await until(lambda: all(len(s.speaker.history) >= count for s in services))
    for service in services:
        await asyncio.wait_for(service.speaker.idle(), 10)
    reqs = [list(s.speaker.history.values())[count - 1] for s in services]
    assert all(r.trace is not None for r in reqs), [r.state for r in reqs]
    return [r.trace for r in reqs]


def said(service: Service, words: str) -> bool:
    return any(words in str(event) for event in service.app.events)


async def test_a_group_starts_a_cached_line_together(tmp_path, server, broker):
    phrases = {"welcome": WELCOME}
    synced = lambda: True  # noqa: E731
    async with speakers(tmp_path, server, broker.port, ("a", phrases, synced), ("b", phrases, synced)) as (watch, ab):
        spreads = []
        for round_ in range(1, 4):
            at = time.time() + in_step.DEFAULT_LEAD_S
            await watch.publish("kiosk/group/hall/play", json.dumps({"phrase": "welcome", "at": at}))
            traces = await played(ab, round_)
            starts = [t.first_audio_wall for t in traces]
            print(f"\nround {round_}: first audio - at = {[round((s - at) * 1000, 2) for s in starts]} ms")
            for trace in traces:
                assert trace.source == "cache" and trace.in_step == "on time" and trace.start_at == at, trace
                assert abs(trace.first_audio_wall - at) * 1000 < IN_STEP_MS, trace
                assert trace.late_ms is not None and trace.late_ms < in_step.LATE_S * 1000
            spreads.append(abs(starts[0] - starts[1]) * 1000)
        print(f"spread between the two speakers: {[round(s, 3) for s in spreads]} ms")
        assert max(spreads) < IN_STEP_MS
        played_events = await watch.wait_for(
            lambda s: s.topic == "kiosk/a/event" and b'"in_step": "on time"' in s.payload, timeout=5
        )
        assert json.loads(played_events.payload)["late_ms"] < in_step.LATE_S * 1000  # the fleet sees it too

        # a start time already past: at once, and said late
        at = time.time() - 2.0
        await watch.publish("kiosk/all/play", json.dumps({"phrase": "welcome", "at": at}))
        sent = time.time()
        for trace, service in zip(await played(ab, 4), ab, strict=True):
            assert trace.first_audio_wall - sent < 0.5, trace  # not held
            assert (
                trace.late_ms > 1900
                and trace.in_step.startswith("played at once: ")
                and "past its start" in trace.in_step
            )
            assert said(service, "past its start time")

        # far in the future: refused in words, on the error topic
        await watch.publish("kiosk/a/play", json.dumps({"phrase": "welcome", "at": time.time() + 3600}))
        error = await watch.wait_for(lambda s: s.topic == "kiosk/a/error")
        assert json.loads(error.payload)["status"] == 400 and "at most 60 s ahead" in json.loads(error.payload)["error"]


async def test_a_clock_not_synchronized_plays_at_once_and_says_why(tmp_path, server, broker):
    phrases = {"welcome": WELCOME}
    async with speakers(tmp_path, server, broker.port, ("a", phrases, lambda: False)) as (watch, (a,)):
        at = time.time() + 1.0
        await watch.publish("kiosk/all/play", json.dumps({"phrase": "welcome", "at": at}))
        (trace,) = await played([a], 1)
        assert trace.first_audio_wall < at - 0.5, trace  # not held to the start time
        assert trace.in_step == in_step.NOT_SYNCHRONIZED and trace.start_mono is None
        assert said(a, in_step.NOT_SYNCHRONIZED)


async def test_a_line_one_speaker_has_not_cached_does_not_hold_back_the_other(tmp_path, server, broker):
    server.behaviour.first_byte_delay_s = 0.8  # speaker B's audio arrives after the start time
    specs = (("a", {"welcome": WELCOME, "only": ONLY_A}, lambda: True), ("b", {"welcome": WELCOME}, lambda: True))
    async with speakers(tmp_path, server, broker.port, *specs) as (watch, ab):
        at = time.time() + in_step.DEFAULT_LEAD_S
        await watch.publish("kiosk/all/play", json.dumps({"text": ONLY_A, "at": at}))
        a, b = await played(ab, 1)
        print(f"\ncached on A: {(a.first_audio_wall - at) * 1000:.2f} ms from at; streamed on B: {b.first_audio_ms} ms")
        assert a.source == "cache" and a.in_step == "on time" and abs(a.first_audio_wall - at) * 1000 < IN_STEP_MS
        assert b.source != "cache" and b.in_step == in_step.NOT_CACHED and b.first_audio_wall > at


def test_osc_play_at_takes_a_double_an_integer_or_a_string_never_a_32_bit_float():
    from pythonosc.osc_message_builder import OscMessageBuilder

    from kiosk.fleet import osc

    def tags_of(*args):
        builder = OscMessageBuilder("/kiosk/play_at")
        for value, kind in args:
            builder.add_arg(value, kind)
        return osc._type_tags(builder.build().dgram)

    assert tags_of(("welcome", "s"), (1767000000.25, "d")) == "sd"
    assert osc._play_at(["welcome", 1767000000.25], "sd") == ("welcome", 1767000000.25, None)
    assert osc._play_at(["welcome", 1767000000, "de"], "sis") == ("welcome", 1767000000.0, "de")
    assert osc._play_at(["welcome", "1767000000.5"], "ss") == ("welcome", 1767000000.5, None)
    with pytest.raises(CommandError, match="32-bit float"):
        osc._play_at(["welcome", 1767000064.0], tags_of(("welcome", "s"), (1767000000.25, "f")))
    for args in (["welcome"], ["welcome", "soon"], [1, 2.0], ["welcome", 1.0, 2]):
        with pytest.raises(CommandError, match="play_at takes"):
            osc._play_at(args, "")
    with pytest.raises(CommandError, match="'at' must be"):
        osc._play_at(["welcome", "nan"], "ss")


# -- the writer thread's real-time priority

_PROMOTE = (
    "import threading, os; from kiosk import player; result = []\n"
    "t = threading.Thread(target=lambda: result.append((player._promote(), os.sched_getscheduler(0))))\n"
    "t.start(); t.join(5); print(result[0][0], result[0][1] == os.SCHED_FIFO)\n"
)


def _promote_as(*prefix: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*prefix, sys.executable, "-c", _PROMOTE],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).resolve().parent.parent,
        check=False,
    )


_AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


@pytest.mark.parametrize(
    ("who", "granted"),
    [
        ([], "True True"),  # root (CAP_SYS_NICE)
        (["prlimit", "--rtprio=0", *_AS_NOBODY], "False False"),  # an ordinary user, no RLIMIT_RTPRIO
        (["prlimit", "--rtprio=10", *_AS_NOBODY], "True True"),  # ... with the unit's LimitRTPRIO=10
    ],
    ids=["root", "user-without-limit", "user-with-LimitRTPRIO"],
)
def test_the_writer_takes_real_time_priority_where_it_is_granted(who, granted):
    """The writer thread runs SCHED_FIFO where the system grants it, and as an ordinary thread (saying so, not an
    error) where it does not."""
    if os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("prlimit"):
        pytest.skip("needs root, setpriv and prlimit (util-linux) to run as another user with a given RLIMIT_RTPRIO")
    done = _promote_as(*who)
    if "failed to set the RTPRIO resource limit" in done.stderr:
        pytest.skip("this machine cannot raise RLIMIT_RTPRIO (no CAP_SYS_RESOURCE, as in a container)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == granted.split(), done.stdout + done.stderr
