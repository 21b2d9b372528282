"""`kiosk fleet update` over a real Mosquitto broker: the release served from the command's own little server,
downloaded by the speakers in the targeted group only, checked and left in their update spool; and every way a
download can go wrong (damaged file, wrong hash, older version, trickling, stalling, over-size, redirect loop)
refused with a sentence, nothing left behind, in bounded time. Loopback only; the root updater is played by the
test (it writes the record as kiosk.update.rollout's Updater does)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from mosquitto import Watcher
from release_files import flip_byte, make_archive
from test_fleet_mqtt import kiosk, online, speakers, until

from kiosk import __version__
from kiosk.config import load_config
from kiosk.fleet import download
from kiosk.fleet import mqtt as fleet_mqtt
from kiosk.fleet import update as fleet_update
from kiosk.update.archive import newer

NEW = "99.0.0"
#: The mqtt: line that lets a speaker take `kiosk fleet update` (off by default).
TAKES_UPDATES = "  accept_updates: true\n"
assert newer(NEW, __version__)


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-secret")
    monkeypatch.setattr(fleet_mqtt, "FIRST_RETRY_S", 0.2)
    monkeypatch.setattr(fleet_mqtt, "STATUS_CHECK_S", 0.5)
    monkeypatch.setattr(fleet_mqtt, "STATUS_MIN_INTERVAL_S", 0.2)
    monkeypatch.setattr(fleet_update, "BASELINE_S", 0.5)


def spool(speaker) -> Path:
    return speaker.config.parent / "updates"  # the state dir is the staff settings file's directory


def record(speaker) -> dict | None:
    return speaker.service.fleet.updates.record()


async def play_the_updater(speaker) -> None:
    """What kiosk-update.service would do once the archive waits: here only the record (the file is left)."""
    await until(lambda: (r := record(speaker)) is not None and r["result"] == download.WAITING, timeout=20)
    version = record(speaker)["version"]
    download.write_record(speaker.config.parent, "updated", version, f"updated from {__version__} to {version}")
    speaker.service.fleet.status_changed()


def mqtt_cfg(tmp_path: Path, port: int):
    """The config of the staff member's machine: only the broker."""
    path = tmp_path / "cli.yaml"
    path.write_text(f"staff:\n  enabled: false\nmqtt:\n  host: 127.0.0.1\n  port: {port}\n")
    return load_config(path).mqtt


async def test_the_group_gets_the_release_and_reports_it_the_other_speaker_nothing(tmp_path, server, broker):
    archive = make_archive(tmp_path, NEW)
    specs = [("hall-a", ["hall"]), ("hall-b", ["hall", "floor1"]), ("lobby-c", ["lobby"])]
    async with (
        Watcher(broker.port) as watch,
        speakers(tmp_path, server, broker.port, *specs, extra=TAKES_UPDATES) as (a, b, c),
    ):
        for name in ("hall-a", "hall-b", "lobby-c"):
            await watch.wait_for(online(name))
            await watch.wait_for(lambda s, n=name: s.topic == f"kiosk/{n}/status" and b'"groups"' in s.payload)
        updaters = [asyncio.create_task(play_the_updater(s)) for s in (a, b)]
        said: list[str] = []
        started = time.monotonic()
        ok = await asyncio.wait_for(
            fleet_update.update_fleet(
                mqtt_cfg(tmp_path, broker.port),
                archive,
                group="hall",
                bind="127.0.0.1",
                wait_s=20,
                say=said.append,
                warn=said.append,
            ),
            30,
        )
        assert ok, said
        assert time.monotonic() - started < 20
        for updater in updaters:
            await asyncio.wait_for(updater, 5)
        assert said[0].startswith("note: speakers will fetch from 127.0.0.1")
        assert said[1].startswith(f"sent {NEW} (") and "kiosk/group/hall/update" in said[1]
        assert "hall-a, hall-b" in said[1] and "lobby-c" not in said[1]
        assert sorted(said[2:4]) == [
            f"hall-a: updated: updated from {__version__} to {NEW}",
            f"hall-b: updated: updated from {__version__} to {NEW}",
        ]
        assert said[4] == f"2 of 2 updated to {NEW}; the file was fetched 2x"

        for speaker in (a, b):
            assert (spool(speaker) / "incoming.tar").read_bytes() == archive.read_bytes()
            assert sorted(p.name for p in spool(speaker).iterdir()) == ["incoming.tar"]  # no temp file left
            assert spool(speaker).stat().st_mode & 0o777 == 0o750
        assert not spool(c).exists() and record(c) is None

        # what the speakers published on the way (at most one status a second: steps may be coalesced)
        results = [(json.loads(s.payload).get("update") or {}).get("result") for s in watch.on("kiosk/hall-a/status")]
        assert set(results) <= {None, "downloading", download.WAITING, "updated"} and results[-1] == "updated"
        assert all((json.loads(s.payload).get("update") is None) for s in watch.on("kiosk/lobby-c/status"))
        assert [s.topic for s in watch.seen if s.topic.endswith("/update")] == ["kiosk/group/hall/update"]

        # a second run, from the command line: the same version now waits in the spool, so the speaker refuses it
        mqtt_cfg(tmp_path, broker.port)
        args = ["--device", "hall-a", str(archive), "--bind", "127.0.0.1", "--wait", "8"]
        code, out, err = await kiosk("fleet", "update", *args, "--config", str(tmp_path / "cli.yaml"))
        lines = out.splitlines()
        assert code == 1 and len(lines) == 3, (out, err)
        assert lines[0].startswith(f"sent {NEW} (10 KB) to kiosk/hall-a/update, served from 127.0.0.1:")
        assert lines[1] == "hall-a: refused: another update is waiting to be installed; try again in a minute"
        assert lines[2] == f"0 of 1 updated to {NEW}; the file was fetched 0x"


