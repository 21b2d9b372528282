"""Property tests (hypothesis) for what clients send: the API's JSON body and the staff page's forms.

One real Service (API with free text allowed, staff page with a password and a logged-in session, the loopback
OpenAI stand-in behind it) runs on an event loop in a thread of its own for the whole module; the sync hypothesis
tests drive real HTTP requests at it through `LiveService.run`. KIOSK_FUZZ_EXAMPLES sets max_examples (default
100).

- POST /api/play with any JSON-like value (huge integers, NaN/Infinity, lone surrogates, unknown keys, wrong
  types, deep nesting) is answered with a JSON 4xx error or a 202 with an id, never anything else;
- `json_depth` is the true nesting depth of any serialized value;
- the staff forms (/voice, /volume, /lines/add, /lines/{id}/edit) never get a 5xx, and whatever they accept (303)
  re-loads as a valid config with only finite numbers and UTF-8-encodable strings.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import yaml
from conftest import file_sink_opener
from fake_openai import FakeOpenAI
from gpiozero.pins.mock import MockFactory
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kiosk.config import load_config
from kiosk.service import Service
from kiosk.staff.auth import PasswordFile
from kiosk.staff.voice import KEY_MASK
from kiosk.systemd import Notifier
from kiosk.web.api import json_depth

PASSWORD = "correct horse battery"
EXAMPLES = int(os.environ.get("KIOSK_FUZZ_EXAMPLES", "100"))
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=10)
API_STATUSES = {202, 400, 403, 404, 409, 413, 415, 429}
PROPERTY_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # nothing written into the working tree; a failure prints its example and seed
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

pytestmark = pytest.mark.timeout(max(120, EXAMPLES * 2))


# -- the service, on a loop of its own


class LiveService:
    """A Service and its OpenAI stand-in on an event loop in a background thread, for sync hypothesis tests."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="live-service", daemon=True)
        self.thread.start()
        self.server: FakeOpenAI | None = None
        self.service: Service | None = None
        self.http: aiohttp.ClientSession | None = None
        self.session = self.csrf = ""

    def run(self, coro, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def config_path(self) -> Path:
        return self.tmp_path / "kiosk.yaml"

    @property
    def settings_path(self) -> Path:
        return self.tmp_path / "state" / "staff.yaml"

    async def start(self) -> None:
        self.server = await FakeOpenAI().start()
        self.server.behaviour.max_audio_s = 0.05  # lines are short: warming a hundred of them takes no time
        tmp = self.tmp_path
        self.config_path.write_text(
            f"openai:\n  base_url: {self.server.url}/v1\n  api_key_file: {tmp / 'key'}\n"
            f"cache:\n  dir: {tmp / 'cache'}\nhistory:\n  file: {tmp / 'cache'}.history.sqlite3\n"
            "api:\n  port: 0\n  allow_text: true\n  rate_limit_per_min: 100000\n"
            f"staff:\n  bind: 127.0.0.1\n  port: 0\n  password_file: {tmp / 'state' / 'pw'}\n"
            f"  settings_file: {self.settings_path}\n"
            "speech:\n  fallback: none\n"
            "buttons:\n  - pin: 17\n    phrase: welcome\n    cooldown_ms: 0\n  - pin: 22\n    action: stop\n"
            "languages: [en, de]\n"
            "phrases:\n  welcome: {en: Welcome to the hall of minerals., de: Willkommen.}\n  quartz: Quartz is hard.\n"
        )
        (tmp / "key").write_text("sk-file-key\n")
        PasswordFile(tmp / "state" / "pw").set(PASSWORD)
        self.service = Service(
            load_config(self.config_path),
            config_path=self.config_path,
            open_sink=file_sink_opener(f"file:FILE={tmp / 'alsa-out.raw'},FORMAT=raw"),
            pin_factory=MockFactory(),
            notifier=Notifier({}),
        )
        await asyncio.wait_for(self.service.start(), timeout=10)
        self.http = aiohttp.ClientSession(timeout=REQUEST_TIMEOUT, cookie_jar=aiohttp.DummyCookieJar())
        await self._log_in()

    async def _log_in(self) -> None:
        base = self.staff_url
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(base, cookie_jar=jar, timeout=REQUEST_TIMEOUT, headers={"Origin": base}) as h:
            async with h.get("/login") as r:
                token = _csrf_in(await r.text())
            async with h.post("/login", data={"csrf": token, "password": PASSWORD}, allow_redirects=False) as r:
                assert r.status == 303, r.status
            async with h.get("/lines") as r:
                self.csrf = _csrf_in(await r.text())
            self.session = next(c.value for c in jar if c.key == "kiosk_session")

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.close()
        if self.service is not None:
            await self.service.stop()
        if self.server is not None:
            await self.server.stop()

    def close(self) -> None:
        try:
            self.run(self.stop(), timeout=15)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            if not self.thread.is_alive():
                self.loop.close()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.service.port}"

    @property
    def staff_url(self) -> str:
        return f"http://127.0.0.1:{self.service.staff_port}"

    async def post_api(self, body: bytes) -> tuple[int, bytes, str]:
        headers = {"Content-Type": "application/json"}
        async with self.http.post(f"{self.api_url}/api/play", data=body, headers=headers) as r:
            return r.status, await r.read(), r.content_type

    async def post_staff(self, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        headers = {
            "Origin": self.staff_url,
            "Cookie": f"kiosk_session={self.session}",
            "Content-Type": content_type,
        }
        async with self.http.post(self.staff_url + path, data=body, headers=headers, allow_redirects=False) as r:
            return r.status, await r.read()


def _csrf_in(html: str) -> str:
    return html.split('name="csrf" value="')[1].split('"')[0]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OPENAI_API_KEY", "sk-test-not-secret")
        service = LiveService(tmp_path_factory.mktemp("live"))
        try:
            service.run(service.start())
            yield service
        finally:
            service.close()


# -- strategies

#: Text including what most generators leave out: lone surrogates, NUL, quotes, brackets, escapes.
TEXT = st.text(
    st.characters(exclude_categories=()) | st.sampled_from(list("\ud800\udbff\udc00\udfff\x00\n\r\t\"'\\[]{}<>&%+=;")),
    max_size=40,
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**4000), max_value=10**4000)  # Python prints at most 4300 digits
    | st.floats()  # NaN and ±Infinity included
    | TEXT
    | st.sampled_from(["welcome", "quartz", "nope", "", "   ", "x" * 4097, "\ud800"])
)
KEYS = TEXT | st.sampled_from(["phrase", "text", "phrase", "text", "volume", "language", "at"])
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=25,
)
#: A play's start time (kiosk.in_step): near now, far off, or any number or value at all.
START_TIMES = st.floats(-3, 3).map(lambda d: time.time() + d) | st.floats() | st.integers() | SCALARS
PLAY_BODIES = st.one_of(
    JSON_VALUES,
    st.fixed_dictionaries({}, optional={"phrase": JSON_VALUES, "text": JSON_VALUES, "language": JSON_VALUES}),
    st.fixed_dictionaries({}, optional={"phrase": SCALARS, "text": SCALARS, "language": SCALARS}),
    # mostly well-formed, so the accepted path (202) and the speaker's own refusals (404, 409) get their share
    st.fixed_dictionaries(
        {"phrase": st.sampled_from(["welcome", "quartz", "nope"]) | TEXT},
        optional={"language": st.sampled_from(["de", "en", "fr", "", "DE"]) | TEXT, "at": START_TIMES},
    ),
    st.fixed_dictionaries({"text": st.text(min_size=1, max_size=200) | TEXT}),
)


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def serialized(value: Any, ascii_only: bool) -> bytes:
    # ensure_ascii=False writes a lone surrogate as its (invalid) UTF-8 bytes: the server must refuse those too
    return json.dumps(value, allow_nan=True, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


NUMBERISH = (
    st.floats().map(repr)
    | st.floats().map(str)
    | st.integers().map(str)
    | st.sampled_from(["nan", "-nan", "inf", "-Infinity", "1e999", "-0", "", " 1.5 ", "9" * 5000, "1_0", "١٫٥"])
    | TEXT
)
WHOLE = st.integers(-10, 110).map(str) | st.sampled_from(["", "٣", "1e3", "9" * 5000, " 7 "]) | NUMBERISH
CLOCK = st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 25), st.integers(0, 61))
VALID_VOICE_FORMS = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["tts-1", "gpt-4o-mini-tts"]),
        "voice": st.sampled_from(["coral", "sage"]),
        "instructions": st.sampled_from(["", "Slow.", "Calm <b>and</b> clear & warm."]),
        "speed": st.floats(0.25, 4.0).map(str),
        "engine": st.sampled_from(["openai", "auto"]),
        "api_key": st.sampled_from(["", KEY_MASK]),
    }
)
JUNK_VOICE_FORMS = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["tts-1", "gpt-4o-mini-tts"]) | TEXT,
        "voice": st.sampled_from(["coral", "sage"]) | TEXT,
        "instructions": TEXT | st.just("i" * 20_000),
        "speed": NUMBERISH | st.floats(0.25, 4.0).map(str),
        # "piper" is a valid engine, but it loads the local voice and makes every line slow: left out
        "engine": st.sampled_from(["openai", "auto", ""]) | TEXT.filter(lambda e: e.strip() != "piper"),
        "api_key": st.sampled_from(["", KEY_MASK, "sk-new"]) | TEXT,
    },
)
VALID_VOLUME_FORMS = st.fixed_dictionaries(
    {"volume": st.integers(0, 100).map(str)},
    optional={
        f"quiet.{i}.{k}": st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23), st.integers(0, 59))
        for i in range(4)
        for k in ("start", "end")
    }
    | {f"quiet.{i}.volume": st.integers(0, 100).map(str) for i in range(4)},
)
JUNK_VOLUME_FORMS = st.fixed_dictionaries(
    {},
    optional={
        "volume": WHOLE,
        **{f"quiet.{i}.{k}": (CLOCK | TEXT) if k != "volume" else WHOLE for i in range(5) for k in ("start", "end")},
        **{f"quiet.{i}.volume": WHOLE for i in range(5)},
    },
)
VOICE_FORMS = VALID_VOICE_FORMS | JUNK_VOICE_FORMS
VOLUME_FORMS = VALID_VOLUME_FORMS | JUNK_VOLUME_FORMS
LINE_TEXTS = TEXT | st.text(min_size=1, max_size=300) | st.sampled_from(["x" * 5000, "x" * 20_001, "  padded  "])
ADD_FORMS = st.fixed_dictionaries(
    {}, optional={"id": st.from_regex(r"[a-z0-9][a-z0-9_-]{0,63}", fullmatch=True) | TEXT, "text": LINE_TEXTS}
)
EDIT_FORMS = st.fixed_dictionaries(
    {}, optional={"text": LINE_TEXTS, "text.de": LINE_TEXTS, "text.xx": LINE_TEXTS, "text.en": LINE_TEXTS}
)


