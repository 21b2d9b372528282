"""Controls at the exhibit (issue #22): the visitor's volume buttons, confirmed by a tone, kept within the staff's
range and back to the staff's volume when left alone; and the replay button. Real service, MockFactory presses,
the file ALSA sink, the loopback fake OpenAI server."""

import asyncio

import aiohttp
import pytest
from conftest import Clock
from test_service import press, started, until, wait_idle

from kiosk.config import AudioConfig, ButtonConfig, load_config, parse_config
from kiosk.errors import ConfigError
from kiosk.fleet.discovery import DeviceInfo, messages
from kiosk.fleet.topics import Topics
from kiosk.staff.auth import PasswordFile
from kiosk.visitor import VisitorVolume

WELCOME = "Welcome to the hall of minerals."
WILLKOMMEN = "Willkommen in der Halle der Mineralien."
# The device named has no mixer (ALSA's null; the lines go to the test's file sink), so the staff's volume is
# software gain and a line's gain is the volume it plays at, whatever ALSA default is (a PulseAudio server has one).
AUDIO = (
    'audio:\n  device: "null"\n  volume: 50\n  visitor_volume_min: 30\n  visitor_volume_max: 80\n'
    "  visitor_volume_step: 10\n"
)
BUTTONS = """buttons:
  - {pin: 17, phrase: welcome, cooldown_ms: 0}
  - {pin: 23, action: volume_up, cooldown_ms: 0, bounce_ms: 0, reset_s: 60}
  - {pin: 24, action: volume_down, cooldown_ms: 0, bounce_ms: 0, reset_s: 60}
  - {pin: 25, action: replay, cooldown_ms: 0}
  - {pin: 5, action: language, cooldown_ms: 0, reset_s: 60}
"""


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-secret")


def config(server_url, cache_dir, audio=AUDIO):
    return parse_config(
        f"openai:\n  base_url: {server_url}/v1\n  first_byte_timeout_s: 2\n"
        f"cache:\n  dir: {cache_dir}\nhistory:\n  file: {cache_dir}.history.sqlite3\n"
        f"staff:\n  enabled: false\napi:\n  port: 0\nspeech:\n  fallback: none\n{audio}"
        "languages:\n  - en\n  - de\n"
        f"phrases:\n  welcome:\n    en: {WELCOME}\n    de: {WILLKOMMEN}\n{BUTTONS}"
    )


async def line_gain(service, pins, pin=17):
    """Press a speak button; the gain its line was played at."""
    req = await pressed(service, pins, pin)
    return round(req.gain, 3)


async def pressed(service, pins, pin):
    before = len(service.speaker.history)
    press(pins, pin)
    await until(lambda: len(service.speaker.history) > before, timeout=10)
    await wait_idle(service)
    return list(service.speaker.history.values())[-1]


async def volume_press(service, pins, pin):
    """Press a volume button while nothing plays; the tone that confirmed it, once played."""
    before = service.announcer.last_beep
    press(pins, pin)
    await until(lambda: service.announcer.last_beep is not before)
    beep = service.announcer.last_beep
    await asyncio.wait_for(beep.wait(), 5)
    return beep


async def test_volume_buttons_change_the_next_line_within_the_staff_range(server, tmp_path, alsa_file, pins):
    device, out = alsa_file
    service = await started(config(server.url, tmp_path / "c"), device, pins)
    audio = service.cfg.audio
    try:
        assert await line_gain(service, pins) == 0.5  # the staff's volume
        written = out.stat().st_size
        beep = await volume_press(service, pins, 23)
        assert beep.gain == pytest.approx(0.6) and beep.stats.frames > 0 and not beep.stats.stopped
        assert out.stat().st_size > written  # the tone reached the device
        assert service.visitor_volume.level(audio) == 60
        assert await line_gain(service, pins) == 0.6
        for _ in range(2):
            await volume_press(service, pins, 24)
        assert await line_gain(service, pins) == 0.4
        gains = []
        for _ in range(4):  # 30, then the limit three times: a "bonk" at the new (unchanged) level
            gains.append(round((await volume_press(service, pins, 24)).gain, 3))
        assert gains == [0.3, 0.3, 0.3, 0.3] and service.visitor_volume.level(audio) == 30
        assert await line_gain(service, pins) == 0.3
        # The staff's own triggers ignore the visitor's setting.
        api = service.play(phrase="welcome", text=None, origin="api")
        await wait_idle(service)
        assert round(api.gain, 3) == 0.5
    finally:
        await service.stop()


