"""Fleet control: publish → first audio for a cached line over MQTT and over OSC, and the spread of first audio
across speakers for one `all/play`.

    .venv/bin/python bench/fleet.py                       # 4 speakers, 30 commands each way (about 40 s)
    .venv/bin/python bench/fleet.py --speakers 8 --commands 50
    sudo .venv/bin/python bench/fleet.py --netns --speakers 20 --rounds 30   # a museum network (root; ~8 min)

Starts a real Mosquitto broker on loopback and N services in this process (ALSA `null` devices, mock GPIO, the
loopback OpenAI-compatible test server), so the sender's clock and the speakers' clocks are one clock: a figure is
from just before the command left the sender to the first frame the speaker's device accepted.

`--netns` instead builds a museum network on this machine (bench/netns.py: a bridge, a namespace and a veth pair
per speaker, `tc netem` delay 30 ms ± 20 ms and 1 % loss on both ends of each pair), runs one Mosquitto on the
bridge and each speaker as its own `kiosk run` process in its own namespace, with the line already in its cache.
Each round publishes one `kiosk/all/play` (QoS 1) with a start time (`at` = now + `--lead`) and one without, and
takes each speaker's first audio from its own `played` event (`first_audio_wall`: all namespaces share one clock).
The spread of a round is last minus first across the speakers that played; a speaker with no event within the
round's window is a miss, counted and reported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's loopback server and broker, reused rather than copied

import aiomqtt  # noqa: E402
from fake_openai import FakeOpenAI  # noqa: E402
from gpiozero.pins.mock import MockFactory  # noqa: E402
from mosquitto import Broker, need_mosquitto  # noqa: E402
from pythonosc.udp_client import SimpleUDPClient  # noqa: E402

from kiosk.config import load_config  # noqa: E402
from kiosk.service import Service  # noqa: E402
from kiosk.systemd import Notifier  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
import netns  # noqa: E402

LINE = "Quartz is the second most common mineral in the Earth's crust."


def speaker_config(home: Path, server_url: str, rest: str) -> Path:
    """`home/kiosk.yaml` for one speaker: its own cache, history and settings, the `null` device, no staff page, an
    API that never rate-limits the benchmark; `rest` adds its network and lines."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "kiosk.yaml"
    path.write_text(
        f"openai:\n  base_url: {server_url}/v1\ncache:\n  dir: {home / 'cache'}\n"
        f"history:\n  file: {home / 'history.sqlite3'}\naudio:\n  device: 'null'\n"
        f"staff:\n  enabled: false\n  settings_file: {home / 'settings.yaml'}\n"
        f"api:\n  port: 0\n  rate_limit_per_min: 100000\n{rest}"
    )
    return path


def write_config(home: Path, name: str, server_url: str, port: int) -> Path:
    return speaker_config(
        home,
        server_url,
        f"mqtt:\n  host: 127.0.0.1\n  port: {port}\n  device_id: {name}\n  discovery: false\n"
        f"osc:\n  enabled: true\n  bind: 127.0.0.1\n  port: 0\n"
        f"phrases:\n  quartz: {LINE}\n",
    )


async def start_speakers(tmp: Path, server_url: str, port: int, count: int) -> list[Service]:
    services = []
    for n in range(count):
        name = f"speaker-{n + 1}"
        config = write_config(tmp / name, name, server_url, port)
        service = Service(load_config(config), config_path=config, pin_factory=MockFactory(), notifier=Notifier({}))
        await service.start()
        await service.announcer.prepare(LINE)  # cached: the figure is the command's path, not synthesis
        services.append(service)
    async with asyncio.timeout(15):
        while not all(s.fleet.mqtt.state()["state"] == "connected" and s.fleet.osc.port for s in services):
            await asyncio.sleep(0.05)
    return services


def newest(service: Service) -> str | None:
    return next(reversed(service.speaker.history), None)


async def first_audio_after(service: Service, sent: float, before: str | None) -> float:
    """Milliseconds from `sent` (monotonic) to the first frame of the request after `before` on `service`."""
    async with asyncio.timeout(10):
        while newest(service) == before:
            await asyncio.sleep(0.001)
        req = service.speaker.history[newest(service)]
        while req.trace is None:
            await asyncio.sleep(0.005)
    started = req.started_at + req.trace.first_audio_ms / 1000
    return (started - sent) * 1000


async def over_mqtt(services, client, commands: int) -> list[float]:
    speaker, figures = services[0], []
    for _ in range(commands):
        before = newest(speaker)
        sent = time.monotonic()
        await client.publish(f"kiosk/{speaker.cfg.mqtt.device_id}/play", json.dumps({"phrase": "quartz"}))
        figures.append(await first_audio_after(speaker, sent, before))
        await asyncio.wait_for(speaker.speaker.idle(), 15)
    return figures