def form_body(fields: dict[str, str], csrf: str, multipart: bool) -> tuple[bytes, str]:
    """The form as a browser would send it (lone surrogates as their invalid UTF-8 bytes, which a browser never
    sends, but a client may)."""
    items = [("csrf", csrf), *fields.items()]
    if not multipart:
        body = "&".join(
            f"{quote(k, safe='', errors='surrogatepass')}={quote(v, safe='', errors='surrogatepass')}" for k, v in items
        )
        return body.encode(), "application/x-www-form-urlencoded"
    boundary = "PropertyBoundary"
    parts = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n'.encode("utf-8", "surrogatepass")
        + v.encode("utf-8", "surrogatepass")
        + b"\r\n"
        for k, v in items
    )
    return parts + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


# -- the API body


@PROPERTY_SETTINGS
@given(
    value=PLAY_BODIES,
    ascii_only=st.booleans(),
    deep=st.one_of(st.none(), st.none(), st.none(), st.integers(0, 3000)),  # raw brackets, a quarter of the time
)
def test_any_json_body_to_play_gets_a_json_4xx_or_an_accepted_id(live, value, ascii_only, deep):
    raw = ("[" * deep + "]" * deep).encode() if deep is not None else serialized(value, ascii_only)
    status, body, content_type = live.run(live.post_api(raw))
    event(f"status {status}")
    assert status in API_STATUSES, (status, body[:300], raw[:300])
    assert content_type == "application/json", (status, content_type, body[:300])
    answer = json.loads(body)
    assert isinstance(answer, dict) and ("error" in answer or "id" in answer), answer
    if status == 202:
        assert isinstance(answer["id"], str) and answer["id"]
    else:
        assert isinstance(answer["error"], str) and answer["error"]


