"""OSC show control: a python-osc client plays a line on a running service; bad messages are refused, in words."""

from __future__ import annotations

import asyncio

import pytest
from conftest import file_sink_opener
from fake_openai import pcm_for
from pythonosc.osc_message import OscMessage
from pythonosc.udp_client import SimpleUDPClient

from kiosk.config import load_config
from kiosk.service import Service
from kiosk.systemd import Notifier

WELCOME = "Welcome to the hall of minerals."


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-secret")


PLAY_ARGS = "/kiosk/play takes the id of a configured line, and optionally a language code"


async def reply(client: SimpleUDPClient) -> OscMessage:
    data = await asyncio.wait_for(asyncio.to_thread(client.receive, 5), 10)
    assert data, "no OSC reply within 5 s"
    return OscMessage(data)


async def test_osc_play_speaks_a_line_and_bad_messages_are_refused(tmp_path, server, alsa_file, pins):
    device, out = alsa_file
    config = tmp_path / "kiosk.yaml"
    config.write_text(
        f"openai:\n  base_url: {server.url}/v1\n"
        f"cache:\n  dir: {tmp_path / 'cache'}\nhistory:\n  file: {tmp_path / 'history.sqlite3'}\n"
        f"staff:\n  enabled: false\n  settings_file: {tmp_path / 'settings.yaml'}\napi:\n  port: 0\n"
        f"osc:\n  enabled: true\n  bind: 127.0.0.1\n  port: 0\n"
        f"phrases:\n  welcome: {WELCOME}\n"
    )
    service = Service(
        load_config(config),
        config_path=config,
        open_sink=file_sink_opener(device),
        pin_factory=pins,
        notifier=Notifier({}),
    )
    await asyncio.wait_for(service.start(), 10)
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while not service.fleet.osc.port:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        client = SimpleUDPClient("127.0.0.1", service.fleet.osc.port)

        client.send_message("/kiosk/play", "welcome")
        ok = await reply(client)
        assert (ok.address, ok.params) == ("/kiosk/ok", ["/kiosk/play"])
        await asyncio.wait_for(service.speaker.idle(), 10)
        assert [(r.origin, r.phrase, r.state) for r in service.speaker.history.values()] == [("osc", "welcome", "done")]
        assert out.read_bytes().startswith(pcm_for(WELCOME))

        for address, args, why in [
            ("/kiosk/play", "nosuch", "no phrase 'nosuch'"),
            ("/kiosk/play", 42, PLAY_ARGS),
            ("/kiosk/play", None, PLAY_ARGS),
            ("/kiosk/play", ["welcome", "de", "x"], PLAY_ARGS),
            ("/kiosk/play", ["welcome", "it"], "'it' is not an offered language (offered: none)"),
            ("/kiosk/volume", 300, "'volume' must be a whole number from 0 to 100"),
            ("/kiosk/volume", 55.5, "'volume' must be a whole number from 0 to 100"),
            ("/kiosk/volume", float("nan"), "'volume' must be a whole number from 0 to 100"),
            ("/kiosk/stop", "now", "/kiosk/stop takes no arguments"),
            (
                "/kiosk/*",
                None,
                "unknown address '/kiosk/*'; known: /kiosk/play, /kiosk/play_at, /kiosk/stop, /kiosk/volume",
            ),
        ]:
            client.send_message(address, args)
            error = await reply(client)
            assert (error.address, error.params) == ("/kiosk/error", [address, why])

        client.send_message("/kiosk/play", ["welcome", "de"])  # an exhibit without languages has no German
        error = await reply(client)
        assert error.params[1].startswith("'de' is not an offered language")

        client._sock.sendto(b"\x00garbage", ("127.0.0.1", service.fleet.osc.port))
        error = await reply(client)
        assert error.params == ["", "not an OSC message or bundle"]

        client.send_message("/kiosk/volume", 40)  # saved as the staff page saves it, then reloaded
        ok = await reply(client)
        assert (ok.address, ok.params) == ("/kiosk/ok", ["/kiosk/volume"])
        assert service.cfg.audio.volume == 40
        client.send_message("/kiosk/stop", None)
        assert (await reply(client)).address == "/kiosk/ok"
        assert (await service.status())["osc"]["state"] == "listening"
    finally:
        await service.stop()
