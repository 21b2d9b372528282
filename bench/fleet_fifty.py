"""bench/fleet.py --fifty: many speakers on one broker, with Home Assistant discovery on.

    .venv/bin/python bench/fleet.py --fifty                  # 50 speakers; about 6 minutes
    .venv/bin/python bench/fleet.py --fifty --speakers 20 --idle-s 30 --rounds 5

Each speaker is its own `kiosk run` process (the `null` ALSA device, the buttons of config/kiosk.yaml on
gpiozero's mock pins, the line already in its cache), all started at once as after a power cut, against one
Mosquitto on loopback that publishes its `$SYS` counters every second. Measured, in phases:

- start: from the spawn to every speaker online with its line ready, and the broker's PUBLISH counts meanwhile;
- what Home Assistant receives when it starts: the retained messages under `homeassistant/#` (the discovery
  configs) and under `kiosk/#` (availability, status), counted and sized by a fresh subscriber;
- idle: the broker's messages per second in and out, its CPU and memory over `--idle-s`;
- `all/play`: `--rounds` rounds each with and without a start time (as bench/fleet_netns.py), the spread of first
  audio, and the broker's messages and CPU per round;
- Home Assistant restarting (`homeassistant/status` = online): every speaker publishes its discovery again; how
  many messages arrive and how long until the last.

The broker's CPU is its own process's (/proc/PID/stat), its memory VmRSS and VmHWM; the speakers' memory is the sum
of their VmRSS. All share this machine's CPUs: the spread here also measures 50 processes on few cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt
from fake_openai import FakeOpenAI
from fleet import ROOT, speaker_config
from fleet_netns import WELCOME, Listener, cache_warm, netns_round, netns_summary, start_broker
from mosquitto import need_mosquitto

#: The exhibit's buttons as in config/kiosk.yaml: each is a Home Assistant device trigger.
BUTTONS = """buttons:
  - {pin: 17, name: Entrance case, phrase: welcome}
  - {pin: 27, name: Quartz case, phrase: quartz}
  - {pin: 22, action: stop}
  - {pin: 5, action: volume_up}
"""
_TICK = os.sysconf("SC_CLK_TCK")


def fifty_config(home: Path, name: str, server_url: str, port: int) -> Path:
    return speaker_config(
        home,
        server_url,
        "captions:\n  enabled: false\nclock:\n  check: false\n"
        f"mqtt:\n  host: 127.0.0.1\n  port: {port}\n  device_id: {name}\n  groups: [hall]\n  discovery: true\n"
        f"phrases:\n  welcome: {WELCOME}\n  quartz: {WELCOME}\n{BUTTONS}",
    )


class Process:
    """CPU seconds and memory of one process, from /proc."""

    def __init__(self, pid: int):
        self.pid = pid

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime

    def memory_kb(self) -> dict[str, int]:
        status = Path(f"/proc/{self.pid}/status").read_text().splitlines()
        return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in status) if k in ("VmRSS", "VmHWM")}


class SysCounters:
    """The broker's own counters, from `$SYS` (published every second with `sys_interval 1`), and the publishes it
    routes, counted by a subscriber to `#` (Mosquitto 2.0's own received-publish counter missed the start's
    retained publishes). PUBLISH packets are what clients said; all packets add acknowledgements and keepalive pings;
    the publishes out include this subscriber's own copies and the `$SYS` counters."""

    NAMES = (
        "publish/messages/received",
        "publish/messages/sent",
        "messages/received",
        "messages/sent",
        "bytes/received",
        "bytes/sent",
        "routed",
        "routed_bytes",
    )

    def __init__(self, client: aiomqtt.Client):
        self.client = client
        self.values: dict[str, float] = {}
        self.uptime = ""

    async def run(self) -> None:
        for name in (*self.NAMES, "uptime"):
            await self.client.subscribe(f"$SYS/broker/{name}")
        await self.client.subscribe("#")  # every publish routed, counted here too: the live count of what came in
        async for message in self.client.messages:
            topic = message.topic.value
            if not topic.startswith("$SYS/"):
                if not message.retain:
                    self.values["routed"] = self.values.get("routed", 0) + 1
                    self.values["routed_bytes"] = self.values.get("routed_bytes", 0) + len(message.payload)
                continue
            name, text = topic.removeprefix("$SYS/broker/"), message.payload.decode()
            if name == "uptime":
                self.uptime = text
            else:
                self.values[name] = float(text)

    async def fresh(self) -> dict[str, float]:
        """The counters of the broker's next publication (each second: the uptime first, then the rest)."""
        before, deadline = self.uptime, time.monotonic() + 3
        while self.uptime == before and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        return dict(self.values)