def true_depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(true_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(true_depth, value.values()), default=0)
    return 0


@settings(max_examples=max(EXAMPLES, 200), deadline=None, database=None)
@given(value=JSON_VALUES | st.integers(0, 500).map(_nested), ascii_only=st.booleans())
def test_json_depth_is_the_true_nesting_depth(value, ascii_only):
    raw = serialized(value, ascii_only)
    assert json_depth(raw) == true_depth(value)


# -- the staff forms


def assert_clean(value: Any, where: str = "config") -> None:
    """Only finite floats and UTF-8-encodable strings, all the way down."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            assert_clean(getattr(value, f.name), f"{where}.{f.name}")
    elif isinstance(value, dict):
        for k, v in value.items():
            assert_clean(k, f"{where} key")
            assert_clean(v, f"{where}.{k!r}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            assert_clean(item, f"{where}[{i}]")
    elif isinstance(value, float):
        assert math.isfinite(value), f"{where} = {value!r}"
    elif isinstance(value, str | Path):
        str(value).encode("utf-8")  # raises UnicodeEncodeError on a lone surrogate


def post_form(live: LiveService, path: str, fields: dict[str, str], multipart: bool) -> None:
    body, content_type = form_body(fields, live.csrf, multipart)
    status, answer = live.run(live.post_staff(path, body, content_type))
    event(f"status {status}")  # pytest --hypothesis-show-statistics shows how many were accepted
    assert status < 500, (status, answer[:300], fields)
    if status == 303:
        cfg = load_config(live.config_path)  # raises ConfigError if what was saved is not a valid config
        assert_clean(cfg)
        assert_clean(yaml.safe_load(live.settings_path.read_text(encoding="utf-8")), "staff settings")
    else:
        assert status in (400, 404, 413), (status, answer[:300], fields)


@PROPERTY_SETTINGS
@given(fields=VOICE_FORMS, multipart=st.booleans())
def test_voice_form(live, fields, multipart):
    post_form(live, "/voice", fields, multipart)


@PROPERTY_SETTINGS
@given(fields=VOLUME_FORMS, multipart=st.booleans())
def test_volume_and_quiet_hours_form(live, fields, multipart):
    post_form(live, "/volume", fields, multipart)


@PROPERTY_SETTINGS
@given(fields=ADD_FORMS, multipart=st.booleans())
def test_add_line_form(live, fields, multipart):
    post_form(live, "/lines/add", fields, multipart)


@PROPERTY_SETTINGS
@given(pid=st.sampled_from(["welcome", "quartz", "nope", "Bad Id"]), fields=EDIT_FORMS, multipart=st.booleans())
def test_edit_line_form(live, pid, fields, multipart):
    post_form(live, f"/lines/{quote(pid, safe='')}/edit", fields, multipart)