async def over_osc(services, commands: int) -> list[float]:
    speaker, figures = services[0], []
    client = SimpleUDPClient("127.0.0.1", speaker.fleet.osc.port)
    for _ in range(commands):
        before = newest(speaker)
        sent = time.monotonic()
        client.send_message("/kiosk/play", "quartz")
        figures.append(await first_audio_after(speaker, sent, before))
        await asyncio.wait_for(speaker.speaker.idle(), 15)
    return figures


async def spread(services, client, rounds: int) -> list[dict]:
    results = []
    for _ in range(rounds):
        befores = [newest(s) for s in services]
        sent = time.monotonic()
        await client.publish("kiosk/all/play", json.dumps({"phrase": "quartz"}))
        firsts = await asyncio.gather(*(first_audio_after(s, sent, b) for s, b in zip(services, befores, strict=True)))
        results.append({"first_ms": round(min(firsts), 1), "last_ms": round(max(firsts), 1)})
        await asyncio.gather(*(asyncio.wait_for(s.speaker.idle(), 15) for s in services))
    return results


def summary(figures: list[float]) -> dict:
    ordered = sorted(figures)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"n": len(figures), "p50_ms": round(statistics.median(figures), 1), "p95_ms": round(p95, 1)}


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speakers", type=int, default=4)
    parser.add_argument("--commands", type=int, default=30)
    parser.add_argument("--nodelay", action=argparse.BooleanOptionalAction, default=True, help="set_tcp_nodelay")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default bench/results/fleet.json)")
    parser.add_argument("--netns", action="store_true", help="speakers as `kiosk run` in network namespaces (root)")
    parser.add_argument("--rounds", type=int, default=30, help="--netns: rounds, each with and without a start time")
    parser.add_argument("--lead", type=float, default=0.5, help="--netns: the start time, seconds after publishing")
    parser.add_argument("--netem", default="delay 30ms 20ms loss 1%", help="--netns: tc netem on both veth ends")
    args = parser.parse_args()
    os.environ["OPENAI_API_KEY"] = "bench-key"
    if args.netns:
        return await run_netns(args)
    args.out = args.out or ROOT / "bench" / "results" / "fleet.json"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        broker = Broker(tmp)
        if args.nodelay:  # Mosquitto leaves Nagle's algorithm on unless asked: small messages wait up to 40 ms
            broker.conf.write_text(broker.conf.read_text() + "set_tcp_nodelay true\n")
        broker.start()
        try:
            async with FakeOpenAI() as server:
                services = await start_speakers(tmp, server.url, broker.port, args.speakers)
                try:
                    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
                        mqtt = await over_mqtt(services, client, args.commands)
                        osc = await over_osc(services, args.commands)
                        rounds = await spread(services, client, max(5, args.commands // 3))
                finally:
                    for service in services:
                        await service.stop()
        finally:
            broker.stop()
    spreads = [r["last_ms"] - r["first_ms"] for r in rounds]
    results = {
        "speakers": args.speakers,
        "broker_tcp_nodelay": args.nodelay,
        "cpus": os.cpu_count(),
        "mqtt_publish_to_first_audio": summary(mqtt),
        "osc_send_to_first_audio": summary(osc),
        "all_play_spread_ms": summary(spreads),
        "all_play_rounds": rounds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "all_play_rounds"}, indent=2))
    return 0


# -- --netns: a museum network on this machine


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


def start_broker(tmp: Path, address: str) -> subprocess.Popen:
    """Mosquitto on the bridge's address (tests/mosquitto.py's Broker listens on loopback only)."""
    conf = tmp / "mosquitto.conf"
    conf.write_text(f"listener 1883 {address}\nallow_anonymous true\nset_tcp_nodelay true\nmax_queued_messages 10000\n")
    log = open(tmp / "mosquitto.log", "ab")  # noqa: SIM115  closed with the process
    proc = subprocess.Popen([need_mosquitto(), "-c", str(conf)], stdout=log, stderr=log)
    log.close()
    deadline = time.monotonic() + 5
    while True:
        with contextlib.suppress(OSError), socket.create_connection((address, 1883), timeout=0.2):
            return proc
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"mosquitto did not start: {(tmp / 'mosquitto.log').read_text()[-1000:]}")
        time.sleep(0.02)


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
                warm = netns_config(tmp / "warm", "warm", server.url, netns.BROKER_IP)
                done = await asyncio.create_subprocess_exec(
                    str(ROOT / ".venv" / "bin" / "kiosk"), "cache", "warm", "--config", str(warm),
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                )  # fmt: skip
                output = (await done.communicate())[0].decode()
                if done.returncode != 0:
                    raise RuntimeError(f"kiosk cache warm failed: {output}")
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


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