class Window:
    """What the broker did between two moments: messages and bytes per second, CPU share of one core."""

    def __init__(self, counters: SysCounters, broker: Process):
        self.counters, self.broker = counters, broker

    async def __aenter__(self) -> Window:
        self.start, self.cpu, self.began = await self.counters.fresh(), self.broker.cpu_s(), time.monotonic()
        return self

    async def __aexit__(self, *exc) -> None:
        end, cpu, seconds = await self.counters.fresh(), self.broker.cpu_s(), time.monotonic() - self.began
        delta = {k: end.get(k, 0) - self.start.get(k, 0) for k in SysCounters.NAMES}
        self.result = {
            "seconds": round(seconds, 1),
            "publishes_in": int(delta["routed"]),
            "publishes_out": int(delta["publish/messages/sent"]),
            "publishes_in_per_s": round(delta["routed"] / seconds, 2),
            "publish_bytes_in_per_s": round(delta["routed_bytes"] / seconds),
            "publishes_out_per_s": round(delta["publish/messages/sent"] / seconds, 2),
            "packets_in_per_s": round(delta["messages/received"] / seconds, 2),
            "packets_out_per_s": round(delta["messages/sent"] / seconds, 2),
            "bytes_in_per_s": round(delta["bytes/received"] / seconds),
            "bytes_out_per_s": round(delta["bytes/sent"] / seconds),
            "broker_cpu_pct_of_one_core": round((cpu - self.cpu) / seconds * 100, 2),
            "broker_memory_kb": self.broker.memory_kb(),
        }


async def retained(port: int, topic: str, quiet_s: float = 1.5) -> dict:
    """What a new subscriber to `topic` receives retained: how many messages, how many bytes."""
    count, size = 0, 0
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"bench-retained-{os.getpid()}") as client:
        await client.subscribe(topic, qos=1)
        with contextlib.suppress(TimeoutError):
            while True:
                message = await asyncio.wait_for(anext(client.messages), quiet_s)
                if message.retain and message.payload:
                    count, size = count + 1, size + len(message.payload)
    return {"messages": count, "bytes": size}


async def ha_restart(port: int, quiet_s: float = 3.0) -> dict:
    """Publish Home Assistant's birth message, as it does on every start, and count the discovery that follows."""
    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-home-assistant") as client:
        await client.subscribe("homeassistant/+/+/+/config", qos=1)
        with contextlib.suppress(TimeoutError):  # the retained configs first
            while True:
                await asyncio.wait_for(anext(client.messages), 1.5)
        sent = time.monotonic()
        await client.publish("homeassistant/status", "online", qos=1)
        count, size, last = 0, 0, sent
        with contextlib.suppress(TimeoutError):
            while time.monotonic() - sent < 120:
                message = await asyncio.wait_for(anext(client.messages), quiet_s)
                count, size, last = count + 1, size + len(message.payload), time.monotonic()
    return {"messages": count, "bytes": size, "first_to_last_s": round(last - sent, 2)}


def spawn(tmp: Path, names: list[str], port: int) -> list[subprocess.Popen]:
    env = {**os.environ, "OPENAI_API_KEY": "bench-key", "GPIOZERO_PIN_FACTORY": "mock"}
    procs = []
    for name in names:
        config = fifty_config(tmp / name, name, "http://127.0.0.1:9", port)
        shutil.copytree(tmp / "warm" / "cache", tmp / name / "cache")
        with open(tmp / name / "kiosk.log", "ab") as log:
            kiosk = [str(ROOT / ".venv" / "bin" / "kiosk"), "run", "--config", str(config)]
            procs.append(subprocess.Popen(kiosk, stdout=log, stderr=log, env=env, start_new_session=True))
    return procs


