"""Fleet control: publish → first audio for a cached line over MQTT and over OSC, and the spread of first audio
across speakers for one `all/play`.

    .venv/bin/python bench/fleet.py                       # 4 speakers, 30 commands each way (about 40 s)
    .venv/bin/python bench/fleet.py --speakers 8 --commands 50
    sudo .venv/bin/python bench/fleet.py --netns --speakers 20 --rounds 30   # a museum network (root; ~2 min)
    .venv/bin/python bench/fleet.py --fifty              # 50 speakers on one broker, discovery on (~6 min)

Starts a real Mosquitto broker on loopback and N services in this process (ALSA `null` devices, mock GPIO, the
loopback OpenAI-compatible test server), so the sender's clock and the speakers' clocks are one clock: a figure is
from just before the command left the sender to the first frame the speaker's device accepted.

`--netns` instead builds a museum network on this machine (bench/netns.py: a bridge, a namespace and a veth pair
per speaker, `tc netem` delay 30 ms ± 20 ms and 1 % loss on both ends of each pair), runs one Mosquitto on the
bridge and each speaker as its own `kiosk run` process in its own namespace, with the line already in its cache.
Each round publishes one `kiosk/all/play` (QoS 1) with a start time (`at` = now + `--lead`) and one without, and
takes each speaker's first audio from its own `played` event (`first_audio_wall`: all namespaces share one clock).
The spread of a round is last minus first across the speakers that played; a speaker with no event within the
round's window is a miss, counted and reported (bench/fleet_netns.py).

`--fifty`: many `kiosk run` speakers on one broker with Home Assistant discovery on: the broker's CPU, memory and
messages per second at start, idle and during `all/play`, and what Home Assistant receives (bench/fleet_fifty.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's loopback server and broker, reused rather than copied

import aiomqtt  # noqa: E402
from fake_openai import FakeOpenAI  # noqa: E402
from gpiozero.pins.mock import MockFactory  # noqa: E402
from mosquitto import Broker  # noqa: E402
from pythonosc.udp_client import SimpleUDPClient  # noqa: E402

from kiosk.config import load_config  # noqa: E402
from kiosk.service import Service  # noqa: E402
from kiosk.systemd import Notifier  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))

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
    parser.add_argument("--fifty", action="store_true", help="many `kiosk run` speakers on one broker, discovery on")
    parser.add_argument("--idle-s", type=float, default=60, help="--fifty: how long to watch the idle broker")
    parser.add_argument("--netem", default="delay 30ms 20ms loss 1%", help="--netns: tc netem on both veth ends")
    args = parser.parse_args()
    os.environ["OPENAI_API_KEY"] = "bench-key"
    if args.netns:
        from fleet_netns import run_netns  # root only: kept apart from the in-process mode

        return await run_netns(args)
    if args.fifty:
        from fleet_fifty import run_fifty

        args.speakers = args.speakers if "--speakers" in sys.argv else 50
        args.rounds = args.rounds if "--rounds" in sys.argv else 10
        return await run_fifty(args)
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


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