async def test_hammering_volume_up_never_passes_the_max_nor_piles_up_sounds(server, tmp_path, alsa_file, pins):
    device, _ = alsa_file
    service = await started(config(server.url, tmp_path / "c"), device, pins)
    audio, announcer = service.cfg.audio, service.announcer
    try:
        beeps = []
        for _ in range(50):
            press(pins, 23)
            await asyncio.sleep(0.002)
            if announcer.last_beep is not None and announcer.last_beep not in beeps:
                beeps.append(announcer.last_beep)
            assert service.visitor_volume.level(audio) <= 80
            assert sum(not b.ended for b in beeps) <= 1  # a new tone cuts the last: never two waiting or playing
            assert not service.speaker.speaking  # tones never take the speaker from a line
        await until(lambda: service.buttons is not None and service.parts.last_pressed.get(23) is not None)
        await asyncio.wait_for(announcer.last_beep.wait(), 2)  # 50 tones would take 7.5 s; the last one is short
        assert service.visitor_volume.level(audio) == 80
        assert announcer.last_beep.gain == pytest.approx(0.8)
        assert await line_gain(service, pins) == 0.8

        # While a line plays, a volume press is silent (no tone over or after it) and applies to the next line.
        server.behaviour.realtime_factor = 1.0
        server.behaviour.chunk_sizes = [960]
        service.speaker.request("A long line about minerals and crystals.", origin="api", policy="restart")
        await until(lambda: service.speaker.speaking)
        last = announcer.last_beep
        for _ in range(10):
            press(pins, 24)
            await asyncio.sleep(0.002)
        await until(lambda: service.visitor_volume.level(audio) == 30)
        assert announcer.last_beep is last and service.speaker.queued == 0
        service.speaker.stop()
        await wait_idle(service)
        server.behaviour.realtime_factor = None
        assert await line_gain(service, pins) == 0.3
    finally:
        await service.stop()


async def test_the_visitors_volume_lapses_after_reset_s(server, tmp_path, alsa_file, pins):
    device, _ = alsa_file
    clock = Clock()
    service = await started(config(server.url, tmp_path / "c"), device, pins, clock=clock)
    try:
        await volume_press(service, pins, 23)
        clock.now += 50
        assert await line_gain(service, pins) == 0.6  # a press holds it for another reset_s
        clock.now += 50
        assert await line_gain(service, pins) == 0.6
        clock.now += 61  # the next visitor
        assert await line_gain(service, pins) == 0.5
    finally:
        await service.stop()


async def test_replay_says_the_last_line_again_in_its_language(server, tmp_path, alsa_file, pins):
    device, _ = alsa_file
    clock = Clock()
    service = await started(config(server.url, tmp_path / "c"), device, pins, clock=clock)
    try:
        press(pins, 25)  # nothing said yet: nothing happens
        await asyncio.sleep(0.1)
        assert len(service.speaker.history) == 0
        said = await pressed(service, pins, 5)  # the language button's "Deutsch" is not a line to replay
        assert said.language == "de"
        press(pins, 25)
        await asyncio.sleep(0.1)
        assert len(service.speaker.history) == 1
        line = await pressed(service, pins, 17)
        assert (line.text, line.language) == (WILLKOMMEN, "de")
        clock.now += 61  # the choice of German lapses; the replay still says the line as it was heard
        again = await pressed(service, pins, 25)
        assert (again.origin, again.phrase, again.text, again.language) == ("button:25", "welcome", WILLKOMMEN, "de")
        assert again.state == "done"
    finally:
        await service.stop()


async def test_volume_buttons_do_nothing_when_staff_muted_the_speaker(server, tmp_path, alsa_file, pins):
    device, _ = alsa_file
    service = await started(config(server.url, tmp_path / "c", AUDIO.replace("50", "0")), device, pins)
    try:
        press(pins, 23)
        await until(lambda: service.parts.last_pressed.get(23) is not None)
        await asyncio.sleep(0.05)
        assert service.announcer.last_beep is None and service.visitor_volume.level(service.cfg.audio) == 0
    finally:
        await service.stop()


