"""The public captions server cannot be used to hurt the speaker: a thousand pages that never read, a page that stops
reading while the captions change, and odd requests for the events, each against the real service (file ALSA
sink, loopback fake OpenAI, MockFactory buttons) on loopback.

Each flooding machine is a distinct loopback address (127.0.0.2 … 127.0.0.64, all loopback on Linux); a newcomer
is 127.0.0.100. Every wait is bounded. Speed is measured by `bench/reliability.py --only sse-flood`, not here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import time

import aiohttp
import pytest
from test_captions import WELCOME, CaptionReader, config
from test_service import press, started, until, wait_idle

from kiosk.captions import live
from kiosk.captions.feed import MAX_FOLLOWERS, CaptionFeed, TooManyFollowers
from kiosk.captions.timing import estimate

FLOODERS = [f"127.0.0.{i}" for i in range(2, 65)]
NEWCOMER = "127.0.0.100"
FLOOD = 1000
PING_S = 0.5  # the streams' ping interval in these tests (15 s in the product)


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-secret")


@pytest.fixture(autouse=True)
def quick_pings(monkeypatch):
    monkeypatch.setattr(live, "PING_S", PING_S)


@pytest.fixture
def no_server_errors(caplog):
    """Fails the test if anything logged an error (aiohttp logs a 500's traceback at ERROR)."""
    caplog.set_level(logging.WARNING)
    yield
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def events_request(port: int, target: str = "/captions/events", extra: bytes = b"", version: str = "1.1") -> bytes:
    return (
        f"GET {target} HTTP/{version}\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n".encode()
        + extra
        + b"\r\n"
    )


async def never_reading(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """A connection from `source` that asks for the events and then reads nothing (its socket is not read at all:
    what the server sends stays in the kernel's buffers). None when the connection could not be made."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    except OSError:
        return None
    writer.transport.pause_reading()
    writer.write(events_request(port))
    return reader, writer


async def answer_of(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int | None:
    """Read now what the server sent on a never-reading connection: the status, None when closed unanswered."""
    writer.transport.resume_reading()
    try:
        line = await asyncio.wait_for(reader.readline(), timeout=2)
    except (OSError, TimeoutError):
        return None
    return int(line.split()[1]) if line.startswith(b"HTTP/1.1 ") else None


async def first_state(url: str, source: str, timeout: float = 1.0) -> dict | int | None:
    """Follow `url` from `source` on a fresh connection: the first state sent, else the status, else None (refused
    or not answered within `timeout`)."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as http,
            http.get(url) as response,
        ):
            if response.status != 200:
                return response.status
            async for raw in response.content:
                if raw.startswith(b"data: "):
                    return json.loads(raw[6:])
    except (aiohttp.ClientError, TimeoutError):
        return None
    return None


async def status_of(url: str, source: str, timeout: float = 1.0) -> int | None:
    """GET `url` from `source` on a fresh connection: its status, None when refused or not answered in time."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as http,
            http.get(url) as response,
        ):
            return response.status
    except (aiohttp.ClientError, TimeoutError):
        return None


@contextlib.asynccontextmanager
async def peak_of(read):
    """The highest value `read()` returned, sampled every few ms while the block runs: `peak[0]`."""
    peak = [read()]

    async def sample():
        while True:
            peak[0] = max(peak[0], read())
            await asyncio.sleep(0.002)

    sampler = asyncio.create_task(sample())
    try:
        yield peak
    finally:
        sampler.cancel()
        peak[0] = max(peak[0], read())


def test_at_its_limit_the_feed_gives_a_new_address_the_place_of_the_busiest_ones_oldest_page():
    feed = CaptionFeed(max_followers=6, max_per_address=4)
    crowd = [feed.follow("10.0.0.1") for _ in range(4)] + [feed.follow("10.0.0.2") for _ in range(2)]
    for page in crowd:
        page.changed.clear()
    newcomer = feed.follow("10.0.0.3")  # 10.0.0.1 holds 4, more than twice the newcomer's 1
    assert crowd[0].displaced and crowd[0].changed.is_set()  # its stream ends (kiosk.captions.live)
    assert not any(page.displaced for page in crowd[1:]) and not newcomer.displaced
    feed.unfollow(crowd[0])  # its stream's own unfollow changes nothing
    assert feed.followers == 6
    feed.follow("10.0.0.4")  # 10.0.0.1 still holds 3
    assert crowd[1].displaced
    feed.unfollow(crowd[1])
    with pytest.raises(TooManyFollowers):  # 2 is not more than twice 1: the crowd keeps what it has
        feed.follow("10.0.0.5")
    with pytest.raises(TooManyFollowers):  # nor do the crowd's machines take each other's places
        feed.follow("10.0.0.2")


async def test_a_thousand_pages_that_never_read_leave_the_speaker_and_newcomers_served(
    server, tmp_path, alsa_file, pins, no_server_errors
):
    device, _ = alsa_file
    service = await started(config(server.url, tmp_path / "c"), device, pins)
    feed, history = service.captions, service.speaker.history
    port = service.parts.captions_port
    events_url = f"http://127.0.0.1:{port}/captions/events"
    held = []
    try:
        press(pins, 17)  # into the cache before the flood
        await wait_idle(service)
        async with peak_of(lambda: feed.followers) as followers_peak:
            for i in range(FLOOD):  # the machines take turns, as a crowd's would
                held.append(await never_reading(port, FLOODERS[i % len(FLOODERS)]))
            await until(lambda: feed.followers == MAX_FOLLOWERS)
            await asyncio.sleep(3 * PING_S)  # pings go out to pages that take nothing in

            # Cached presses all play, and each is traced.
            for n in range(len(history) + 1, len(history) + 11):
                press(pins, 17)
                await until(lambda n=n: len(history) == n and list(history.values())[-1].state in ("done", "failed"))
            flood_presses = list(history.values())[1:]
            assert [r.state for r in flood_presses] == ["done"] * 10
            assert all(r.trace is not None and r.trace.source == "cache" for r in flood_presses)
            assert all(r.trace.first_audio_ms is not None for r in flood_presses)

            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{service.port}/healthz") as health:
                assert health.status == 200

            # More from a flooding machine: 429, or dropped by the connection guard; never a server error.
            extra = [await status_of(events_url, FLOODERS[0]) for _ in range(20)]
            assert set(extra) <= {429, None}, extra

            # A newcomer sees what the captions show now, once the guard and the feed have made room for it.
            line, text = object(), "A line being heard now."
            feed.heard(line, text, "en", estimate(text, 2.0), time.monotonic())
            tries, state = 0, None
            async with asyncio.timeout(5):
                while not isinstance(state, dict):
                    tries += 1
                    state = await first_state(events_url, NEWCOMER)
                    assert state in (None, 429) or isinstance(state, dict), state
            assert state["state"] == "speaking" and state["text"] == text, state
            assert state["id"] == feed.state()["id"]
            feed.ended(line)
            print(f"newcomer served after {tries} tries")

        assert followers_peak[0] <= MAX_FOLLOWERS
        answers = [await answer_of(*h) if h else None for h in held]
        assert all(a in (200, 429, None) for a in answers), sorted({a for a in answers if a not in (200, 429)})
        print(
            f"of {FLOOD} never-reading pages: {answers.count(200)} streamed, {answers.count(429)} got 429, "
            f"{answers.count(None)} dropped; peak followers {followers_peak[0]}"
        )
        assert answers.count(200) >= MAX_FOLLOWERS
    finally:
        for h in held:
            if h:
                h[1].close()
        held.clear()
    try:
        await until(lambda: feed.followers == 0, timeout=5 + 3 * PING_S)
        await wait_idle(service)
    finally:
        await service.stop()


LONG_TEXT = " ".join(["The hall of minerals holds four thousand specimens from every continent."] * 150)  # 11 KB


async def test_a_page_that_stops_reading_is_cut_while_the_others_get_every_change(
    server, tmp_path, alsa_file, pins, monkeypatch, no_server_errors
):
    send_timeout = 3.0
    monkeypatch.setattr(live, "SEND_TIMEOUT_S", send_timeout)
    device, _ = alsa_file
    service = await started(config(server.url, tmp_path / "c"), device, pins)
    feed, port = service.captions, service.parts.captions_port
    loop = asyncio.get_running_loop()
    stuck = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        async with CaptionReader(f"http://127.0.0.1:{port}/captions/events") as reader:
            stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
            stuck.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(stuck, ("127.0.0.1", port)), 2)
            await asyncio.wait_for(loop.sock_sendall(stuck, events_request(port)), 2)
            await until(lambda: feed.followers == 2)

            # Large states, one change after another, each as soon as the reading page has the last one.
            began, sent, size = time.monotonic(), [], 0
            while feed.followers == 2:
                assert time.monotonic() - began < send_timeout + 5, "the stuck page was never cut"
                text = f"{len(sent)}. {LONG_TEXT}"
                feed.heard(object(), text, "en", estimate(text, 60.0), time.monotonic())
                sent.append(feed.state()["id"])
                size = max(size, len(json.dumps(feed.state())))
                # Well within the send timeout: the loop never waits on the stuck page to serve this one.
                await until(lambda: reader.states[-1].get("id") == sent[-1], timeout=send_timeout / 2)
            cut_after = time.monotonic() - began
            assert feed.followers == 1
            received = [s["id"] for s in reader.states if s["state"] == "speaking"]
            assert received == sent  # every change, in order
            print(f"stuck page cut after {cut_after:.2f} s and {len(sent)} states of up to {size} bytes")

            # It was closed, not only forgotten: what the kernel holds for it ends in EOF or a reset.
            async with asyncio.timeout(2):
                with contextlib.suppress(ConnectionError):
                    while await loop.sock_recv(stuck, 65536):
                        pass

            # And the reading page goes on following.
            line = object()
            feed.heard(line, WELCOME, "en", estimate(WELCOME, 5.0), time.monotonic())
            await until(lambda: reader.states[-1].get("text") == WELCOME)
            feed.ended(line)
            await until(lambda: reader.states[-1]["state"] == "idle")
    finally:
        stuck.close()
        await service.stop()


ODD = [
    ("junk Last-Event-ID", events_request, {"extra": b"Last-Event-ID: \xff\xfe'\"<script>;--\r\n"}),
    ("huge number Last-Event-ID", events_request, {"extra": b"Last-Event-ID: " + b"9" * 4000 + b"\r\n"}),
    ("negative Last-Event-ID", events_request, {"extra": b"Last-Event-ID: -1\r\n"}),
    ("many Last-Event-IDs", events_request, {"extra": b"Last-Event-ID: x\r\n" * 60}),
    ("oversized header", events_request, {"extra": b"X-Big: " + b"a" * 20000 + b"\r\n"}),
    ("too many headers", events_request, {"extra": b"".join(b"X-%d: v\r\n" % i for i in range(300))}),
    ("NUL in the query", events_request, {"target": "/captions/events?\x00\x00=\x00"}),
    ("escaped NUL and bad UTF-8 in the query", events_request, {"target": "/captions/events?%00%00=%ff%fe&&=&"}),
    ("a lone question mark", events_request, {"target": "/captions/events?"}),
    ("a huge query", events_request, {"target": "/captions/events?x=" + "a" * 9000}),
    ("control characters in a header", events_request, {"extra": b"Last-Event-ID: a\x01\x7fb\r\n"}),
    ("HTTP/1.0", events_request, {"version": "1.0"}),
    ("a body on the GET", events_request, {"extra": b"Content-Length: 5\r\n\r\nhello"}),
    ("a chunked body on the GET", events_request, {"extra": b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"}),
    ("an upgrade", events_request, {"extra": b"Connection: Upgrade\r\nUpgrade: websocket\r\n"}),
    ("a range", events_request, {"extra": b"Range: bytes=0-10\r\nAccept-Encoding: gzip, br\r\n"}),
    ("Expect: 100-continue", events_request, {"extra": b"Expect: 100-continue\r\n"}),
    ("dots in the path", events_request, {"target": "/captions/x/../events"}),
]


async def test_odd_requests_for_the_events_never_get_a_server_error_nor_reach_the_speaker(
    server, tmp_path, alsa_file, pins, no_server_errors
):
    device, _ = alsa_file
    service = await started(config(server.url, tmp_path / "c"), device, pins)
    port = service.parts.captions_port
    answers = {}
    try:
        for name, build, kwargs in ODD:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(build(port, **kwargs))
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=3)
                if head.startswith(b"HTTP/1.1 100 "):  # Expect: 100-continue; the answer follows
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=3)
            except (OSError, asyncio.IncompleteReadError) as exc:
                head = repr(exc).encode()
            finally:
                writer.close()
            answers[name] = head.split(b"\r\n")[0].decode("latin-1")
            if head.split(b" ")[1:2] == [b"200"]:
                answers[name] += " event-stream" if b"text/event-stream" in head else " not a stream"
        print(answers)
        assert all(re.fullmatch(r"HTTP/1\.[01] (200 \S+ event-stream|4\d\d .*)", a) for a in answers.values()), answers
        await until(lambda: service.captions.followers == 0, timeout=2 + 3 * PING_S)
        assert len(service.speaker.history) == 0 and not service.speaker.speaking
    finally:
        await service.stop()
