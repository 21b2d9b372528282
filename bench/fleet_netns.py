"""bench/fleet.py --netns: speakers as `kiosk run` processes in their own network namespaces, on a museum network
(bench/netns.py), one `kiosk/all/play` per round with and without a start time; see bench/fleet.py's docstring.
Also the pieces bench/fleet_fifty.py shares: a broker on a given address, a listener for every speaker's status and
played events, one round and its summary."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
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
import netns
from fake_openai import FakeOpenAI
from fleet import ROOT, speaker_config
from mosquitto import need_mosquitto

WELCOME = "Welcome to the hall of minerals."  # 2 s of audio: rounds stay short


def netns_config(home: Path, name: str, server_url: str, broker: str) -> Path:
    """A speaker's config for `kiosk run` in its namespace: the `null` device, only MQTT on the network, the clock
    trusted as it is (every namespace shares this machine's clock; `clock.check` would find no NTP client here)."""
    return speaker_config(
        home,
        server_url,
        "captions:\n  enabled: false\nclock:\n  check: false\n"
        f"mqtt:\n  host: {broker}\n  port: 1883\n  device_id: {name}\n  groups: [hall]\n  discovery: false\n"
        f"  keepalive_s: 10\nphrases:\n  welcome: {WELCOME}\n",
    )


def start_broker(tmp: Path, address: str, port: int = 1883, extra: str = "") -> subprocess.Popen:
    """Mosquitto on `address` (tests/mosquitto.py's Broker listens on loopback only, on a port of its own choice);
    `extra` adds configuration lines."""
    conf = tmp / "mosquitto.conf"
    conf.write_text(
        f"listener {port} {address}\nallow_anonymous true\nset_tcp_nodelay true\nmax_queued_messages 10000\n{extra}"
    )
    log = open(tmp / "mosquitto.log", "ab")  # noqa: SIM115  closed with the process
    proc = subprocess.Popen([need_mosquitto(), "-c", str(conf)], stdout=log, stderr=log)
    log.close()
    deadline = time.monotonic() + 5
    while True:
        with contextlib.suppress(OSError), socket.create_connection((address, port), timeout=0.2):
            return proc
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"mosquitto did not start: {(tmp / 'mosquitto.log').read_text()[-1000:]}")
        time.sleep(0.02)


