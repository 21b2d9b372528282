"""The always-on service in process: MockFactory buttons → speech → real ALSA bytes; policies; watchdog."""

import asyncio
import socket
import threading
import time

import pytest
from conftest import file_sink_opener
from fake_openai import pcm_for

from kiosk.config import parse_config
from kiosk.pcm import OPENAI_PCM
from kiosk.service import Service
from kiosk.systemd import Notifier

WELCOME = "Welcome to the hall of minerals."
QUARTZ = "Quartz grows as six-sided prisms."


def config(server_url, cache_dir, buttons="", extra=""):
    return parse_config(
        f"openai:\n  base_url: {server_url}/v1\n  first_byte_timeout_s: 2\n"
        f"cache:\n  dir: {cache_dir}\n"
        f"history:\n  file: {cache_dir}.history.sqlite3\n"
        f"staff:\n  enabled: false\napi:\n  port: 0\n  allow_text: true\n{extra}"
        f"phrases:\n  welcome: {WELCOME}\n  quartz: {QUARTZ}\n{buttons}"
    )


BUTTONS = """buttons:
  - pin: 17
    phrase: welcome
    led: 27
    cooldown_ms: 300
  - pin: 18
    phrase: quartz
    when_busy: ignore
    cooldown_ms: 0
  - pin: 19
    phrase: quartz
    when_busy: queue
    cooldown_ms: 0
    led: 26
  - pin: 22
    action: stop
"""


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-secret")


async def started(cfg, device, pins, **kwargs):
    service = Service(cfg, open_sink=file_sink_opener(device), pin_factory=pins, notifier=Notifier({}), **kwargs)
    await asyncio.wait_for(service.start(), timeout=10)
    return service


def press(pins, pin):
    pins.pin(pin).drive_low()
    pins.pin(pin).drive_high()


async def until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.005)


async def wait_idle(service, timeout=10):
    await asyncio.wait_for(service.speaker.idle(), timeout)


async def test_button_press_speaks_its_line_to_alsa_and_lights_its_led(server, tmp_path, alsa_file, pins):
    device, out = alsa_file
    service = await started(config(server.url, tmp_path / "c", BUTTONS), device, pins)
    try:
        assert service.buttons.simulated
        press(pins, 17)
        await until(lambda: service.speaker.speaking)
        assert pins.pin(27).state is True  # LED lit while its line plays
        await wait_idle(service)
        assert pins.pin(27).state is False
        req = next(iter(service.speaker.history.values()))
        assert req.origin == "button:17" and req.state == "done" and req.trace.source == "openai"
        assert out.read_bytes().startswith(pcm_for(WELCOME))
        metrics = service.metrics_text()[0].decode()
        assert 'kiosk_button_presses_total{pin="17"} 1.0' in metrics
        assert 'kiosk_press_to_first_audio_seconds_count{source="openai"} 1.0' in metrics
    finally:
        await service.stop()


async def test_cached_line_press_to_first_audio(server, tmp_path, alsa_file, pins):
    device, _out = alsa_file
    service = await started(config(server.url, tmp_path / "c", BUTTONS), device, pins)
    try:
        press(pins, 18)
        await wait_idle(service)
        await server.stop()  # offline from here on: the line must come from the cache
        latencies = []
        history = service.speaker.history
        for n in range(2, 7):
            pressed = time.monotonic()
            press(pins, 18)
            await until(lambda n=n: len(history) == n and list(history.values())[-1].state == "done")
            req = list(history.values())[-1]
            assert req.trace.source == "cache"
            latencies.append(req.started_at - pressed + req.trace.first_audio_ms / 1000)
        print(f"press→first audio, cached line, MockFactory press: {[round(x * 1000, 1) for x in latencies]} ms")
        assert max(latencies) < 0.25
        assert "kiosk_cache_hits_total 5.0" in service.metrics_text()[0].decode()
    finally:
        await service.stop()


async def test_cooldown_swallows_button_mashing(server, tmp_path, alsa_file, pins):
    device, _ = alsa_file
    service = await started(config(server.url, tmp_path / "c", BUTTONS), device, pins)
    try:
        for _ in range(5):
            press(pins, 17)
            await asyncio.sleep(0.01)
        await wait_idle(service)
        assert len(service.speaker.history) == 1 and service.buttons.cooled_down == 4
    finally:
        await service.stop()