async def warm_cache(tmp: Path, port: int) -> None:
    """The line made once against the loopback test server; its cache is copied to every speaker."""
    async with FakeOpenAI() as server:
        await cache_warm(fifty_config(tmp / "warm", "warm", server.url, port))


async def until_ready(listener: Listener, names: list[str], tmp: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not all(n in listener.online and listener.status.get(n, {}).get("lines_ready") == 2 for n in names):
        if time.monotonic() > deadline:
            late = [n for n in names if listener.status.get(n, {}).get("lines_ready") != 2]
            log = (tmp / late[0] / "kiosk.log").read_text()[-2000:]
            raise RuntimeError(f"{len(late)} not ready after {timeout:.0f} s; {late[0]}'s log: {log}")
        await asyncio.sleep(0.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def measure(args, tmp: Path, port: int, broker: Process, names: list[str], procs) -> dict:
    results: dict = {}
    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-sys") as sys_client:
        counters = SysCounters(sys_client)
        sys_task = asyncio.create_task(counters.run())
        async with aiomqtt.Client("127.0.0.1", port, identifier="bench-sender") as client:
            listener = Listener(client)
            task = asyncio.create_task(listener.run())
            try:
                began = time.monotonic()
                async with Window(counters, broker) as start:
                    procs.extend(spawn(tmp, names, port))
                    await until_ready(listener, names, tmp)
                results["start"] = {"all_ready_s": round(time.monotonic() - began, 1), **start.result}
                print(f"{len(names)} speakers ready in {results['start']['all_ready_s']} s", flush=True)
                await asyncio.sleep(5)  # the start's status messages settle
                results["home_assistant_start_receives"] = {
                    "discovery": await retained(port, "homeassistant/#"),
                    "speaker_topics": await retained(port, "kiosk/#"),
                }
                async with Window(counters, broker) as idle:
                    await asyncio.sleep(args.idle_s)
                results["idle"] = idle.result
                print(f"idle: {json.dumps(idle.result)}", flush=True)
                rounds = []
                async with Window(counters, broker) as playing:
                    for n in range(args.rounds):
                        for lead in (args.lead, None) if n % 2 == 0 else (None, args.lead):
                            rounds.append(await netns_round(listener, client, names, lead, args.lead + 6.0))
                            print(f"round {len(rounds)}: spread {rounds[-1]['spread_ms']} ms", flush=True)
                            await asyncio.sleep(3)  # the line (2 s) ends before the next command
                results["all_play"] = {
                    **playing.result,
                    "rounds": len(rounds),
                    "publishes_in_per_round": round(playing.result["publishes_in"] / len(rounds), 1),
                    "publishes_out_per_round": round(playing.result["publishes_out"] / len(rounds), 1),
                    "with_start_time": netns_summary([r for r in rounds if r["with_start_time"]]),
                    "without_start_time": netns_summary([r for r in rounds if not r["with_start_time"]]),
                }
                results["home_assistant_restart"] = await ha_restart(port)
                results["speakers_memory_kb"] = sum(Process(p.pid).memory_kb()["VmRSS"] for p in procs)
                results["rounds"] = rounds
            finally:
                for t in (task, sys_task):
                    t.cancel()
                    with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                        await t
    return results


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


async def run_fifty(args) -> int:
    out = args.out or ROOT / "bench" / "fleet-fifty-latest.json"
    names = [f"speaker-{n + 1}" for n in range(args.speakers)]
    began = time.monotonic()
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="fleet-fifty-") as tmp_name:
        tmp, port = Path(tmp_name), free_port()
        broker_proc = start_broker(tmp, "127.0.0.1", port, "sys_interval 1\n")
        try:
            await warm_cache(tmp, port)
            results = await measure(args, tmp, port, Process(broker_proc.pid), names, procs)
        finally:
            stop(procs)
            broker_proc.kill()
            broker_proc.wait(timeout=5)
    results = {
        "command": "bench/fleet.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall_s": round(time.monotonic() - began),
        "speakers": len(names),
        "speakers_are": "kiosk run processes, one per speaker, on loopback",
        "cpus": os.cpu_count(),
        "mosquitto": subprocess.run([need_mosquitto(), "-h"], capture_output=True, text=True).stdout.split("\n")[0],
        **results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(json.dumps({k: v for k, v in results.items() if k != "rounds"}, indent=1))
    return 0
