"""A museum network on one machine, for bench/fleet.py --netns: a bridge in the root namespace (the broker's side,
10.77.0.1/24) and one network namespace per speaker, each joined to the bridge by a veth pair, with `tc netem` on
both ends of every pair (a busy Wi-Fi: 30 ms ± 20 ms each way, 1 % loss). Needs root and iproute2.

A kernel built without netem (`sch_netem`: "Specified qdisc kind is unknown") gets the same impairment from user
space instead: every packet between the bridge and this machine, either way, is queued by iptables' NFQUEUE and
released by `Wan` (this module run as `python bench/netns.py wan`) after its own delay drawn as netem draws it
(uniform in 30 ± 20 ms, so packets may overtake each other), or dropped with probability 1 %. `impairment` says
which was used.

    with MuseumNetwork(20, netem="delay 30ms 20ms loss 1%") as net:
        net.spawn(0, ["kiosk", "run", ...], log)     # runs inside speaker 0's namespace
        net.address(0)                               # "10.77.0.10"

Everything it made (processes, namespaces, veths, the bridge) is removed on exit, also after an error or Ctrl-C;
leftovers of an earlier run that was killed outright are removed before starting.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

BRIDGE = "kbench0"
NS_PREFIX = "kbench-"
VETH_PREFIX = "kbv"  # + index: the bridge end; the namespace end is eth0
SUBNET = "10.77.0"
BROKER_IP = f"{SUBNET}.1"
NETEM = "delay 30ms 20ms loss 1%"
QUEUE = 77  # the NFQUEUE number of the user-space fallback
_RULE = ["-m", "comment", "--comment", "kbench", "-j", "NFQUEUE", "--queue-num", str(QUEUE), "--queue-bypass"]
_RULES = (["INPUT", "-i", BRIDGE, *_RULE], ["OUTPUT", "-o", BRIDGE, *_RULE])


def unavailable() -> str | None:
    """Why this machine cannot build the network, in one sentence; None when it can."""
    if os.geteuid() != 0:
        return "--netns needs root (ip netns add, tc qdisc): run it as root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"--netns needs iproute2's `{tool}` (apt-get install iproute2)"
    return None


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


class MuseumNetwork:
    def __init__(self, speakers: int, netem: str = NETEM):
        if not 1 <= speakers <= 200:
            raise ValueError("1 to 200 speakers")
        self.speakers, self.netem = speakers, netem.split()
        self.procs: list[subprocess.Popen] = []
        self.wan: subprocess.Popen | None = None
        self.impairment = ""

    def namespace(self, index: int) -> str:
        return f"{NS_PREFIX}{index}"

    def address(self, index: int) -> str:
        return f"{SUBNET}.{10 + index}"

    # -- building and removing

    def __enter__(self) -> MuseumNetwork:
        self.remove()  # leftovers of a run killed outright
        try:
            _run("ip", "link", "add", BRIDGE, "type", "bridge")
            _run("ip", "addr", "add", f"{BROKER_IP}/24", "dev", BRIDGE)
            _run("ip", "link", "set", BRIDGE, "up")
            for index in range(self.speakers):
                ns, veth = self.namespace(index), f"{VETH_PREFIX}{index}"
                _run("ip", "netns", "add", ns)
                _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
                _run("ip", "link", "set", veth, "master", BRIDGE, "up")
                _run("ip", "-n", ns, "link", "set", "lo", "up")
                _run("ip", "-n", ns, "addr", "add", f"{self.address(index)}/24", "dev", "eth0")
                _run("ip", "-n", ns, "link", "set", "eth0", "up")
                if index == 0:
                    netem = _run("tc", "qdisc", "add", "dev", veth, "root", "netem", *self.netem, check=False)
                    if netem.returncode != 0:
                        self._start_wan(netem.stderr.strip())
                if not self.wan:
                    if index:
                        _run("tc", "qdisc", "add", "dev", veth, "root", "netem", *self.netem)  # broker → speaker
                    _run("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0", "root", "netem", *self.netem)
            if not self.wan:
                self.impairment = f"tc netem {' '.join(self.netem)} on both ends of each veth"
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        """Stop the processes started here, then delete every namespace, veth and the bridge of this module's names
        (a namespace's veth end goes with it, and the bridge end with its peer)."""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.procs.clear()
        while shutil.which("iptables") and any(_run("iptables", "-D", *r, check=False).returncode == 0 for r in _RULES):
            pass
        if self.wan and self.wan.poll() is None:
            self.wan.terminate()
            self.wan.wait(timeout=5)
        self.wan = None
        listed = _run("ip", "netns", "list", check=False).stdout.split()
        for ns in {n for n in listed if n.startswith(NS_PREFIX)}:
            for pid in _run("ip", "netns", "pids", ns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)  # only processes inside this benchmark's own namespaces
            _run("ip", "netns", "del", ns, check=False)
        links = _run("ip", "-o", "link", "show", check=False).stdout.splitlines()
        for line in links:
            name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
            if name.startswith(VETH_PREFIX) and name[len(VETH_PREFIX) :].isdigit():
                _run("ip", "link", "del", name, check=False)
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            _run("ip", "link", "del", BRIDGE, check=False)

    def _start_wan(self, why: str) -> None:
        """The user-space fallback for a kernel without netem: NFQUEUE rules and the `Wan` process."""
        delay, jitter, loss = _netem_numbers(self.netem)
        if shutil.which("iptables") is None:
            raise RuntimeError(
                f"tc netem unavailable ({why}) and no iptables for the fallback: apt-get install iptables"
            )
        self.wan = subprocess.Popen(
            [sys.executable, __file__, "wan", "--delay-ms", str(delay), "--jitter-ms", str(jitter), "--loss", str(loss)]
        )
        time.sleep(0.5)  # bound to the queue before the first packet (--queue-bypass passes packets until then)
        if self.wan.poll() is not None:
            raise RuntimeError("the user-space network impairment (bench/netns.py wan) did not start")
        for rule in _RULES:
            _run("iptables", "-A", *rule)
        self.impairment = (
            f"user space (no netem in this kernel: {why}): NFQUEUE on the bridge, each packet either way delayed "
            f"uniformly {delay - jitter:g}-{delay + jitter:g} ms, {loss * 100:g} % dropped"
        )

    # -- inside

    def spawn(self, index: int, command: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
        """`command` run inside speaker `index`'s namespace, its output to `log`; stopped on exit."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.namespace(index), *command], stdout=out, stderr=out, env=env
            )
        self.procs.append(proc)
        return proc

    def ping(self, index: int, count: int = 20) -> str:
        """TCP connect round trips from speaker `index` to the broker (through the impairment both ways)."""
        probe = (
            "import socket, statistics, time\n"
            "rtts = []\n"
            f"for _ in range({count}):\n"
            "    t = time.monotonic()\n"
            f"    socket.create_connection(({BROKER_IP!r}, 1883), timeout=5).close()\n"
            "    rtts.append((time.monotonic() - t) * 1000)\n"
            "print(f'TCP connect to the broker, {len(rtts)} tries: min {min(rtts):.1f} / median "
            "{statistics.median(rtts):.1f} / max {max(rtts):.1f} ms')\n"
        )
        done = _run("ip", "netns", "exec", self.namespace(index), sys.executable, "-c", probe, check=False)
        return done.stdout.strip() or done.stderr.strip()[-200:]


def _netem_numbers(words: list[str]) -> tuple[float, float, float]:
    """delay ms, jitter ms, loss fraction of a netem spec such as `delay 30ms 20ms loss 1%`."""
    text = " ".join(words)
    delay = re.search(r"delay (\d+(?:\.\d+)?)ms(?: (\d+(?:\.\d+)?)ms)?", text)
    loss = re.search(r"loss (\d+(?:\.\d+)?)%", text)
    return (
        float(delay.group(1)) if delay else 0.0,
        float(delay.group(2) or 0) if delay else 0.0,
        float(loss.group(1)) / 100 if loss else 0.0,
    )


# -- the user-space fallback: nfnetlink_queue, spoken directly (linux/netfilter/nfnetlink_queue.h)

_NFNL_SUBSYS_QUEUE = 3
_MSG_PACKET, _MSG_VERDICT, _MSG_CONFIG = 0, 1, 2
_NLM_F_REQUEST, _NLM_F_ACK = 1, 4
_NLMSG_ERROR = 2
_CFG_CMD, _CFG_PARAMS = 1, 2
_CMD_BIND = 1
_COPY_META = 1
_PACKET_HDR, _VERDICT_HDR = 1, 2
_NF_DROP, _NF_ACCEPT = 0, 1


def _attr(kind: int, data: bytes) -> bytes:
    body = struct.pack("=HH", 4 + len(data), kind) + data
    return body + b"\0" * (-len(body) % 4)


class Wan:
    """Holds each queued packet for its own delay (uniform in delay ± jitter, as netem draws it) or drops it."""

    def __init__(self, delay_ms: float, jitter_ms: float, loss: float, queue: int = QUEUE, seed: int | None = None):
        self.delay, self.jitter, self.loss, self.queue = delay_ms / 1000, jitter_ms / 1000, loss, queue
        self.random = random.Random(seed)
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((0, 0))
        self.seq = 0

    def _send(self, msg: int, payload: bytes, flags: int = _NLM_F_REQUEST) -> None:
        self.seq += 1
        body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(self.queue)) + payload
        header = struct.pack("=IHHII", 16 + len(body), (_NFNL_SUBSYS_QUEUE << 8) | msg, flags, self.seq, 0)
        self.sock.send(header + body)

    def bind(self) -> None:
        self._send(
            _MSG_CONFIG, _attr(_CFG_CMD, struct.pack("!BxH", _CMD_BIND, socket.AF_INET)), _NLM_F_REQUEST | _NLM_F_ACK
        )
        self._ack()
        self._send(_MSG_CONFIG, _attr(_CFG_PARAMS, struct.pack("!IB", 0, _COPY_META)), _NLM_F_REQUEST | _NLM_F_ACK)
        self._ack()

    def _ack(self) -> None:
        data = self.sock.recv(65536)
        _, kind = struct.unpack_from("=IH", data)
        if kind == _NLMSG_ERROR and struct.unpack_from("=i", data, 16)[0] != 0:
            raise OSError(-struct.unpack_from("=i", data, 16)[0], "nfnetlink_queue refused the configuration")

    def _packets(self, data: bytes):
        offset = 0
        while offset + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, offset)
            if length < 16:
                break
            if kind == (_NFNL_SUBSYS_QUEUE << 8) | _MSG_PACKET:
                at = offset + 20  # nlmsghdr + nfgenmsg
                while at + 4 <= offset + length:
                    size, attr = struct.unpack_from("=HH", data, at)
                    if attr & 0x7FFF == _PACKET_HDR:
                        yield struct.unpack_from("!I", data, at + 4)[0]
                        break
                    at += max(4, (size + 3) & ~3)
            offset += (length + 3) & ~3

    def run(self) -> None:
        self.bind()
        due: list[tuple[float, int, int]] = []
        while True:
            wait = max(0.0, due[0][0] - time.monotonic()) if due else 1.0
            if select.select([self.sock], [], [], wait)[0]:
                for packet in self._packets(self.sock.recv(1 << 20)):
                    if self.random.random() < self.loss:
                        self._verdict(packet, _NF_DROP)
                    else:
                        held = self.delay + self.random.uniform(-self.jitter, self.jitter)
                        heapq.heappush(due, (time.monotonic() + max(0.0, held), packet, _NF_ACCEPT))
            now = time.monotonic()
            while due and due[0][0] <= now:
                _, packet, verdict = heapq.heappop(due)
                self._verdict(packet, verdict)

    def _verdict(self, packet: int, verdict: int) -> None:
        self._send(_MSG_VERDICT, _attr(_VERDICT_HDR, struct.pack("!II", verdict, packet)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the user-space network impairment (NFQUEUE)")
    parser.add_argument("what", choices=["wan"])
    parser.add_argument("--delay-ms", type=float, default=30)
    parser.add_argument("--jitter-ms", type=float, default=20)
    parser.add_argument("--loss", type=float, default=0.01)
    parser.add_argument("--queue", type=int, default=QUEUE)
    options = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    Wan(options.delay_ms, options.jitter_ms, options.loss, options.queue).run()
