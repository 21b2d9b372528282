"""The staff page's Account → Update over real HTTP: a release uploaded from a phone is checked and handed to the
updater's spool (incoming.tar), every bad upload is refused with its sentence and leaves nothing behind, and the
last update's outcome shows in staff words on the page and as it is in /api/status. One upload in headless
Chromium at phone size."""

import asyncio
import json
import os
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest
from conftest import file_sink_opener
from gpiozero.pins.mock import MockFactory
from packaging.version import Version
from release_files import flip_byte, make_archive, wheel_bytes
from test_staff import PASSWORD, TIMEOUT, csrf_of, get, log_in, operator, post, staff  # noqa: F401 (fixtures)
from test_staff_ux import AXE, PHONE, base, check_page, new_page, start_service  # noqa: F401 (fixtures)

from kiosk import __version__
from kiosk.config import load_config
from kiosk.service import Service
from kiosk.staff import update
from kiosk.staff.auth import PasswordFile
from kiosk.systemd import Notifier
from kiosk.update import spool
from kiosk.web.server import ConnectionLimits

NEWER = str(Version(f"{Version(__version__).major + 1}.0.0"))
OLDER = "0.0.0.dev0"
ACCEPTED = "is being installed; the speaker restarts on it within a minute, and goes back to"


def form(token: str | None, content: bytes | None, filename: str = "kiosk-release.tar", token_last: bool = False):
    data = aiohttp.FormData(default_to_multipart=True)
    if token is not None and not token_last:
        data.add_field("csrf", token)
    if content is not None:
        data.add_field("release", content, filename=filename, content_type="application/x-tar")
    if token is not None and token_last:
        data.add_field("csrf", token)
    return data


def state_of(service) -> Path:
    return spool.state_dir(service.cfg.staff.settings_file)


def spool_files(service) -> dict[str, bytes]:
    directory = state_of(service) / spool.SPOOL_DIR
    return {p.name: p.read_bytes() for p in directory.iterdir()} if directory.exists() else {}


async def logged_in(staff):  # noqa: F811
    service, http, _clock, _pins = staff
    PasswordFile(service.cfg.staff.password_file).set(PASSWORD)
    await log_in(http)
    return service, http, await csrf_of(http, "/account")


async def test_an_accepted_release_waits_in_the_spool_and_a_second_one_is_refused(staff, tmp_path):  # noqa: F811
    service, http, token = await logged_in(staff)
    status, html, _ = await get(http, "/account")
    assert status == 200 and f"This speaker runs version <strong>{__version__}</strong>" in html
    assert "waiting to be installed" not in html and spool_files(service) == {}

    archive = make_archive(tmp_path, NEWER, wheel=wheel_bytes(NEWER, padding=300_000))
    assert archive.stat().st_size > 256 * 1024  # far past the 64 KB every other form may send
    status, html, _ = await post(http, "/account/update", form(token, archive.read_bytes(), archive.name))
    assert status == 200, html[-600:]
    assert f"{NEWER} {ACCEPTED} {__version__} by itself if it does not start." in html
    assert spool_files(service) == {spool.INCOMING: archive.read_bytes()}
    assert oct(os.stat(state_of(service) / spool.SPOOL_DIR).st_mode & 0o777) == "0o750"
    status, html, _ = await get(http, "/account")
    assert "An update is waiting to be installed." in html

    (tmp_path / "second").mkdir()
    second = make_archive(tmp_path / "second", NEWER)
    status, html, _ = await post(http, "/account/update", form(token, second.read_bytes(), second.name))
    assert status == 400 and "Another update is waiting to be installed; try again in a minute." in html
    assert spool_files(service) == {spool.INCOMING: archive.read_bytes()}  # the first one, untouched


async def test_two_uploads_at_once_hand_over_one(staff, tmp_path):  # noqa: F811
    service, http, token = await logged_in(staff)
    archives = []
    for n in range(2):
        (tmp_path / str(n)).mkdir()
        archives.append(make_archive(tmp_path / str(n), NEWER, wheel=wheel_bytes(NEWER, padding=100_000)))
    answers = await asyncio.wait_for(
        asyncio.gather(*(post(http, "/account/update", form(token, a.read_bytes(), a.name)) for a in archives)),
        timeout=15,
    )
    assert sorted(status for status, _, _ in answers) == [200, 400]
    assert spool_files(service)[spool.INCOMING] in [a.read_bytes() for a in archives]
    assert list(spool_files(service)) == [spool.INCOMING]


