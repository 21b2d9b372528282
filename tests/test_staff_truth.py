"""The staff page never says a line is ready, playing or played when the history says otherwise, and what it shows
staff is in their words: a line played with the network gone, read in every place that mentions it."""

import asyncio
import re

import pytest
from test_staff import PASSWORD, csrf_of, get, log_in, post, staff, write_operator  # noqa: F401 (staff: a fixture)

from kiosk.staff.auth import PasswordFile

#: What staff must never be shown: addresses and ports, file paths, exception names, the TLS layer's words.
FORBIDDEN = [
    re.compile(r"\b\d{1,3}(\.\d{1,3}){3}(:\d+)?\b"),  # 127.0.0.1:8080
    re.compile(r"\blocalhost:\d+"),
    re.compile(r"ssl:", re.I),
    re.compile(r"\[Errno \d+\]"),
    re.compile(r"Traceback"),
    re.compile(r"\b[A-Z][A-Za-z]+(Error|Exception)\b"),  # ClientConnectorError, OSError
    re.compile(r"(?<![\w.])/(var|etc|tmp|opt|home|run|root|usr)/"),
    re.compile(r"Connect call failed", re.I),
]


def forbidden_in(text: str) -> list[str]:
    visible = re.sub(r"<(script|style)\b.*?</\1>|<[^>]+>", " ", text, flags=re.S)  # what the page shows
    return [m.group(0) for pattern in FORBIDDEN for m in [pattern.search(visible)] if m]


@pytest.fixture
def operator(tmp_path, server):
    return write_operator(tmp_path, server, "speech:\n  fallback: none\n")  # no local voice to stand in


async def until(predicate, timeout=10.0):
    async def wait():
        while not predicate():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(wait(), timeout)


async def status_json(http) -> dict:
    async with http.get("/status.json") as r:
        return await r.json()


async def test_a_line_played_with_the_network_gone_is_never_called_ready_or_played(staff, server):  # noqa: F811
    service, http, _clock, _pins = staff
    PasswordFile(service.cfg.staff.password_file).set(PASSWORD)
    await log_in(http)
    await until(lambda: not service.warm["running"] and service.warm["done"] == 2)
    await server.stop()  # the network is gone
    token = await csrf_of(http)
    assert (await post(http, "/lines/quartz/edit", {"csrf": token, "text": "Quartz scratches glass."}))[0] == 303

    _, lines, _ = await get(http, "/lines")
    assert 'data-ready-for="quartz" data-ready="no">Not ready offline yet' in lines
    assert (await status_json(http))["cache"]["lines_ready"] == 1

    status, page, _ = await post(http, "/lines/quartz/play", {"csrf": await csrf_of(http)})
    assert status == 409 and "Not played: it could not be reached (is the network down?)." in page
    assert "Playing on the speaker" not in re.sub(r'data-done="[^"]*"', "", page)
    assert [r.state for r in service.speaker.history.values() if r.phrase == "quartz"] == ["failed"]

    info = await status_json(http)
    assert info["last_line_words"] == "Not played: it could not be reached (is the network down?)"
    _, status_page, _ = await get(http, "/status")
    assert "Not played: it could not be reached" in status_page and "Played from" not in status_page
    assert '1</span> of <span data-field="lines_configured">2' in status_page

    for path in ("/status", "/lines", "/voice", "/volume", "/schedule", "/account"):
        _, html, _ = await get(http, path)
        assert not forbidden_in(html), (path, forbidden_in(html))


async def test_a_paused_online_voice_is_told_in_staff_words(staff, server):  # noqa: F811
    service, http, _clock, _pins = staff
    PasswordFile(service.cfg.staff.password_file).set(PASSWORD)
    await log_in(http)
    await until(lambda: not service.warm["running"])
    await server.stop()
    for text in ("One.", "Two.", "Three."):  # three failures in a row pause the voice
        token = await csrf_of(http)
        await post(http, "/lines/add", {"csrf": token, "id": f"n{len(text)}{text[0].lower()}", "text": text})
    await until(lambda: any(e["in_backoff"] for e in service.engines.state()), timeout=30)
    problems = (await status_json(http))["problems"]
    paused = [p for p in problems if p.startswith("The online voice is not working")]
    assert paused and "could not be reached (is the network down?)" in paused[0]
    assert "cannot be spoken until it is back" in paused[0]
    _, html, _ = await get(http, "/status")
    assert not forbidden_in(html), forbidden_in(html)
    assert "Voice 'openai' paused" not in html


def test_the_forbidden_list_catches_what_staff_were_shown():
    shown = (
        "Why: Cannot connect to host 127.0.0.1:41043 ssl:default [Connect call failed ('127.0.0.1', 41043)]",
        "/var/lib/kiosk/staff-settings.yaml: volume: cannot be set from the staff page",
        "ClientConnectorError: boom",
    )
    for text in shown:
        assert forbidden_in(text), text
    assert not forbidden_in("Not played: it could not be reached (is the network down?). Version 0.1.0, 12:30")