async def cache_warm(config: Path) -> None:
    """`kiosk cache warm --config config`: the lines made once, their cache then copied to every speaker."""
    done = await asyncio.create_subprocess_exec(
        str(ROOT / ".venv" / "bin" / "kiosk"), "cache", "warm", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output = (await asyncio.wait_for(done.communicate(), 120))[0].decode()
    if done.returncode != 0:
        raise RuntimeError(f"kiosk cache warm failed: {output[-1000:]}")


class Listener:
    """The sender's MQTT client: every speaker's status and played events, as they arrive."""

    def __init__(self, client: aiomqtt.Client):
        self.client = client
        self.status: dict[str, dict] = {}
        self.online: set[str] = set()
        self.played: list[dict] = []

    async def run(self) -> None:
        await self.client.subscribe("kiosk/+/status", qos=1)
        await self.client.subscribe("kiosk/+/availability", qos=1)
        await self.client.subscribe("kiosk/+/event", qos=1)
        async for message in self.client.messages:
            device, kind = message.topic.value.split("/")[1:3]
            text = message.payload.decode() if isinstance(message.payload, bytes) else ""
            if kind == "availability":
                (self.online.add if text == "online" else self.online.discard)(device)
            elif kind == "status":
                self.status[device] = json.loads(text)
            elif kind == "event":
                event = json.loads(text)
                if event.get("type") == "played":
                    self.played.append({**event, "device": device})


async def netns_round(listener: Listener, client, names: list[str], lead: float | None, window: float) -> dict:
    """One `all/play`; each speaker's first audio from its played event (first_audio_wall after the publish)."""
    sent = time.time()
    at = round(sent + lead, 3) if lead else None
    body = {"phrase": "welcome", **({"at": at} if at else {})}
    await client.publish("kiosk/all/play", json.dumps(body), qos=1)
    firsts: dict[str, dict] = {}
    deadline = time.monotonic() + window
    while len(firsts) < len(names) and time.monotonic() < deadline:
        for event in listener.played:
            wall = event.get("first_audio_wall")
            if wall is not None and wall >= sent and event["device"] not in firsts:
                firsts[event["device"]] = event
        await asyncio.sleep(0.05)
    walls = sorted(e["first_audio_wall"] for e in firsts.values())
    result = {
        "with_start_time": at is not None,
        "sent": round(sent, 4),
        "at": at,
        "played": len(firsts),
        "missed": sorted(set(names) - set(firsts)),
        "spread_ms": round((walls[-1] - walls[0]) * 1000, 3) if len(walls) >= 2 else None,
        "sent_to_first_ms": round((walls[0] - sent) * 1000, 1) if walls else None,
        "sent_to_last_ms": round((walls[-1] - sent) * 1000, 1) if walls else None,
        "speakers": {
            d: {
                "first_audio_from_at_ms": None if at is None else round((e["first_audio_wall"] - at) * 1000, 3),
                "first_audio_from_sent_ms": round((e["first_audio_wall"] - sent) * 1000, 2),
                "late_ms": e.get("late_ms"),
                "in_step": e.get("in_step"),
                # when the command reached the speaker: a late start after an early arrival is the speaker's own
                "received_from_sent_ms": round((e["received_wall"] - sent) * 1000, 2)
                if e.get("received_wall")
                else None,
                "source": e.get("source"),
            }
            for d, e in sorted(firsts.items())
        },
    }
    listener.played = [e for e in listener.played if (e.get("first_audio_wall") or 0) >= sent]  # keep late ones
    return result


def nearest_rank(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def arrivals(rounds: list[dict]) -> dict:
    """When the commands with a start time reached the speakers, and of the late starts how many had arrived in
    time (a speaker late on its own: scheduling on a shared CPU) or after the start time (the network)."""
    timed = [r for r in rounds if r["at"] is not None]
    received = [s["received_from_sent_ms"] for r in timed for s in r["speakers"].values()]
    received = [v for v in received if v is not None]
    if not received:
        return {}
    late = [
        (s, (r["at"] - r["sent"]) * 1000)
        for r in timed
        for s in r["speakers"].values()
        if s["in_step"] not in (None, "on time") and s["received_from_sent_ms"] is not None
    ]
    return {
        "received_from_sent_p50_ms": nearest_rank(received, 50),
        "received_from_sent_p95_ms": nearest_rank(received, 95),
        "received_from_sent_max_ms": max(received),
        "late_but_arrived_in_time": sum(1 for s, lead_ms in late if s["received_from_sent_ms"] < lead_ms),
        "late_arrived_after_start": sum(1 for s, lead_ms in late if s["received_from_sent_ms"] >= lead_ms),
    }


def netns_summary(rounds: list[dict]) -> dict:
    spreads = [r["spread_ms"] for r in rounds if r["spread_ms"] is not None]
    full = [r["spread_ms"] for r in rounds if r["spread_ms"] is not None and not r["missed"]]
    froms = [s["first_audio_from_at_ms"] for r in rounds for s in r["speakers"].values() if r["at"] is not None]
    return {
        "rounds": len(rounds),
        "rounds_all_played": len(full),
        "misses": sum(len(r["missed"]) for r in rounds),
        "spread_p50_ms": nearest_rank(spreads, 50),
        "spread_p95_ms": nearest_rank(spreads, 95),
        "spread_max_ms": max(spreads) if spreads else None,
        "spread_p95_ms_rounds_all_played": nearest_rank(full, 95),
        "sent_to_last_p50_ms": nearest_rank([r["sent_to_last_ms"] for r in rounds if r["sent_to_last_ms"]], 50),
        "sent_to_last_p95_ms": nearest_rank([r["sent_to_last_ms"] for r in rounds if r["sent_to_last_ms"]], 95),
        **(
            {
                "first_audio_from_at_p50_ms": nearest_rank(froms, 50),
                "first_audio_from_at_p95_ms": nearest_rank(froms, 95),
                "first_audio_from_at_min_ms": min(froms),
                "first_audio_from_at_max_ms": max(froms),
                "not_on_time": sum(
                    1 for r in rounds for s in r["speakers"].values() if s["in_step"] not in (None, "on time")
                ),
                **arrivals(rounds),
            }
            if froms
            else {}
        ),
    }


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


async def run_netns(args) -> int:
    reason = netns.unavailable()
    if reason:
        print(f"bench/fleet.py: {reason}", file=sys.stderr)
        return 2
    out = args.out or ROOT / "bench" / "fleet-instep-latest.json"
    names = [f"speaker-{n + 1}" for n in range(args.speakers)]
    began = time.monotonic()
    for signum in (signal.SIGTERM, signal.SIGHUP):  # cleaned up as after Ctrl-C
        signal.signal(signum, _interrupt)
    with (
        tempfile.TemporaryDirectory(prefix="fleet-netns-") as tmp_name,
        netns.MuseumNetwork(args.speakers, args.netem) as net,
    ):
        tmp = Path(tmp_name)
        impairment = net.impairment
        broker = start_broker(tmp, netns.BROKER_IP)
        try:
            async with FakeOpenAI() as server:
                # the line made once, here, and its cache copied to every speaker (same voice: same cache key)
                await cache_warm(netns_config(tmp / "warm", "warm", server.url, netns.BROKER_IP))
            env = {**os.environ, "OPENAI_API_KEY": "bench-key"}
            for index, name in enumerate(names):
                config = netns_config(tmp / name, name, "http://127.0.0.1:9", netns.BROKER_IP)
                shutil.copytree(tmp / "warm" / "cache", tmp / name / "cache")
                net.spawn(index, [str(ROOT / ".venv" / "bin" / "kiosk"), "run", "--config", str(config)],
                          tmp / name / "kiosk.log", env)  # fmt: skip
            ping = net.ping(0)
            async with aiomqtt.Client(netns.BROKER_IP, 1883, identifier="bench-sender") as client:
                listener = Listener(client)
                task = asyncio.create_task(listener.run())
                try:
                    deadline = time.monotonic() + 120
                    while not all(
                        n in listener.online and listener.status.get(n, {}).get("lines_ready") == 1 for n in names
                    ):
                        if time.monotonic() > deadline:
                            not_ready = [n for n in names if listener.status.get(n, {}).get("lines_ready") != 1]
                            logs = (tmp / not_ready[0] / "kiosk.log").read_text()[-2000:]
                            raise RuntimeError(f"not ready after 120 s: {not_ready}; {not_ready[0]}'s log: {logs}")
                        await asyncio.sleep(0.2)
                    ready_s = time.monotonic() - began
                    print(f"{len(names)} speakers online, line cached, {ready_s:.0f} s; {impairment}", flush=True)
                    print(ping, flush=True)
                    await asyncio.sleep(2)
                    rounds = []
                    for n in range(args.rounds):
                        for lead in (args.lead, None) if n % 2 == 0 else (None, args.lead):
                            result = await netns_round(listener, client, names, lead, args.lead + 6.0)
                            rounds.append(result)
                            print(
                                f"round {n + 1} {'at' if lead else 'no at'}: spread {result['spread_ms']} ms, "
                                f"{result['played']}/{len(names)} played",
                                flush=True,
                            )
                            await asyncio.sleep(0.5)
                finally:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                        await task
        finally:
            broker.kill()
            broker.wait(timeout=5)
    with_at = [r for r in rounds if r["with_start_time"]]
    without = [r for r in rounds if not r["with_start_time"]]
    results = {
        "command": "bench/fleet.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall_s": round(time.monotonic() - began),
        "speakers": len(names),
        "cpus": os.cpu_count(),
        "kernel": os.uname().release,
        "netem_each_veth_end": args.netem,
        "impairment": impairment,
        "rtt_speaker_to_broker": ping,
        "lead_s": args.lead,
        "line": WELCOME,
        "with_start_time": netns_summary(with_at),
        "without_start_time": netns_summary(without),
        "rounds": rounds,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(json.dumps({k: results[k] for k in ("speakers", "with_start_time", "without_start_time")}, indent=2))
    return 0