async def test_a_damaged_or_wrong_file_is_refused_before_anything_is_sent(tmp_path, broker):
    cli_config = tmp_path / "cli.yaml"
    cli_config.write_text(f"staff:\n  enabled: false\nmqtt:\n  host: 127.0.0.1\n  port: {broker.port}\n")
    damaged = flip_byte(make_archive(tmp_path, NEW))
    not_a_release = tmp_path / "notes.tar"
    not_a_release.write_bytes(b"hello" * 100)
    async with Watcher(broker.port) as watch:
        for file, message in ((damaged, "the file is damaged"), (not_a_release, "not a release archive")):
            code, out, err = await kiosk("fleet", "update", "--all", str(file), "--config", str(cli_config))
            assert code == 1 and out == "", (out, err)
            assert err.startswith(f"kiosk: error: {file.name}: ") and message in err, err
        code, out, err = await kiosk(
            "fleet", "update", "--device", "Bad Name", str(damaged), "--config", str(cli_config)
        )
        assert code == 2 and "is not a name" in err
        # and a good file for a speaker that is not there: nothing sent either
        (tmp_path / "good").mkdir()
        good = make_archive(tmp_path / "good", NEW)
        code, out, err = await kiosk("fleet", "update", "--device", "ghost", str(good), "--config", str(cli_config))
        assert code == 1 and "ghost is not online on the broker; nothing was sent" in err, err
        await asyncio.sleep(0.2)
    assert not [s for s in watch.seen if s.topic.endswith("/update")]


@contextlib.asynccontextmanager
async def one_speaker(tmp_path, server, broker, extra=TAKES_UPDATES):
    async with (
        Watcher(broker.port) as watch,
        speakers(tmp_path, server, broker.port, ("solo", []), extra=extra) as (solo,),
    ):
        await watch.wait_for(lambda s: s.topic == "kiosk/solo/status")  # sent once subscribed to its commands
        yield watch, solo


async def refusal(watch, payload: dict | bytes) -> dict:
    sent = time.monotonic()
    await watch.publish("kiosk/solo/update", payload if isinstance(payload, bytes) else json.dumps(payload))
    error = await watch.wait_for(lambda s: s.topic == "kiosk/solo/error", after=sent, timeout=5)
    return json.loads(error.payload)


async def refused_record(solo, after: float, timeout: float = 10) -> dict:
    """The record once this download ended in a refusal (written after `after`, a time.time())."""
    try:
        await until(
            lambda: (r := record(solo)) is not None and r["time"] > after and r["result"] != "downloading", timeout
        )
    except AssertionError:
        raise AssertionError(f"no refusal recorded within {timeout} s; the record: {record(solo)}") from None
    return record(solo)