def test_visitor_volume_steps_within_the_range_and_lapses():
    clock = Clock()
    volume = VisitorVolume(clock=clock)
    audio = AudioConfig(volume=95, visitor_volume_min=30, visitor_volume_max=90, visitor_volume_step=10)
    assert volume.level(audio) == 95  # left alone: the staff's, even outside the visitor's range
    step = volume.step(True, audio, 60)
    assert (step.level, step.moved) == (95, False)  # already past the max: no higher
    step = volume.step(False, audio, 60)
    assert (step.level, step.moved) == (85, True)
    assert volume.share(audio) == pytest.approx(85 / 95)
    levels = [volume.step(False, audio, 60).level for _ in range(10)]
    assert levels[:6] == [75, 65, 55, 45, 35, 30] and set(levels[6:]) == {30}
    clock.now += 60
    assert volume.level(audio) == 95
    muted = AudioConfig(volume=0)
    assert volume.share(muted) == 1.0


def test_visitor_volume_config_is_checked():
    with pytest.raises(ConfigError) as caught:
        parse_config("audio:\n  visitor_volume_min: 90\n  visitor_volume_max: 40\n")
    assert caught.value.problems == ["audio.visitor_volume_min: must not be above audio.visitor_volume_max (90 > 40)"]
    with pytest.raises(ConfigError) as caught:
        parse_config("audio:\n  visitor_volume_step: 101\n  visitor_volume_max: -1\n")
    assert len(caught.value.problems) == 2
    assert all(p.startswith("audio.visitor_volume_") for p in caught.value.problems)
    cfg = parse_config("")
    assert (cfg.audio.visitor_volume_min, cfg.audio.visitor_volume_max, cfg.audio.visitor_volume_step) == (30, 100, 10)


def test_new_button_actions_are_home_assistant_triggers():
    buttons = tuple(ButtonConfig(pin=p, action=a) for p, a in ((23, "volume_up"), (24, "volume_down"), (25, "replay")))
    found = dict(messages("homeassistant", Topics("kiosk", "hall-a"), DeviceInfo(version="1", buttons=buttons)))
    triggers = [p for t, p in found.items() if "/device_automation/" in t]
    assert sorted(p["payload"] for p in triggers) == ["button_23", "button_24", "button_25"]


async def test_the_staff_pages_list_the_new_buttons(server, tmp_path, alsa_file, pins):
    """The Buttons lists say what each new button does; saving the speak buttons' lines leaves them alone."""
    staff = (
        f"staff:\n  bind: 127.0.0.1\n  port: 0\n  password_file: {tmp_path / 'pw'}\n"
        f"  settings_file: {tmp_path / 'staff.yaml'}\n"
    )
    text = (
        f"openai:\n  base_url: {server.url}/v1\ncache:\n  dir: {tmp_path / 'c'}\n"
        f"history:\n  file: {tmp_path / 'c'}.history.sqlite3\napi:\n  port: 0\n{staff}{AUDIO}"
        f"phrases:\n  welcome: {WELCOME}\n  quartz: Quartz is hard.\n"
        "buttons:\n  - {pin: 17, phrase: welcome}\n  - {pin: 23, action: volume_up}\n"
        "  - {pin: 24, action: volume_down}\n  - {pin: 25, action: replay}\n"
    )
    path = tmp_path / "kiosk.yaml"
    path.write_text(text)
    service = await started(load_config(path), alsa_file[0], pins, config_path=path)
    PasswordFile(service.cfg.staff.password_file).set("correct horse battery")
    base = f"http://127.0.0.1:{service.staff_port}"
    jar = aiohttp.CookieJar(unsafe=True)
    timeout = aiohttp.ClientTimeout(total=15)
    try:
        async with aiohttp.ClientSession(base, cookie_jar=jar, timeout=timeout, headers={"Origin": base}) as http:

            async def csrf(page):
                async with http.get(page) as r:
                    html = await r.text()
                return html.split('name="csrf" value="')[1].split('"')[0]

            login = {"csrf": await csrf("/login"), "password": "correct horse battery"}
            async with http.post("/login", data=login, allow_redirects=False) as r:
                assert r.status == 303
            for page in ("/lines", "/status"):
                async with http.get(page) as r:
                    html = await r.text()
                    assert r.status == 200, page
                assert "urns the volume up for the visitor" in html and "ays the last line again" in html, page
            form = {"csrf": await csrf("/lines"), "button.17": "quartz"}
            async with http.post("/buttons", data=form, allow_redirects=False) as r:
                assert r.status == 303
        assert service.cfg.buttons[0].phrase == "quartz" and service.cfg.buttons[1].phrase is None
    finally:
        await service.stop()