def _written(name: str, content: bytes):
    def write(directory: Path) -> Path:
        (directory / name).write_bytes(content)
        return directory / name

    return write


BAD_FILES = [
    (lambda d: flip_byte(make_archive(d, NEWER)), 400, "the file is damaged"),
    (lambda d: make_archive(d, NEWER, manifest={"name": "other"}), 400, "not of kiosk"),
    (lambda d: make_archive(d, NEWER, members={"run.sh": b"rm -rf /\n"}), 400, "a release holds only manifest.json"),
    (lambda d: make_archive(d, __version__), 400, f"{__version__} is not newer than {__version__}, which runs now"),
    (lambda d: make_archive(d, OLDER), 400, f"{OLDER} is not newer than {__version__}"),
    (_written("notes.txt", b"not a tar at all\n" * 100), 400, "not a release archive (a tar file made by"),
    (_written("empty.tar", b""), 400, "is empty; choose the release file"),
]


async def test_every_bad_release_is_refused_with_its_sentence_and_leaves_nothing(staff, tmp_path):  # noqa: F811
    service, http, token = await logged_in(staff)
    for n, (make, expected_status, message) in enumerate(BAD_FILES):
        directory = tmp_path / f"case-{n}"
        directory.mkdir()
        path = make(directory)
        status, html, _ = await post(http, "/account/update", form(token, path.read_bytes(), path.name))
        assert status == expected_status and message in html.replace("&#39;", "'"), (path.name, status, html[-800:])
        assert "Nothing was changed." in html and ".upload-" not in html and str(tmp_path) not in html
        assert path.name in html or "not newer" in message  # the file staff chose, by its own name
        assert spool_files(service) == {}, path.name
    for fields, message in (
        (form(token, None), "Choose a release file"),
        (form(token, b"", filename=""), "Choose a release file"),
    ):
        status, html, _ = await post(http, "/account/update", fields)
        assert status == 400 and message in html
    assert spool_files(service) == {}


async def test_an_oversized_upload_is_cut_off_and_removed(staff, tmp_path, monkeypatch):  # noqa: F811
    service, http, token = await logged_in(staff)
    monkeypatch.setattr(update, "MAX_BYTES", 16 * 1024)
    archive = make_archive(tmp_path, NEWER, wheel=wheel_bytes(NEWER, padding=64 * 1024))
    status, html, _ = await post(http, "/account/update", form(token, archive.read_bytes(), archive.name))
    assert status == 413 and f"{archive.name} is larger than 16 KB, so it is not a release" in html
    assert spool_files(service) == {}
    # and the speaker goes on answering: the same page, the next upload
    (tmp_path / "small").mkdir()
    small = make_archive(tmp_path / "small", NEWER)
    status, html, _ = await post(http, "/account/update", form(token, small.read_bytes(), small.name))
    assert status == 200 and ACCEPTED in html


async def test_the_upload_is_csrf_protected_like_every_account_form(staff, tmp_path):  # noqa: F811
    service, http, token = await logged_in(staff)
    body = make_archive(tmp_path, NEWER).read_bytes()
    cases = [
        (form(None, body), 403, "missing or wrong CSRF token"),
        (form("x" * 43, body), 403, "missing or wrong CSRF token"),
        (form(token, body, token_last=True), 403, "missing or wrong CSRF token"),  # the token comes first
        ({"csrf": token}, 400, "send the release with the page's form"),  # not multipart
    ]
    for fields, expected, message in cases:
        status, text, _ = await post(http, "/account/update", fields)
        assert status == expected and message in text, (status, text[:300])
        assert spool_files(service) == {}
    garbled = b"--xyz\r\nContent-Disposition: form-data; name=csrf\r\n\r\n" + token.encode() + b"\r\n--xyz\r\ngarbage"
    headers = {"Content-Type": "multipart/form-data; boundary=xyz"}
    status, _text, _ = await post(http, "/account/update", garbled, headers=headers)
    assert 400 <= status < 500 and spool_files(service) == {}
    other = aiohttp.ClientSession(
        str(http._base_url), cookie_jar=aiohttp.CookieJar(unsafe=True), headers={"Origin": str(http._base_url)}
    )
    async with other:  # not logged in: to the login page, nothing read
        status, _text, headers = await post(other, "/account/update", form(token, body))
        assert status == 303 and headers["Location"].startswith("/login")
    assert spool_files(service) == {}