async def test_a_speaker_takes_no_update_over_mqtt_unless_its_operator_allows_it(tmp_path, server, broker):
    # Whoever may publish on the broker would otherwise install a program: mqtt.accept_updates is off by default.
    async with one_speaker(tmp_path, server, broker, extra="") as (watch, solo):
        answer = await refusal(watch, {"url": "http://127.0.0.1:9/x.tar", "sha256": "a" * 64, "version": NEW})
        assert (answer["status"], answer["error"]) == (
            403,
            "this speaker does not take updates over MQTT (mqtt.accept_updates is off)",
        )
        assert not spool(solo).exists() and record(solo) is None


async def test_bad_commands_an_older_version_and_a_wrong_hash_are_refused_and_leave_nothing(tmp_path, server, broker):
    archive = make_archive(tmp_path, NEW)
    old = make_archive(tmp_path, "0.0.1")
    good = {"url": "http://127.0.0.1:9/x.tar", "sha256": "a" * 64, "version": NEW}
    async with one_speaker(tmp_path, server, broker) as (watch, solo):
        for change, status, message in [
            ({"url": "ftp://127.0.0.1/x.tar"}, 400, "'url' must be an http:// or https:// address with a host"),
            ({"url": "http:///x.tar"}, 400, "'url' must be an http:// or https://"),
            ({"url": "http://h/" + "x" * 2100}, 400, "'url' must be"),
            ({"url": 7}, 400, "'url' must be"),
            ({"sha256": "abc"}, 400, "'sha256' must be the archive's SHA-256"),
            ({"sha256": "g" * 64}, 400, "'sha256' must be"),
            ({"version": "v" * 65}, 400, "'version' must be a version string of at most 64"),
            ({"version": "not a version"}, 400, "'version' 'not a version' is not a version"),
            ({"version": "0.0.1"}, 409, f"0.0.1 is not newer than {__version__}, which runs now"),
            ({"version": __version__}, 409, f"{__version__} is not newer than {__version__}"),
            ({"extra": 1}, 400, "unknown field(s): extra"),
        ]:
            answer = await refusal(watch, {**good, **change})
            assert (answer["command"], answer["status"]) == ("update", status), answer
            assert answer["error"].startswith(message), answer
        assert (await refusal(watch, b"not json"))["error"] == "body must be JSON"
        assert not spool(solo).exists() and record(solo) is None

        async with fleet_update.serve(archive.read_bytes(), archive.name, "127.0.0.1", 0) as served:
            url = served.url("127.0.0.1")
            before = time.time()
            await watch.publish("kiosk/solo/update", json.dumps({**good, "url": url}))  # the hash of another file
            refused = await refused_record(solo, before)
            assert refused["result"] == "refused" and refused["version"] == NEW
            assert "the download's SHA-256 is not the command's" in refused["message"]
            assert list(spool(solo).iterdir()) == []
            status = await watch.wait_for(
                lambda s: s.topic == "kiosk/solo/status" and "SHA-256" in str(json.loads(s.payload)["update"])
            )
            assert json.loads(status.payload)["update"]["result"] == "refused"

            # the older archive under a newer version's name: the hash matches, the archive itself is refused
            sha = hashlib.sha256(old.read_bytes()).hexdigest()
            async with fleet_update.serve(old.read_bytes(), old.name, "127.0.0.1", 0) as served_old:
                before = time.time()
                await watch.publish(
                    "kiosk/solo/update", json.dumps({"url": served_old.url("127.0.0.1"), "sha256": sha, "version": NEW})
                )
                refused = await refused_record(solo, before)
            assert f"0.0.1 is not newer than {__version__}" in refused["message"]
            assert list(spool(solo).iterdir()) == []

            # the serving side: only GET of the secret path
            assert served.path.count("/") == 2 and len(served.path.split("/")[1]) >= 32
            async with aiohttp.ClientSession() as client:
                base = f"http://127.0.0.1:{served.port}"
                for method, path in [
                    ("GET", "/"),
                    ("GET", "/" + archive.name),
                    ("POST", served.path),
                    ("HEAD", served.path),
                    ("GET", served.path + "x"),
                    ("GET", served.path + "?a=1"),
                ]:
                    async with client.request(method, base + path) as response:
                        assert response.status == 404, (method, path)
                async with client.get(url) as response:
                    assert response.status == 200 and await response.read() == archive.read_bytes()


