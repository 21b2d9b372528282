"""The Voice page: who speaks now and why, voices from lists, samples, and a new key used at once."""

from test_staff import PASSWORD, csrf_of, get, log_in, operator, post, settings_of, staff  # noqa: F401 (fixtures)

from kiosk.staff.auth import PasswordFile

FORM = {"engine": "auto", "model": "gpt-4o-mini-tts", "voice": "coral", "instructions": "", "speed": "1"}


async def logged_in(staff):  # noqa: F811
    service, http, _clock, _pins = staff
    PasswordFile(service.cfg.staff.password_file).set(PASSWORD)
    await log_in(http)
    return service, http, await csrf_of(http, "/voice")


async def test_the_page_says_which_voice_speaks_and_why(staff, monkeypatch):  # noqa: F811
    service, http, _token = await logged_in(staff)
    _, html, _ = await get(http, "/voice")
    assert "Speaking now" in html and "OpenAI, voice “coral”" in html and "an OpenAI key is set" in html
    assert html.count("<option") >= 11 + 3  # OpenAI's voices and models are offered as lists
    service.cfg.openai.api_key_file.unlink()  # the key is gone: the next reload falls back to the local voice
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert await service.reload()
    _, html, _ = await get(http, "/voice")
    assert "Local voice: Joe, American English" in html and "no OpenAI key is set" in html


async def test_made_up_and_empty_values_are_refused(staff):  # noqa: F811
    service, http, token = await logged_in(staff)
    cases = [
        ({"voice": "Morgan Freeman"}, "choose one of the listed options"),
        ({"voice": ""}, "choose one of the listed options"),
        ({"model": "gpt-99"}, "choose one of the listed options"),
        ({"speed": "nan"}, "must be a number from 0.25 to 4"),
        ({"speed": "1e999"}, "must be a number from 0.25 to 4"),
        ({"speed": "9"}, "out of range"),
        ({"api_key": "sk not a key"}, "paste it again"),
    ]
    for change, message in cases:
        status, html, _ = await post(http, "/voice", {"csrf": token, **FORM, **change})
        assert status == 400 and message in html, (change, status)
    assert settings_of(service) is None


async def test_a_sample_is_streamed_in_the_chosen_voice(staff, server):  # noqa: F811
    _service, http, _token = await logged_in(staff)
    async with http.get("/voice/sample.wav?engine=openai&voice=alloy") as r:
        assert r.status == 200 and r.content_type == "audio/wav"
        body = await r.read()
    assert body[:4] == b"RIFF" and len(body) > 44
    spoken = [r.body for r in server.requests if r.path.endswith("/audio/speech")]
    assert spoken[-1]["voice"] == "alloy"
    async with http.get("/voice/sample.wav?engine=piper&voice=joe-us") as r:
        assert r.status == 200 and (await r.read())[:4] == b"RIFF"
    for query in ("engine=openai&voice=Morgan", "engine=nope&voice=alloy", "voice=alloy"):
        async with http.get(f"/voice/sample.wav?{query}") as r:
            assert r.status == 400, query


async def test_a_new_key_is_used_from_the_next_line(staff, server):  # noqa: F811
    service, http, token = await logged_in(staff)
    server.behaviour.api_key = "sk-the-new-key"  # the old key is refused from now on
    status, _, _ = await post(http, "/voice", {"csrf": token, **FORM, "api_key": "sk-the-new-key"})
    assert status == 303
    assert await service.announcer.prepare("A line nobody has heard yet.")  # the speaker's own engine
    assert server.requests[-1].authorization == "Bearer sk-the-new-key"
    async with http.get("/voice/sample.wav?engine=openai&voice=coral") as r:
        assert r.status == 200
    assert server.requests[-1].authorization == "Bearer sk-the-new-key"