def _at(month: int, day: int, hour: int, minute: int) -> float:
    return datetime(datetime.now().year, month, day, hour, minute).timestamp()


RECORDS = [
    (
        {"result": "updated", "version": "0.2.0", "message": "updated from 0.1.0 to 0.2.0", "time": _at(12, 4, 14, 2)},
        "Updated to 0.2.0 on 4 Dec 14:02.",
    ),
    (
        {
            "result": "rolled back",
            "version": "0.2.0",
            "message": "0.2.0 was switched back to 0.1.0: it stopped after starting (failed (exit-code))",
            "time": _at(12, 4, 14, 3),
        },
        "0.2.0 did not start and was switched back to 0.1.0 on 4 Dec 14:03: it stopped after starting "
        "(failed (exit-code)).",
    ),
    (
        {
            "result": "rolled back",
            "version": "0.2.0",
            "message": "went back from 0.2.0 to 0.1.0 by hand",
            "time": _at(3, 1, 9, 30),
        },
        "Went back from 0.2.0 to 0.1.0 by hand on 1 Mar 09:30.",
    ),
    (
        {
            "result": "refused",
            "version": None,
            "message": "incoming.tar: the wheel's SHA-256 is not the manifest's: the file is damaged",
            "time": _at(5, 6, 7, 8),
        },
        "An update was refused on 6 May 07:08: the wheel's SHA-256 is not the manifest's: the file is damaged. "
        "Nothing was changed.",
    ),
    (
        {"result": "installing", "version": "0.2.0", "message": "installing 0.2.0 beside 0.1.0", "time": None},
        "0.2.0 is being installed.",
    ),
    (
        {
            "result": "failed",
            "version": "0.2.0",
            "message": "no current release in /opt/kiosk/releases: run install.sh once to set one up",
            "time": _at(1, 2, 3, 4),
        },
        "An update failed on 2 Jan 03:04: no current release in a file on the speaker: run install.sh once to set "
        "one up.",
    ),
]


async def test_each_recorded_outcome_in_staff_words_and_in_the_status(staff):  # noqa: F811
    service, http, _token = await logged_in(staff)
    record_file = state_of(service) / "update.json"
    api = f"http://127.0.0.1:{service.port}/api/status"
    for record, words in RECORDS:
        record_file.write_text(json.dumps({**record, "running": "0.1.0"}))
        status, html, _ = await get(http, "/account")
        assert status == 200 and words in html.replace("&#39;", "'"), (record["result"], html[-1500:])
        assert "/opt/kiosk" not in html
        async with http.get(api) as r:
            assert (await r.json())["update"] == record
    for content in (b"{not json", b"[]", b'{"result": "updated"}'):  # unreadable: nothing shown, null
        record_file.write_bytes(content)
        status, html, _ = await get(http, "/account")
        assert status == 200 and 'id="update-outcome"' not in html
        async with http.get(api) as r:
            assert (await r.json())["update"] is None
    record_file.unlink()
    async with http.get(api) as r:
        assert (await r.json())["update"] is None


def test_outcome_words_need_no_time_and_say_the_year_when_it_is_not_this_one():
    kind, words = update.outcome_words({"result": "updated", "version": "1.2.0", "message": "x", "time": None})
    assert (kind, words) == ("ok", "Updated to 1.2.0.")
    long_ago = datetime(2001, 2, 3, 4, 5).timestamp()
    _, words = update.outcome_words({"result": "updated", "version": "1.2.0", "message": "x", "time": long_ago})
    assert words == "Updated to 1.2.0 on 3 Feb 2001 04:05."
    back = {"result": "rolled back", "version": "1.2.0", "message": "1.2.0 was switched back to 1.1.0", "time": None}
    kind, words = update.outcome_words(back)
    assert (kind, words) == ("attention", "1.2.0 did not start and was switched back to 1.1.0.")


