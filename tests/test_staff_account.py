"""The staff account page: change the password, download the settings and restore them, over real HTTP."""

import aiohttp
import yaml
from test_staff import PASSWORD, csrf_of, get, log_in, operator, post, settings_of, staff  # noqa: F401 (fixtures)

from kiosk.staff.auth import PasswordFile

NEW_PASSWORD = "a brand new staff password"


def upload(token, content: bytes, field="settings"):
    form = aiohttp.FormData()
    form.add_field("csrf", token)
    form.add_field(field, content, filename="settings.yaml", content_type="application/x-yaml")
    return form


async def test_password_change_needs_the_current_one_and_two_equal_new_ones(staff):  # noqa: F811
    service, http, _clock, _pins = staff
    PasswordFile(service.cfg.staff.password_file).set(PASSWORD)
    await log_in(http)
    token = await csrf_of(http, "/account")
    cases = [
        ({"current": "not it", "new": NEW_PASSWORD, "repeat": NEW_PASSWORD}, "not the current password"),
        ({"current": PASSWORD, "new": "short", "repeat": "short"}, "at least 10 characters"),
        ({"current": PASSWORD, "new": NEW_PASSWORD, "repeat": NEW_PASSWORD + "!"}, "the two new passwords differ"),
    ]
    for fields, message in cases:
        status, html, _ = await post(http, "/account/password", {"csrf": token, **fields})
        assert status in (400, 429) and message in html, (fields, status)
    fields = {"current": PASSWORD, "new": NEW_PASSWORD, "repeat": NEW_PASSWORD}
    status, html, _ = await post(http, "/account/password", {"csrf": token, **fields})
    assert status == 200 and "Password changed." in html
    passwords = PasswordFile(service.cfg.staff.password_file)
    assert passwords.check(NEW_PASSWORD) and not passwords.check(PASSWORD)


async def test_settings_download_then_restore_with_the_previous_kept(staff):  # noqa: F811
    service, http, _clock, _pins = staff
    PasswordFile(service.cfg.staff.password_file).set(PASSWORD)
    await log_in(http)
    token = await csrf_of(http, "/lines")
    assert (await post(http, "/lines/add", {"csrf": token, "id": "garnet", "text": "Garnets are red."}))[0] == 303
    status, body, headers = await get(http, "/account/settings.yaml")
    assert status == 200 and "attachment" in headers["Content-Disposition"]
    saved = yaml.safe_load(body)
    assert saved["phrases"]["garnet"] == "Garnets are red."

    saved["phrases"]["garnet"] = "Garnets come in many colours."
    token = await csrf_of(http, "/account")
    status, html, _ = await post(http, "/account/settings", upload(token, yaml.safe_dump(saved).encode()))
    assert status == 200 and "Settings restored" in html
    assert service.cfg.phrases["garnet"] == "Garnets come in many colours."
    backup = service.cfg.staff.settings_file.with_name(service.cfg.staff.settings_file.name + ".bak")
    assert "Garnets are red." in backup.read_text()


async def test_a_bad_settings_file_changes_nothing(staff):  # noqa: F811
    service, http, _clock, _pins = staff
    PasswordFile(service.cfg.staff.password_file).set(PASSWORD)
    await log_in(http)
    before = dict(service.cfg.phrases)
    token = await csrf_of(http, "/account")
    bad_files = [
        (b"phrases:\n  Bad Id: x\n", "id must be"),
        (b"phrases: [unclosed\n", "not valid YAML"),
        (b"\xff\xfe", "not valid UTF-8"),
        (b"ssh_keys: {}\n", "the uploaded file: ssh_keys: cannot be set from the staff page"),
        (b"volume: 50\n", "the uploaded file: volume: belongs under audio: (as audio:"),
        (b"quiet_hours:\n  - {start: '09:00', end: '09:00'}\n", "never apply"),
    ]
    for content, message in bad_files:
        status, html, _ = await post(http, "/account/settings", upload(token, content))
        assert status == 400 and message in html, (content, status, html[-400:])
        assert str(service.cfg.staff.settings_file) not in html  # a file the person did not upload is not named
    status, _html, _ = await post(http, "/account/settings", {"csrf": token})
    assert status == 400
    assert service.cfg.phrases == before and settings_of(service) is None


async def test_other_forms_take_no_files(staff):  # noqa: F811
    service, http, _clock, _pins = staff
    PasswordFile(service.cfg.staff.password_file).set(PASSWORD)
    await log_in(http)
    token = await csrf_of(http, "/lines")
    status, body, _ = await post(http, "/lines/add", upload(token, b"x", field="text"))
    assert status == 400 and "files cannot be sent" in body


async def test_a_password_change_logs_out_every_other_session(staff, tmp_path):  # noqa: F811
    service, http, _clock, _pins = staff
    PasswordFile(service.cfg.staff.password_file).set(PASSWORD)
    base = str(http._base_url)
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(base, cookie_jar=jar, headers={"Origin": base}) as other:
        await log_in(other)
        assert (await get(other, "/lines"))[0] == 200
        await log_in(http)
        token = await csrf_of(http, "/account")
        fields = {"csrf": token, "current": PASSWORD, "new": NEW_PASSWORD, "repeat": NEW_PASSWORD}
        assert (await post(http, "/account/password", fields))[0] == 200
        assert (await get(other, "/lines"))[0] == 303  # sent to the login page
        assert (await get(http, "/lines"))[0] == 200  # the one who changed it stays in