async def test_policies_restart_ignore_queue_and_stop_button(server, tmp_path, alsa_file, pins):
    device, _ = alsa_file
    server.behaviour.realtime_factor = 1.0  # lines take their real length to arrive: they stay "speaking"
    server.behaviour.chunk_sizes = [960]
    service = await started(config(server.url, tmp_path / "c", BUTTONS, "speech:\n  queue_limit: 2\n"), device, pins)
    speaker = service.speaker
    try:
        press(pins, 17)
        await until(lambda: speaker.speaking)
        press(pins, 18)  # ignore while speaking
        await asyncio.sleep(0.05)
        assert len(speaker.history) == 1
        for _ in range(4):  # queue, bounded at 2
            press(pins, 19)
            await asyncio.sleep(0.02)
        assert speaker.queued == 2 and len(speaker.history) == 3
        assert "kiosk_speaking 1.0" in service.metrics_text()[0].decode()
        first = speaker.current
        await asyncio.sleep(0.35)  # past button 17's cooldown
        press(pins, 17)  # restart: the current line stops, the queue is dropped, the line starts again
        await until(lambda: first.state == "stopped")
        await until(lambda: speaker.current is not None and speaker.current is not first)
        assert speaker.queued == 0
        assert [r.state for r in speaker.history.values()][1:3] == ["dropped", "dropped"]
        press(pins, 22)  # the stop button
        await until(lambda: not speaker.speaking, timeout=2)
        assert list(speaker.history.values())[-1].state == "stopped"
        assert 'kiosk_requests_rejected_total{reason="busy"} 1.0' in service.metrics_text()[0].decode()
    finally:
        await service.stop()


async def test_a_queued_press_keeps_the_playing_lines_led_lit(server, tmp_path, alsa_file, pins):
    device, _ = alsa_file
    server.behaviour.realtime_factor = 1.0
    server.behaviour.chunk_sizes = [960]
    service = await started(config(server.url, tmp_path / "c", BUTTONS), device, pins)
    try:
        press(pins, 19)
        await until(lambda: service.speaker.speaking)
        press(pins, 19)  # the same button again: queued behind its own line
        await until(lambda: service.speaker.queued == 1)
        assert pins.pin(26).state is True
        service.stop_speaking()
        await until(lambda: not service.speaker.speaking)
        assert pins.pin(26).state is False
    finally:
        await service.stop()


class WedgedSink:
    """An AudioSink whose writes block until released: a frozen device or driver."""

    def __init__(self, fmt):
        self.fmt, self.period_frames, self.buffer_frames = fmt, 960, 3840
        self.release = threading.Event()

    def write(self, frames):
        self.release.wait(30)
        return 0

    def wait_played(self, stop):
        pass

    def drop(self):
        pass

    def close(self):
        self.release.set()


def drain(sock):
    try:
        while sock.recv(4096):
            pass
    except BlockingIOError:
        pass


async def test_watchdog_goes_silent_when_the_alsa_writer_is_wedged(server, tmp_path, pins):
    sock_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.setblocking(False)
        sinks = []

        def open_wedged(fmt):
            sinks.append(WedgedSink(fmt))
            return sinks[-1]

        notifier = Notifier({"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "200000"})
        service = Service(
            config(server.url, tmp_path / "c"),
            open_sink=open_wedged,
            pin_factory=pins,
            notifier=notifier,
            writer_stuck_s=0.6,
        )
        await asyncio.wait_for(service.start(), timeout=10)
        loop = asyncio.get_running_loop()

        async def messages(seconds):
            got, deadline = [], time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                try:
                    got.append((await asyncio.wait_for(loop.sock_recv(sock, 4096), left)).decode())
                except TimeoutError:
                    break
            return got

        try:
            healthy = await messages(1.0)
            assert healthy[0].startswith("READY=1") and healthy.count("WATCHDOG=1") >= 3
            service.play(phrase="welcome", text=None, origin="api")
            await until(lambda: not service.health()[0], timeout=5)  # stuck in write() beyond writer_stuck_s
            assert "audio writer stuck" in service.health()[1]
            await asyncio.sleep(0.15)
            drain(sock)  # pings sent before it counted as stuck
            silent = await messages(1.0)
            assert "WATCHDOG=1" not in silent
        finally:
            for sink in sinks:
                sink.release.set()
            await service.stop()


async def test_frames_of_a_cached_replay_equal_the_stream(server, tmp_path, alsa_file, pins):
    device, _out = alsa_file
    service = await started(config(server.url, tmp_path / "c"), device, pins)
    try:
        first = service.play(phrase="quartz", text=None, origin="api")
        await wait_idle(service)
        second = service.play(phrase="quartz", text=None, origin="api")
        await wait_idle(service)
        assert first.trace.source == "openai" and second.trace.source == "cache"
        assert first.trace.frames == second.trace.frames == len(pcm_for(QUARTZ)) // 2
        assert second.trace.frames == OPENAI_PCM.frames_for_ms(second.trace.duration_ms)
    finally:
        await service.stop()