class Hostile:
    """A server that misbehaves in one named way per path."""

    def __init__(self):
        self.port = 0
        self.stop = asyncio.Event()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        kind = request.path.strip("/")
        if kind == "loop":
            raise web.HTTPFound("/loop")
        if kind not in ("trickle", "stall", "huge"):
            raise web.HTTPNotFound()
        response = web.StreamResponse(headers={"Content-Type": "application/x-tar"})
        if kind == "trickle":
            response.content_length = 100_000
        await response.prepare(request)
        if kind == "stall":
            await self.stop.wait()
        with contextlib.suppress(ConnectionResetError):  # the speaker hung up, as it should
            while not self.stop.is_set():  # trickle: a byte now and then; huge: as fast as it goes
                await response.write(b"x" if kind == "trickle" else b"x" * 65536)
                await asyncio.sleep(0.05 if kind == "trickle" else 0)
        return response


@contextlib.asynccontextmanager
async def hostile_server():
    hostile = Hostile()

    async def handle(request):
        if request.path == "/length":  # a Content-Length past the cap: refused before a byte is read
            response = web.StreamResponse(headers={"Content-Length": str(download.MAX_BYTES + 1)})
            await response.prepare(request)
            await hostile.stop.wait()
            return response
        return await hostile.handle(request)

    runner = web.ServerRunner(web.Server(handle), shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hostile.port = runner.addresses[0][1]
    try:
        yield hostile
    finally:
        hostile.stop.set()
        await runner.cleanup()


async def test_a_trickling_stalling_oversize_or_looping_server_is_cut_off(tmp_path, server, broker, monkeypatch):
    monkeypatch.setattr(download, "TOTAL_S", 2.0)
    monkeypatch.setattr(download, "SOCK_READ_S", 0.5)
    monkeypatch.setattr(download, "MAX_BYTES", 200_000)
    async with one_speaker(tmp_path, server, broker) as (watch, solo), hostile_server() as hostile:
        base = f"http://127.0.0.1:{hostile.port}"
        for kind, message in [
            ("trickle", "was too slow: the download was cut off (at most 2 s)"),
            ("stall", "was too slow"),
            ("huge", "sent more than 200000 bytes; a release is not that large"),
            ("length", "offers 200001 bytes; a release is at most 200000"),
            ("loop", "redirected more than 3 times"),
            ("missing", "127.0.0.1 answered 404"),
        ]:
            body = {"url": f"{base}/{kind}", "sha256": "0" * 64, "version": NEW}
            before, started = time.time(), time.monotonic()
            await watch.publish("kiosk/solo/update", json.dumps(body))
            if kind == "trickle":  # while one runs, another is refused
                await until(
                    lambda t=before: (r := record(solo)) is not None and r["result"] == "downloading" and r["time"] > t
                )
                answer = await refusal(watch, body)
                assert answer["status"] == 409 and "being downloaded; one update at a time" in answer["error"]
            refused = await refused_record(solo, before, timeout=8)
            assert refused["result"] == "refused" and message in refused["message"], (kind, refused)
            assert refused["message"].startswith(f"update to {NEW} refused: ")
            assert time.monotonic() - started < 5, kind
            assert list(spool(solo).iterdir()) == [], kind  # the temp file is gone
        await solo.service.fleet.updates.wait()
        assert solo.origins == []  # and the speaker is well: it still speaks
        solo.service.play(phrase="welcome", text=None, origin="api")
        await solo.idle()


async def test_a_download_still_running_when_the_service_stops_is_stopped_and_leaves_nothing(tmp_path, server, broker):
    async with one_speaker(tmp_path, server, broker) as (watch, solo), hostile_server() as hostile:
        before = time.time()
        body = {"url": f"http://127.0.0.1:{hostile.port}/stall", "sha256": "0" * 64, "version": NEW}
        await watch.publish("kiosk/solo/update", json.dumps(body))
        await until(lambda: (r := record(solo)) is not None and r["result"] == "downloading" and r["time"] > before)
        await until(lambda: any(spool(solo).iterdir()))  # the temp file the download writes into
        started = time.monotonic()
        await solo.service.stop()
        assert time.monotonic() - started < 3  # SIGTERM's bound: the download does not hold the stop
        stopped = record(solo)
        assert stopped["result"] == "refused" and stopped["message"] == f"the download of {NEW} was stopped"
        assert list(spool(solo).iterdir()) == []