async def test_a_release_uploaded_from_a_phone(start_service, browser, tmp_path):  # noqa: F811
    svc = await start_service()
    archive = make_archive(tmp_path, NEWER, wheel=wheel_bytes(NEWER, padding=200_000))
    page = await new_page(browser, PHONE)
    await page.goto(f"{base(svc)}/account")
    await page.fill("#password", PASSWORD)
    await page.click("form[action='/login'] button[type=submit]")
    await page.wait_for_url(f"{base(svc)}/account")
    section = page.locator("form[action='/account/update']")
    await section.get_by_text(f"This speaker runs version {__version__}").wait_for()
    await page.set_input_files("#release", str(archive))
    await section.get_by_role("button", name="Upload and install").click()
    await page.locator("form[action='/account/update']").get_by_text(f"{NEWER} {ACCEPTED}").wait_for()
    assert page.url.endswith("/account")
    state = spool.state_dir(svc.cfg.staff.settings_file)
    assert spool.incoming(state).read_bytes() == archive.read_bytes()
    assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]  # nothing off the side

    # a second one, while the first waits: refused beside the field, the page where it was
    await page.set_input_files("#release", str(archive))
    await page.locator("form[action='/account/update']").get_by_role("button", name="Upload and install").click()
    await page.locator("#release-error").get_by_text("Another update is waiting").wait_for()
    await check_page(page, AXE.read_text(), "account-update", "phone")  # axe, tap targets, a screenshot
    assert not page.test_errors, page.test_errors
    await asyncio.wait_for(page.context.close(), timeout=10)


@pytest.fixture(autouse=True)
def _no_stray_uploads(tmp_path):
    """Whatever a test did, no temp upload file stays anywhere under its directory."""
    yield
    assert not list(tmp_path.rglob(".upload-*"))


@pytest.fixture
async def impatient_staff(tmp_path, operator, alsa_file):  # noqa: F811
    """The staff page served with a 1 s request deadline (10 s in service) so that a slow upload is quick to test."""
    service = Service(
        load_config(operator),
        config_path=operator,
        open_sink=file_sink_opener(alsa_file[0]),
        pin_factory=MockFactory(),
        notifier=Notifier({}),
        limits=ConnectionLimits(idle_timeout_s=1.0, request_timeout_s=1.0, body_grace_s=0.3),
    )
    await asyncio.wait_for(service.start(), timeout=10)
    base = f"http://127.0.0.1:{service.staff_port}"
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(base, cookie_jar=jar, timeout=TIMEOUT, headers={"Origin": base}) as http:
        yield service, http, None, None
    await service.stop()


def trickled(body: bytes, pieces: int, seconds: float):
    """`body` sent in `pieces` spread over `seconds`: a phone on a museum's weak Wi-Fi."""

    async def send():
        step = -(-len(body) // pieces)
        for start in range(0, len(body), step):
            yield body[start : start + step]
            await asyncio.sleep(seconds / pieces)

    return send()


async def test_a_slow_upload_of_a_signed_in_member_of_staff_is_not_cut_by_the_request_deadline(
    impatient_staff, tmp_path
):
    """The connection guard cuts any body not in within its deadline (1 s here, 10 s in service); a release upload
    whose token has been checked has UPLOAD_S instead, so a 64 MB release over a weak Wi-Fi still arrives."""
    service, http, token = await logged_in(impatient_staff)
    archive = make_archive(tmp_path, NEWER)
    payload = form(token, archive.read_bytes(), archive.name)()
    body = b"".join([bytes(part) async for part in _chunks(payload)])
    headers = {"Content-Type": payload.content_type}
    async with http.post("/account/update", data=trickled(body, 20, 3.0), headers=headers) as r:
        html = await r.text()
    assert r.status == 200 and f"{NEWER} {ACCEPTED}" in html, html[-400:]
    assert spool_files(service) == {spool.INCOMING: archive.read_bytes()}

    form_body = f"csrf={token}&note=".encode() + b"x" * 20_000
    urlencoded = {"Content-Type": "application/x-www-form-urlencoded"}
    with pytest.raises(aiohttp.ClientError):  # the same trickle to another form: cut at the deadline
        async with http.post("/lines", data=trickled(form_body, 20, 3.0), headers=urlencoded) as r:
            pytest.fail(f"answered {r.status} instead of being cut: {(await r.text())[-300:]}")


async def _chunks(payload):
    """The bytes aiohttp would send for a multipart `payload`."""

    class Sink:
        def __init__(self):
            self.parts = []

        async def write(self, data):
            self.parts.append(bytes(data))

    sink = Sink()
    await payload.write(sink)
    for part in sink.parts:
        yield part
