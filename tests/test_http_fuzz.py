"""A bounded random HTTP fuzzer against the real API and staff servers on 127.0.0.1.

One Service (API with free text allowed, staff page with a password and a logged-in session) receives
KIOSK_FUZZ_REQUESTS (default 2000) generated requests, 8 at a time: every route with random methods, path
suffixes and percent-encodings (invalid UTF-8, encoded lone surrogates), query strings, Host/Origin/Content-Type/
Cookie/Authorization/Idempotency-Key headers (some as raw bytes aiohttp would not send) and JSON, form, multipart
or random bodies; a few percent also carry a Content-Encoding (the body compressed, not, or damaged),
Transfer-Encoding (chunked, with or without a flaw, beside Content-Length or not) or Expect header. A share of
staff requests carry the real session and CSRF token, so the form handlers' validation is reached. No answer may
be a 5xx and no traceback may be logged; afterwards the service is healthy and still speaks a configured line
through ALSA.

KIOSK_FUZZ_SEED replays a run (the seed is printed, and named in every failure). KIOSK_FUZZ_DEBUG=1 prints every
request with its answer. The tests after the fuzzer pin what it found, each with the request that once gave a 5xx
or a traceback.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gzip
import json
import logging
import os
import random
import socket
import time
import traceback
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
from conftest import file_sink_opener
from gpiozero.pins.mock import MockFactory
from yarl import URL

from kiosk.config import load_config
from kiosk.service import Service
from kiosk.staff.auth import PasswordFile
from kiosk.staff.voice import KEY_MASK
from kiosk.systemd import Notifier

PASSWORD = "correct horse battery"
REQUESTS = int(os.environ.get("KIOSK_FUZZ_REQUESTS", "2000"))
SEED = int(os.environ.get("KIOSK_FUZZ_SEED") or random.SystemRandom().randrange(2**32))
CONCURRENCY = 8
REQUEST_TIMEOUT_S = 5.0
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
KEEP = "welcome"  # a configured line the fuzzer never deletes; spoken at the end
TIMEOUT = aiohttp.ClientTimeout(total=15)
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")
TRACEBACK_LOGGERS = ("aiohttp.server", "aiohttp.web", "kiosk", "asyncio")

pytestmark = pytest.mark.timeout(max(120, REQUESTS // 10))


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-secret")


# -- the service under test


@dataclass
class Target:
    service: Service
    config_path: Path
    session: str  # the staff session cookie's value
    csrf: str  # that session's CSRF token

    @property
    def api_port(self) -> int:
        return self.service.port

    @property
    def staff_port(self) -> int:
        return self.service.staff_port

    @property
    def captions_port(self) -> int:
        return self.service.parts.captions_port

    def port_of(self, server: str) -> int:
        return {"api": self.api_port, "staff": self.staff_port, "captions": self.captions_port}[server]


def write_config(tmp_path: Path, server_url: str, extra: str = "") -> Path:
    (tmp_path / "key").write_text("sk-file-key\n")
    path = tmp_path / "kiosk.yaml"
    path.write_text(
        f"openai:\n  base_url: {server_url}/v1\n  api_key_file: {tmp_path / 'key'}\n"
        f"cache:\n  dir: {tmp_path / 'cache'}\nhistory:\n  file: {tmp_path / 'cache'}.history.sqlite3\n"
        "api:\n  port: 0\n  allow_text: true\ncaptions:\n  bind: 127.0.0.1\n  port: 0\n"
        f"staff:\n  bind: 127.0.0.1\n  port: 0\n  password_file: {tmp_path / 'state' / 'pw'}\n"
        f"  settings_file: {tmp_path / 'state' / 'staff.yaml'}\n"
        "buttons:\n  - pin: 17\n    phrase: welcome\n    cooldown_ms: 0\n  - pin: 22\n    action: stop\n"
        "phrases:\n  welcome: Welcome to the hall of minerals.\n  quartz: Quartz is hard.\n"
        f"{extra}"
    )
    return path


@contextlib.asynccontextmanager
async def running_service(tmp_path: Path, server, device: str, extra: str = ""):
    """A Service with API and staff page, a staff password set, and a logged-in staff session."""
    path = write_config(tmp_path, server.url, extra)
    PasswordFile(tmp_path / "state" / "pw").set(PASSWORD)
    service = Service(
        load_config(path),
        config_path=path,
        open_sink=file_sink_opener(device),
        pin_factory=MockFactory(),
        notifier=Notifier({}),
    )
    await asyncio.wait_for(service.start(), timeout=10)
    try:
        session, csrf = await log_in(service.staff_port)
        yield Target(service, path, session, csrf)
    finally:
        await service.stop()


async def log_in(port: int) -> tuple[str, str]:
    """Log in the way a browser does; returns (session cookie value, CSRF token)."""
    base = f"http://127.0.0.1:{port}"
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(base, cookie_jar=jar, timeout=TIMEOUT, headers={"Origin": base}) as http:
        async with http.get("/login") as r:
            token = _csrf_in(await r.text())
        async with http.post("/login", data={"csrf": token, "password": PASSWORD}, allow_redirects=False) as r:
            assert r.status == 303, r.status
        async with http.get("/lines") as r:
            csrf = _csrf_in(await r.text())
        session = next(c.value for c in jar if c.key == "kiosk_session")
    return session, csrf


def _csrf_in(html: str) -> str:
    return html.split('name="csrf" value="')[1].split('"')[0]


# -- requests and how they are sent


@dataclass
class Req:
    server: str  # "api", "staff" or "captions"
    method: str
    target: bytes  # the request-target exactly as sent
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    raw: bool = False  # force raw asyncio streams (aiohttp would refuse or rewrite something)
    authed: bool = False  # carries the real staff session and CSRF token
    version: bytes = b"HTTP/1.1"  # raw only: HTTP/1.0 lets a request without Host reach the handlers
    length: bool = True  # raw only: add Content-Length (False: the headers frame the body themselves)
    half_close: bool = False  # raw only: end the sending side after the request (a body cut short ends there)

    def describe(self, limit: int = 400) -> str:
        headers = "; ".join(f"{k.decode('latin-1')}: {v.decode('latin-1')[:120]}" for k, v in self.headers)
        text = f"{self.server} {self.method} {self.target.decode('latin-1')[:300]} [{headers}] body={self.body[:200]!r}"
        return text[:limit] + (f"... ({len(self.body)} body bytes)" if len(text) > limit else "")


@dataclass
class Answer:
    status: int | None  # None: no HTTP answer (see `outcome`)
    outcome: str  # "http", "timeout", "closed", or an exception name
    body: bytes = b""


def _sendable_by_aiohttp(req: Req) -> bool:
    def plain(b: bytes) -> bool:
        return all(0x20 <= c < 0x7F for c in b)

    return (
        not req.raw
        and req.version == b"HTTP/1.1"
        and plain(req.target)
        and req.target.startswith(b"/")
        and req.method in METHODS
        and any(k.lower() == b"host" for k, _ in req.headers)
        and all(plain(k) and plain(v) for k, v in req.headers)
    )


async def send(http: aiohttp.ClientSession, port: int, req: Req) -> Answer:
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            if _sendable_by_aiohttp(req):
                return await _send_aiohttp(http, port, req)
            return await _send_raw(port, req)
    except TimeoutError:
        return Answer(None, "timeout")
    except (aiohttp.ClientError, ConnectionError, OSError, ValueError) as exc:
        return Answer(None, type(exc).__name__, str(exc).encode())


async def _send_aiohttp(http: aiohttp.ClientSession, port: int, req: Req) -> Answer:
    url = URL(f"http://127.0.0.1:{port}{req.target.decode('ascii')}", encoded=True)
    headers = [(k.decode(), v.decode()) for k, v in req.headers]
    async with http.request(
        req.method,
        url,
        headers=headers,
        data=req.body if req.body or req.method in ("POST", "PUT", "PATCH") else None,
        allow_redirects=False,
        skip_auto_headers=("Content-Type", "User-Agent", "Accept", "Accept-Encoding"),
    ) as response:
        body = await response.content.read(MAX_RESPONSE_BYTES)
        return Answer(response.status, "http", body)


async def _send_raw(port: int, req: Req) -> Answer:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = [req.method.encode() + b" " + req.target + b" " + req.version]
        head += [k + b": " + v for k, v in req.headers]
        if req.length and (req.body or req.method in ("POST", "PUT", "PATCH")):
            head.append(b"Content-Length: " + str(len(req.body)).encode())
        head.append(b"Connection: close")
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + req.body)
        if req.half_close:
            writer.write_eof()
        await writer.drain()
        status_line = await _final_status_line(reader)
        if not status_line:
            return Answer(None, "closed")
        parts = status_line.split()
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            return Answer(None, f"bad status line {status_line[:40]!r}")
        rest = await reader.read(MAX_RESPONSE_BYTES)
        body = rest.split(b"\r\n\r\n", 1)[-1]
        return Answer(int(parts[1]), "http", body)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _final_status_line(reader: asyncio.StreamReader) -> bytes:
    """The status line of the answer, past any interim 1xx (`100 Continue` to `Expect: 100-continue`)."""
    while (line := await reader.readline()).startswith(b"HTTP/1.1 1"):
        while (await reader.readline()).strip():  # the interim answer's headers
            pass
    return line


# -- the generator

JUNK_SEGMENTS = (
    "%ff",
    "%ed%a0%80",
    "%ed%b0%80",
    "%c0%af",
    "%00",
    "%2F",
    "..",
    "%2e%2e",
    "..%2F..%2Fetc%2Fpasswd",
    "caf%C3%A9",
    "%",
    "%zz",
    "%F0%9F%98%80",
    "x;y=1",
    "@",
    "~root",
    "%20",
    "+",
    "%0d%0aX-Injected:%201",
    "%3Cscript%3E",
    "",
)
SUFFIXES = ("", "", "", "", "/", "//", "/x", "/.", "/..", ".json", "%ff", "%ed%a0%80", ";jsessionid=1", "#frag")
FORM_CHARSETS = ("", "", "; charset=utf-8", "; charset=latin-1", "; charset=ascii", "; charset=utf-16")
FORM_CHARSETS_BAD = ("; charset=bogus-charset", "; charset=base64", "; charset=", '; charset="utf-8"', "; charset=zlib")
#: Charsets whose decoders make lone surrogates (the form reader refuses every charset but UTF-8).
SURROGATE_CHARSETS = ("; charset=unicode_escape", "; charset=raw_unicode_escape", "; charset=utf-7")
SPEEDS = (
    "1",
    "1.0",
    "0.25",
    "4",
    "4.0000001",
    "0.2499",
    "nan",
    "NaN",
    "-nan",
    "inf",
    "-inf",
    "Infinity",
    "1e999",
    "-1e999",
    "1e-400",
    "-0",
    "0",
    "",
    "   ",
    "9" * 400,
    "9" * 5000,
    "1_0",
    "0x10",
    "١٫٥",
    "1,5",
    "fast",
    "2.5",
)
TIMES = ("22:00", "07:00", "00:00", "23:59", "24:00", "25:00", "7:00", "1320", "", " ", "22:00:00", "noon", "٢٢:٠٠")
WHOLE = ("0", "50", "100", "101", "-1", "", " 7 ", "nan", "1e3", "٣", "9" * 400, "9" * 5000, "1.5", "0x10")
IDS = ("welcome", "quartz", "nope", "Bad Id", "", "a" * 64, "a" * 65, "x\n", "-x", "ü", "a/b", "%ff", "gold")
FRAMING_HEADERS = (b"Content-Encoding", b"Transfer-Encoding", b"Expect")
CONTENT_ENCODINGS = (b"deflate", b"gzip", b"x-gzip", b"br", b"zstd", b"identity", b"bogus", b"gzip, deflate", b"")
TRANSFER_ENCODINGS = (
    b"chunked",
    b"chunked",
    b"gzip, chunked",
    b"chunked, gzip",
    b"Chunked",
    b"chunked, chunked",
    b"gzip",
)
EXPECTS = (b"100-continue", b"100-Continue", b"foo", b"", b"100-continue, foo")
#: One flaw in a chunked body: the chunk inserted, or (cut, trailer) what is done to the end.
CHUNK_FLAWS = {
    "size": b"zz\r\nhello\r\n",
    "no crlf": b"5\r\nhelloXX",
    "extension": b"5;name=value\r\nhello\r\n",
    "negative": b"-5\r\nhello\r\n",
    "huge": b"ffffffffffffffffffff\r\nhello\r\n",
    "bare lf": b"5\nhello\n",
    "short": b"9\r\nhello\r\n",
    "cut": b"",
    "trailer": b"",
}
ENGINES = (
    "openai",
    " auto ",
    "auto",
    "",
    "OpenAI",
    "none",
    "piper-x",
    "garbage",
    "\x00",
)  # never "piper": see voice_form


class Fuzz:
    """Generates one request at a time from a seeded random.Random (a run is reproducible up to timing)."""

    def __init__(self, rng: random.Random, target: Target):
        self.rng = rng
        self.t = target
        self.hostname = socket.gethostname()

    # small helpers

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def pick(self, items):
        return self.rng.choice(items)

    def text(self, limit: int = 40) -> str:
        alphabet = "abc XYZ 123 é ü 中 😀 \x00\n\t\"'<>&;=%+/\\[]{}\u202e\ufeff\ud800\udfff"
        n = self.rng.choice((0, 1, 3, 10, limit, limit * 20))
        return "".join(self.rng.choice(alphabet) for _ in range(n))

    def big(self) -> str:
        return self.pick(("x", "é", "%", "中")) * self.pick((100, 1000, 5000, 20_000, 70_000))

    # the request

    def request(self) -> Req:
        if self.chance(0.45):
            return self.api_request()
        if self.chance(0.15):
            return self.captions_request()
        return self.staff_request()

    def captions_request(self) -> Req:
        """The public captions server's pages (its event stream never ends by design: tests/test_captions_flood.py
        sends it odd requests)."""
        port = self.t.captions_port
        route = self.pick(("/", "/captions", "/captions/captions.js", "/captions/favicon.svg", "/transcript", "/{id}"))
        method = "GET" if self.chance(0.7) else self.method()
        path = route.replace("{id}", self.pick((*IDS[:3], *JUNK_SEGMENTS)))
        req = Req("captions", method, (self.path(path) + self.query(api=False)).encode("latin-1", "replace"))
        req.headers += self.host(port)
        if self.chance(0.3):
            req.headers.append((b"Cookie", self.cookie()))
        if method in ("POST", "PUT", "PATCH") or self.chance(0.05):
            content_type, req.body = self.staff_body(csrf="")
            if content_type is not None:
                req.headers.append((b"Content-Type", content_type))
        self.maybe_raw(req)
        return req

    def api_request(self) -> Req:
        port = self.t.api_port
        route = self.pick(
            (
                "/api/play",
                "/api/play",
                "/api/play",
                "/api/play/{id}",
                "/api/stop",
                "/api/speech",
                "/api/speech",
                "/api/status",
                "/api/history",
                "/api/history.csv",
                "/healthz",
                "/metrics",
                "/api",
                "/api/nothing",
                "/",
            )
        )
        natural = "POST" if route in ("/api/play", "/api/stop") else "GET"
        clean = self.chance(0.3)  # a well-formed call, so that the handlers' own checks get most of the traffic
        method = natural if clean or self.chance(0.7) else self.method()
        played = list(self.t.service.speaker.history)
        path = route.replace("{id}", self.pick((*played[-3:], "00000-1", "nope", *JUNK_SEGMENTS)))
        if clean:
            query = ""
            if route == "/api/speech":
                query = self.pick(
                    (
                        "?phrase=welcome",
                        "?phrase=nope",
                        "?text=Hello",
                        f"?text={quote(self.text(), errors='surrogatepass')}",
                    )
                )
            target = path + query
        else:
            target = self.path(path) + self.query(api=True)
        req = Req("api", method, target.encode("latin-1", "replace"))
        req.headers += [(b"Host", b"127.0.0.1:%d" % port)] if clean else self.host(port)
        origin = None if clean else self.origin(port)
        if origin is not None:
            req.headers.append((b"Origin", origin))
        if self.chance(0.15):
            req.headers.append((b"Authorization", self.pick(self.authorizations())))
        if self.chance(0.25):
            req.headers.append((b"Idempotency-Key", self.idempotency_key()))
        if self.chance(0.1):
            req.headers.append((b"Cookie", self.cookie()))
        if method in ("POST", "PUT", "PATCH") or self.chance(0.05):
            content_type, req.body = self.api_body()
            if clean:
                content_type = b"application/json"
            if content_type is not None:
                req.headers.append((b"Content-Type", content_type))
        self.maybe_raw(req)
        return req

    def staff_request(self) -> Req:
        port = self.t.staff_port
        routes = (
            "/",
            "/login",
            "/logout",
            "/status",
            "/status.json",
            "/lines",
            "/lines/add",
            "/lines/{id}/edit",
            "/lines/{id}/delete",
            "/lines/{id}/play",
            "/lines/{id}/draft",
            "/lines/{id}/preview.wav",
            "/buttons",
            "/voice",
            "/voice/progress.json",
            "/volume",
            "/schedule",
            "/account",
            "/account/password",
            "/account/settings",
            "/account/settings.yaml",
            "/account/update",
            "/status/history.json",
            "/status/history.csv",
            "/buttons/{id}/identify",
            "/voice/sample.wav",
            "/static/app.js",
            "/static/style.css",
            "/static/{id}",
            "/setup",
            "/label",
        )
        route = self.pick(routes)
        posts = (
            "/login",
            "/setup",
            "/logout",
            "/lines/add",
            "/lines/{id}/edit",
            "/lines/{id}/delete",
            "/lines/{id}/play",
            "/lines/{id}/draft",
            "/schedule",
            "/account/password",
            "/account/settings",
            "/account/update",
            "/buttons/{id}/identify",
        )
        natural = (
            "POST" if route in (*posts, "/buttons") or (route in ("/voice", "/volume") and self.chance(0.6)) else "GET"
        )
        if natural == "POST" and route != "/logout" and self.chance(0.45):
            return self.authed_form(route)
        method = natural if self.chance(0.7) else self.method()
        path = route.replace("{id}", self.pick((*IDS[:3], *JUNK_SEGMENTS)))
        req = Req("staff", method, (self.path(path) + self.query(api=False)).encode("latin-1", "replace"))
        req.headers += self.host(port)
        origin = self.origin(port)
        if origin is not None:
            req.headers.append((b"Origin", origin))
        if self.chance(0.1):
            req.headers.append((b"Referer", self.pick((b"http://127.0.0.1:%d/lines" % port, b"http://evil.example/"))))
        if self.chance(0.5):
            req.headers.append((b"Cookie", self.cookie()))
        if self.chance(0.1):
            req.headers.append((b"Authorization", self.pick(self.authorizations())))
        if method in ("POST", "PUT", "PATCH") or self.chance(0.05):
            content_type, req.body = self.staff_body(csrf=self.pick((self.t.csrf, "", "forged", self.t.csrf + "x")))
            if content_type is not None:
                req.headers.append((b"Content-Type", content_type))
        self.maybe_raw(req)
        return req

    def authed_form(self, route: str) -> Req:
        """A POST with the real session, same origin and the right CSRF token: the handlers' own validation."""
        port = self.t.staff_port
        phrases = list(self.t.service.cfg.phrases)
        pid = self.pick(phrases) if phrases and self.chance(0.85) else self.pick(IDS)
        if route == "/lines/{id}/delete" and pid == KEEP:
            pid = self.pick([p for p in phrases if p != KEEP] or ["nope"])
        path = route.replace("{id}", quote(pid, safe=""))
        fields: list[tuple[str, str]]
        cookie = b"kiosk_session=" + self.t.session.encode()
        if route == "/login":  # the login form's CSRF is the login cookie
            token = self.pick(("tok", "x" * 300, "a b", ""))
            cookie = b"kiosk_login=" + token.encode()
            fields = [("csrf", token), ("password", self.pick((PASSWORD, "guess", "", self.text())))]
        elif route == "/setup":  # so is the setup-code form's
            token = self.pick(("tok", "x" * 300, "a b", "", "t" * 43))
            cookie = b"kiosk_login=" + token.encode()
            new = self.pick(("a new password, long", "short", "", self.text(), self.big()))
            code = self.pick(("123456", "12 34 56", "", "0" * 7, self.text()))
            fields = [("csrf", token), ("code", code), ("new", new), ("repeat", self.pick((new, self.text())))]
        else:
            fields = [("csrf", self.t.csrf), *self.route_fields(route)]
        if self.chance(0.1):
            fields.append((self.text(10), self.text()))
        self.rng.shuffle(fields)
        host = self.pick((f"127.0.0.1:{port}", f"localhost:{port}"))
        req = Req("staff", "POST", path.encode(), authed=True)
        req.headers += [(b"Host", host.encode()), (b"Origin", f"http://{host}".encode()), (b"Cookie", cookie)]
        if self.chance(0.8):
            charset = self.pick(FORM_CHARSETS + SURROGATE_CHARSETS)
            content_type = f"application/x-www-form-urlencoded{charset}".encode()
            body = self.urlencode(fields, charset)
        else:
            content_type, body = self.multipart(fields)
        req.headers.append((b"Content-Type", content_type))
        req.body = body
        return req

    def route_fields(self, route: str) -> list[tuple[str, str]]:
        if route == "/voice":
            return self.voice_form()
        if route == "/volume":
            return self.volume_form()
        if route == "/lines/add":
            return [(k, v) for k, v in (("id", self.line_id()), ("text", self.line_text())) if self.chance(0.95)]
        if route == "/lines/{id}/edit":
            return [("text", self.line_text())] if self.chance(0.95) else []
        if route == "/schedule":
            phrase = self.pick([*self.t.service.cfg.phrases, "", "nope", self.text()])
            time_text = self.pick(("16:45", "", "25:00", "9:5", self.text()))
            fields = [("schedule.0.time", time_text), ("schedule.0.phrase", phrase)]
            if self.chance(0.3):  # an announcement's words typed in place (they become a line)
                fields.append(("schedule.0.text", self.line_text()))
            return [*fields, ("schedule.0.days", self.pick(("mon", "sun", "funday", self.text())))]
        if route == "/account/update":  # a release file: never a real one here
            return [("release", self.pick(("", "not a tar", "\x00" * 1000, self.text(), self.big())))]
        if route == "/account/password":  # random guesses: never the current password
            return [(name, self.pick(("", "short", self.text(), "p" * 5000))) for name in ("current", "new", "repeat")]
        if route == "/buttons":
            phrases = list(self.t.service.cfg.phrases)
            fields = [("button.17", self.pick([*phrases, "nope", "", self.text()]))]
            if self.chance(0.3):
                fields.append((self.pick(("button.22", "button.99", "button.x")), self.pick(phrases or ["x"])))
            return fields
        return []

    def voice_form(self) -> list[tuple[str, str]]:
        # engine "piper" is valid but loads the local voice (slow, and it may fetch a model): left out
        values = {
            "model": self.pick(("gpt-4o-mini-tts", "tts-1", "", " ", self.text(), "m" * 5000)),
            "voice": self.pick(("coral", "sage", "", self.text(), "v" * 3000)),
            "instructions": self.pick(("", "Slow.", "<script>alert(1)</script>", self.text(), "i" * 20_000)),
            "speed": self.pick((*SPEEDS, str(self.rng.uniform(-5, 10)))),
            "engine": self.pick(ENGINES),
            "api_key": self.pick(("", "", KEY_MASK, "sk-new-key", self.text(), "k" * 3000)),
        }
        return [(k, v) for k, v in values.items() if self.chance(0.93)]

    def volume_form(self) -> list[tuple[str, str]]:
        fields = [("volume", self.pick(WHOLE))] if self.chance(0.93) else []
        for i in self.rng.sample(range(6), self.rng.randint(0, 4)):
            for key, choices in (("start", TIMES), ("end", TIMES), ("volume", WHOLE)):
                if self.chance(0.85):
                    fields.append((f"quiet.{i}.{key}", self.pick(choices)))
        return fields

    def line_id(self) -> str:
        if self.chance(0.5):
            return f"fz{self.rng.randrange(10_000)}"
        return self.pick((*IDS, self.text(10), "\ud800"))

    def line_text(self) -> str:
        return self.pick(
            (
                "A line.",
                "",
                "   ",
                "x" * 5000,
                "x" * 20_001,
                "Gold <script>alert('x')</script> & silver",
                "!!python/object/apply:os.system ['true']",
                "\ud800 lone",
                "nul \x00 inside",
                self.text(),
            )
        )

    # pieces

    def method(self) -> str:
        return self.pick((*METHODS, *METHODS, "TRACE", "PROPFIND", "BREW"))

    def path(self, path: str) -> str:
        if self.chance(0.15):
            segments = path.split("/")
            i = self.rng.randrange(1, len(segments)) if len(segments) > 1 else 0
            segments[i] = self.pick(JUNK_SEGMENTS) if self.chance(0.5) else quote(segments[i], safe="").upper()
            path = "/".join(segments)
        if self.chance(0.25):
            path += self.pick(SUFFIXES)
        if self.chance(0.03):
            path = self.pick(("", "*", "http://evil.example/healthz", "//x", "x")) + path
        return path

    def query(self, *, api: bool) -> str:
        if not self.chance(0.45 if api else 0.15):
            return ""
        names = ("phrase", "phrase", "text", "text", "x", "", "phrase[]", "%ff", "csrf", "id")
        pairs = []
        for _ in range(self.rng.choice((1, 1, 2, 3, 8))):
            value = self.pick(
                (
                    "welcome",
                    "quartz",
                    "nope",
                    "",
                    "Hello+there",
                    "%ff",
                    "%ed%a0%80",
                    "%00",
                    "caf%C3%A9",
                    "+",
                    "%",
                    quote(self.text(), safe="", errors="surrogatepass"),
                    "a" * self.pick((100, 4097, 9000)),
                )
            )
            pairs.append(f"{self.pick(names)}={value}" if self.chance(0.9) else self.pick(names))
        return "?" + "&".join(pairs) + self.pick(("", "", "&", "&&", "#x"))

    def host(self, port: int) -> list[tuple[bytes, bytes]]:
        roll = self.rng.random()
        if roll < 0.8:
            host = self.pick(
                (
                    f"127.0.0.1:{port}",
                    f"127.0.0.1:{port}",
                    f"localhost:{port}",
                    "127.0.0.1",
                    f"[::1]:{port}",
                    "[::1]",
                    f"{self.hostname}.local",
                    "kiosk.localhost",
                    "LOCALHOST.",
                    "10.0.0.5:80",
                )
            ).encode()
        elif roll < 0.75:
            host = self.pick(
                (b"evil.example", b"evil.example:%d" % port, b"127.0.0.1.nip.io", b"localhost.evil.example")
            )
        elif roll < 0.97:
            host = self.pick(
                (
                    b"",
                    b" ",
                    b":::",
                    b"[",
                    b"[]",
                    b"[::1",
                    b"a b",
                    b"@",
                    b"%ff",
                    b"127.0.0.1:99999",
                    b"x" * 3000,
                    b"[fe80::1%25eth0]:80",
                    b"127.0.0.1:1:2",
                    b"\xff\xfe",
                    b"caf\xc3\xa9",
                    b"\xed\xa0\x80",
                    b"\x7f",
                )
            )
        else:
            return []  # no Host at all (sent raw)
        headers = [(b"Host", host)]
        if self.chance(0.03):
            headers.append((b"Host", b"evil.example"))  # given twice
        return headers

    def origin(self, port: int) -> bytes | None:
        if self.chance(0.55):
            return None
        return self.pick(
            (
                b"http://127.0.0.1:%d" % port,
                b"http://127.0.0.1:%d" % port,
                b"http://127.0.0.1:%d" % port,
                b"http://localhost:%d" % port,
                b"http://[::1]:%d" % port,
                b"https://127.0.0.1",
                b"http://evil.example",
                b"https://evil.example:%d" % port,
                b"null",
                b"",
                b"http://",
                b"http://[",
                b"http://[::1",
                b"ftp://127.0.0.1",
                b"javascript:alert(1)",
                b"http://127.0.0.1:%d/path?x" % port,
                b"HTTP://LOCALHOST",
                b"http://\xff",
                b"http://127.0.0.1:%d, http://evil.example" % port,
            )
        )

    def authorizations(self) -> tuple[bytes, ...]:
        return (b"Bearer", b"Bearer ", b"Bearer " + b"x" * 5000, b"Basic Og==", b"Digest ,,,", b"Bearer \xff", b"\x01")

    def idempotency_key(self) -> bytes:
        return self.pick(
            (
                b"cue-%d" % self.rng.randrange(50),
                b"x" * 255,
                b"x" * 256,
                b"x" * 5000,
                b"",
                b" ",
                b"\x01\x02",
                b"\xff",
                "ключ".encode(),
                b"\xed\xa0\x80",
                b"a\tb",
            )
        )

    def cookie(self) -> bytes:
        choices = [
            b"kiosk_session=forged",
            b"kiosk_session=",
            b"kiosk_session=" + self.t.session.encode(),  # a real session, but no (or a wrong) CSRF token
            b"=;;;",
            b'kiosk_login="unterminated',
            b'kiosk_login="a;b"',
            b'kiosk_login="\\355\\240\\200"',
            b"kiosk_login=tok",
            b"a=" + b"b" * 5000,
            b"kiosk_session=\xff",
            b"other=\xed\xa0\x80",
            b"kiosk_session=" + self.t.session.encode() + b"; kiosk_session=forged",
        ]
        choices += [b"kiosk_login=\xff", b"kiosk_login=\xed\xa0\x80"]
        return self.pick(choices)

    def maybe_raw(self, req: Req) -> None:
        req.raw = self.chance(0.25)
        if (not any(k == b"Host" for k, _ in req.headers) and self.chance(0.8)) or self.chance(0.05):
            req.version = b"HTTP/1.0"
        if self.chance(0.08):
            self.odd_framing(req)

    # how the body is framed: Content-Encoding, Transfer-Encoding, Expect

    def odd_framing(self, req: Req) -> None:
        """Headers that change how the body is read; sent raw, as aiohttp's client frames bodies its own way."""
        req.raw = True
        kind = self.pick(("encoding", "chunked", "chunked", "expect"))
        if kind == "expect" or self.chance(0.1):
            req.headers.append((b"Expect", self.pick(EXPECTS)))
        if kind == "encoding" or self.chance(0.2):
            name, req.body = self.encoded(req.body)
            req.headers.append((b"Content-Encoding", name))
        if kind == "chunked":
            req.headers.append((b"Transfer-Encoding", self.pick(TRANSFER_ENCODINGS)))
            req.body, req.half_close = self.chunked(req.body)
            req.length = False
            if self.chance(0.15):  # both framings at once: a request-smuggling classic
                req.headers.append((b"Content-Length", str(len(req.body)).encode()))

    def encoded(self, body: bytes) -> tuple[bytes, bytes]:
        """(a Content-Encoding, the body): compressed as it says, or not at all, or compressed and then damaged."""
        name = self.pick(CONTENT_ENCODINGS)
        roll = self.rng.random()
        if roll < 0.05:
            body = b"0" * 2_000_000  # a small compressed body that inflates past every size limit
        if roll < 0.45 or roll > 0.75:
            body = gzip.compress(body) if b"gzip" in name else self.pick((zlib.compress, _raw_deflate))(body)
        if roll > 0.75 and body:
            cut = self.rng.randrange(len(body))
            body = body[:cut] + self.pick((b"", b"\xff", b"junk")) + body[cut + 1 :]
        return name, body

    def chunked(self, body: bytes) -> tuple[bytes, bool]:
        """The body as chunks, now and then with one flaw; True when it is cut short (sent, then the end)."""
        cuts = sorted(self.rng.sample(range(len(body) + 1), min(len(body) + 1, self.rng.randint(0, 3))))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True) if b > a]
        chunks = [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces]
        end = b"0\r\n\r\n"
        flaw = self.pick((None, None, None, *CHUNK_FLAWS))
        if flaw == "cut":
            return b"".join(chunks)[: self.rng.randrange(sum(map(len, chunks)) + 1)], True
        if flaw == "trailer":
            end = b"0\r\nX-Trailer: 1\r\n\r\n"
        elif flaw in CHUNK_FLAWS:
            chunks.insert(self.rng.randrange(len(chunks) + 1), CHUNK_FLAWS[flaw])
        return b"".join(chunks) + end, False

    # bodies

    def api_body(self) -> tuple[bytes | None, bytes]:
        roll = self.rng.random()
        content_type = self.pick(
            (
                *[b"application/json"] * 12,
                b"application/json; charset=utf-8",
                b"Application/JSON",
                b"application/json; charset=latin-1",
                b"application/json; charset=bogus",
                b"application/json;;",
                b"application/x-www-form-urlencoded",
                b"multipart/form-data; boundary=XyZ",
                b"multipart/form-data",
                b"text/plain",
                b"",
                b"garbage",
                b";;;",
                b"application/json; charset=\xff",
                None,
            )
        )
        if roll < 0.45:
            body = self.json_body()
        elif roll < 0.7:
            body = json.dumps(
                self.pick(({"phrase": "welcome"}, {"phrase": "quartz"}, {"text": self.text()}, {"phrase": KEEP}))
            ).encode()
        elif roll < 0.8:
            body = self.rng.randbytes(self.pick((0, 1, 10, 1000, 17_000)))
        elif roll < 0.9:
            _, body = self.staff_body(csrf="x")
        else:
            depth = self.pick((8, 9, 50, 3000, 20_000))
            opener, closer = self.pick((("[", "]"), ('{"a":', "}")))
            body = (opener * depth + "1" + closer * depth).encode()
        return content_type, body

    def json_body(self) -> bytes:
        value = self.json_value(0)
        if self.chance(0.6):
            value = {self.pick(("phrase", "text", "phrase", "text", "volume", "", "\ud800")): value}
            if self.chance(0.3):
                value[self.pick(("phrase", "text", "extra", "at"))] = self.json_value(0)
            if self.chance(0.1):  # a start time: now or near it (kiosk.in_step), or any value above
                value["at"] = self.pick((time.time() + self.rng.uniform(-3, 3), self.json_value(0)))
        try:
            text = json.dumps(value, allow_nan=True, ensure_ascii=self.chance(0.6))
        except ValueError:  # an integer too long to print
            text = "1" * 5000
        body = text.encode("utf-8", "surrogatepass")
        if self.chance(0.1):
            body = self.pick((b"\xef\xbb\xbf", b"  ", b"\x00", b"//")) + body
        if self.chance(0.1):
            body = body[: self.rng.randrange(len(body) + 1)]  # truncated
        if self.chance(0.05):
            body += self.pick((b"}", b",", b" garbage", b"\x00"))
        return body

    def json_value(self, depth: int):
        roll = self.rng.random()
        if depth < 6 and roll < 0.25:
            return [self.json_value(depth + 1) for _ in range(self.rng.randrange(4))]
        if depth < 6 and roll < 0.45:
            return {self.text(8): self.json_value(depth + 1) for _ in range(self.rng.randrange(4))}
        return self.pick(
            (
                None,
                True,
                False,
                0,
                -1,
                2**64,
                10**300,
                -(10**4000),
                1.5,
                float("nan"),
                float("inf"),
                float("-inf"),
                1e308,
                "welcome",
                "quartz",
                "",
                "   ",
                "\ud800",
                "\udfff\ud800",
                "x" * 4097,
                "x" * 4096,
                self.text(),
                self.big(),
            )
        )

    def staff_body(self, csrf: str) -> tuple[bytes | None, bytes]:
        roll = self.rng.random()
        fields = [(self.pick(("csrf", "id", "text", "password", "volume", "speed", "", self.text(8))), self.text())]
        fields += [("csrf", csrf)] if self.chance(0.7) else []
        if roll < 0.45:
            charset = self.pick(FORM_CHARSETS + FORM_CHARSETS_BAD + SURROGATE_CHARSETS)
            return f"application/x-www-form-urlencoded{charset}".encode(), self.urlencode(fields, charset)
        if roll < 0.7:
            return self.multipart(fields)
        if roll < 0.8:
            return b"application/json", self.json_body()
        content_type = self.pick((b"text/plain", b"", b"garbage", b"multipart/form-data; boundary=", None))
        return content_type, self.pick((self.rng.randbytes(self.pick((0, 10, 1000, 70_000))), self.big().encode()))

    def urlencode(self, fields: list[tuple[str, str]], charset: str) -> bytes:
        def enc(s: str) -> str:
            return quote(s, safe="" if self.chance(0.9) else "&=+%", errors="surrogatepass")

        if "escape" in charset:  # the decoder turns \\ud800 into a lone surrogate
            return "&".join(f"{k}={v}" for k, v in fields).encode("unicode_escape")
        if "utf-7" in charset:
            return "&".join(f"{k}={v}" for k, v in fields).encode("utf-7", "surrogatepass")
        body = "&".join(f"{enc(k)}={enc(v)}" for k, v in fields)
        if self.chance(0.05):
            body += self.pick(("&", "&&=", "=", "%", "&x", "&%ff=%ff"))
        if self.chance(0.05):  # raw, not percent-encoded, bytes
            return body.encode() + b"&raw=\xff\xfe\xed\xa0\x80"
        return body.encode()

    def multipart(self, fields: list[tuple[str, str]]) -> tuple[bytes, bytes]:
        boundary = "XyZ"
        content_type = self.pick(
            (
                b"multipart/form-data; boundary=XyZ",
                b"multipart/form-data; boundary=XyZ",
                b"multipart/form-data; boundary=XyZ",
                b"multipart/form-data",
                b"multipart/form-data; boundary=",
                b'multipart/form-data; boundary="XyZ"',
                b"multipart/form-data; boundary=Other",
                b"multipart/mixed; boundary=XyZ",
            )
        )
        parts = []
        for name, value in fields:
            headers = [f'Content-Disposition: form-data; name="{name}"']
            if self.chance(0.1):
                headers = [self.pick(("Content-Disposition: form-data", "Content-Disposition: attachment", ""))]
            if self.chance(0.1):
                headers[0] += '; filename="f.txt"'
            if self.chance(0.2):
                part_charsets = ("utf-8", "latin-1", "bogus", "utf-16", "base64", "unicode_escape", "utf-7")
                part_type = self.pick(("text/plain", "application/octet-stream", "text/html"))
                headers.append(f"Content-Type: {part_type}; charset={self.pick(part_charsets)}")
            if self.chance(0.05):
                headers.append("Content-Transfer-Encoding: " + self.pick(("base64", "quoted-printable", "bogus")))
            if self.chance(0.05):
                headers.append("Content-Encoding: " + self.pick(("gzip", "deflate", "br", "bogus")))
            data = value.encode("utf-8", "surrogatepass")
            parts.append(("\r\n".join(headers)).encode("utf-8", "surrogatepass") + b"\r\n\r\n" + data)
        delimiter = f"--{boundary}".encode()
        body = b"".join(delimiter + b"\r\n" + part + b"\r\n" for part in parts) + delimiter + b"--\r\n"
        if self.chance(0.1):
            body = body[: self.rng.randrange(len(body) + 1)]  # cut short
        if self.chance(0.05):
            nested = b"Content-Disposition: form-data; name=n\r\nContent-Type: multipart/mixed; boundary=In\r\n\r\n"
            body = delimiter + b"\r\n" + nested + b"--In\r\n\r\nx\r\n--In--\r\n" + body
        return content_type, body


def _raw_deflate(data: bytes) -> bytes:
    """Deflate without the zlib header, as some clients send `Content-Encoding: deflate`."""
    compressor = zlib.compressobj(wbits=-15)
    return compressor.compress(data) + compressor.flush()


# -- the fuzz run


def from_test_server(record: logging.LogRecord) -> bool:
    """A record logged by tests/fake_openai.py's server (same process, same aiohttp loggers), not by the kiosk."""
    tb = record.exc_info[2] if record.exc_info else None
    return any(frame.filename.endswith("fake_openai.py") for frame in traceback.extract_tb(tb))


def tally_lines(statuses: collections.Counter, extra: str) -> list[str]:
    classes: collections.Counter = collections.Counter()
    for status, n in statuses.items():
        classes[f"{str(status)[0]}xx" if isinstance(status, int) else "no answer"] += n
    by_class = ", ".join(f"{k}={v}" for k, v in sorted(classes.items()))
    by_status = ", ".join(f"{k}={v}" for k, v in sorted(statuses.items(), key=lambda kv: str(kv[0])))
    return [f"HTTP fuzz: {extra}", f"  by class: {by_class}", f"  by status: {by_status}"]


async def test_random_requests_never_get_a_5xx_nor_a_traceback(tmp_path, server, alsa_file, caplog):
    caplog.set_level(logging.DEBUG)
    server.behaviour.max_audio_s = 0.2  # a 5,000-character line is a fifth of a second: the run stays short
    async with running_service(tmp_path, server, alsa_file[0], "speech:\n  queue_limit: 100\n") as target:
        service = target.service
        rng = random.Random(SEED)
        fuzz = Fuzz(rng, target)
        print(f"\nHTTP fuzz: seed {SEED} (replay with KIOSK_FUZZ_SEED={SEED}), {REQUESTS} requests")
        statuses: collections.Counter = collections.Counter()
        counts: collections.Counter = collections.Counter()
        authed_statuses: collections.Counter = collections.Counter()
        failures: list[str] = []
        health_when_503: list[tuple[bool, str]] = []
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(REQUESTS):
            queue.put_nowait(i)
        first_record = len(caplog.records)

        async def worker() -> None:
            connector = aiohttp.TCPConnector(limit=4, force_close=False)
            async with aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
            ) as http:
                while True:
                    try:
                        queue.get_nowait()
                    except asyncio.QueueEmpty:
                        return
                    req = fuzz.request()
                    port = target.port_of(req.server)
                    answer = await send(http, port, req)
                    key = answer.status if answer.status is not None else answer.outcome.split(" ")[0]
                    statuses[key] += 1
                    counts["raw" if not _sendable_by_aiohttp(req) else "aiohttp"] += 1
                    counts["authenticated"] += req.authed
                    counts["framing"] += any(k in FRAMING_HEADERS for k, _ in req.headers)
                    if req.authed:
                        authed_statuses[key] += 1
                    if answer.status is not None and answer.status >= 500:
                        if req.target.startswith(b"/healthz"):
                            health_when_503.append(service.health())
                        failures.append(
                            f"{answer.status} for {req.describe()}\n    answer: {answer.body[:300]!r}"
                            f"\n    engines: {service.engines.state()}"
                        )
                    if os.environ.get("KIOSK_FUZZ_DEBUG"):
                        print("DBG", key, req.describe(300), answer.body[:150])
                    if answer.outcome == "timeout":
                        failures.append(f"no answer within {REQUEST_TIMEOUT_S:g} s for {req.describe()}")

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        elapsed = time.monotonic() - started
        extra = (
            f"seed {SEED}, {sum(statuses.values())} requests in {elapsed:.1f} s "
            f"({counts['raw']} raw, {counts['aiohttp']} via aiohttp, {counts['authenticated']} authenticated staff, "
            f"{counts['framing']} with Content-Encoding, Transfer-Encoding or Expect)"
        )
        for line in tally_lines(statuses, extra):
            print(line)
        print(
            "  authenticated staff forms by status:", ", ".join(f"{k}={v}" for k, v in sorted(authed_statuses.items()))
        )

        tracebacks = []
        for r in caplog.records[first_record:]:
            if not (r.exc_info and r.levelno >= logging.ERROR and r.name.startswith(TRACEBACK_LOGGERS)):
                continue
            if from_test_server(r):  # the loopback OpenAI stand-in's own log (e.g. a synthesis the kiosk hung up on)
                continue
            where = "".join(traceback.format_exception(*r.exc_info)[-6:])[-1500:]
            tracebacks.append(f"{r.name} {r.levelname}: {r.getMessage()[:200]}\n{where}")
        replay = f" (replay: KIOSK_FUZZ_SEED={SEED})"
        assert not failures, f"{len(failures)} bad answer(s){replay}:\n" + "\n".join(failures[:20])
        assert not health_when_503, f"/healthz said 503 during the fuzz: {health_when_503[:3]}{replay}"
        assert not tracebacks, f"{len(tracebacks)} traceback(s) logged{replay}:\n" + "\n".join(tracebacks[:20])
        assert sum(statuses.values()) == REQUESTS

        # Afterwards: healthy, and a configured line still plays through ALSA.
        assert KEEP in service.cfg.phrases
        async with (
            aiohttp.ClientSession(f"http://127.0.0.1:{target.api_port}", timeout=TIMEOUT) as http,
            http.get("/healthz") as r,
        ):
            assert r.status == 200 and (await r.json())["ok"] is True
        await asyncio.wait_for(service.speaker.idle(), 30)
        played = service.play(phrase=KEEP, text=None, origin="api")
        await asyncio.wait_for(service.speaker.idle(), 15)
        assert played.state == "done", (played.summary(), service.engines.state(), list(service.events)[-8:], replay)
        assert played.trace is not None and played.trace.frames > 0
        assert alsa_file[1].stat().st_size > 0


# -- product bugs the fuzzer found (not fixed here: each pins one trigger, and passes once it is fixed)


@pytest.fixture
async def target(tmp_path, server, alsa_file):
    server.behaviour.max_audio_s = 0.2
    async with running_service(tmp_path, server, alsa_file[0]) as target:
        yield target


def _staff_raw(target: Target, method: str, path: bytes, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> Req:
    host = f"127.0.0.1:{target.staff_port}".encode()
    return Req("staff", method, path, [(b"Host", host), *headers], body, raw=True)


def _authed(target: Target, path: bytes, charset: bytes, body: bytes) -> Req:
    origin = f"http://127.0.0.1:{target.staff_port}".encode()
    return _staff_raw(
        target,
        "POST",
        path,
        [
            (b"Origin", origin),
            (b"Cookie", b"kiosk_session=" + target.session.encode()),
            (b"Content-Type", b"application/x-www-form-urlencoded; charset=" + charset),
        ],
        body,
    )


async def _status(target: Target, req: Req) -> int | None:
    async with aiohttp.ClientSession() as http:
        return (await send(http, target.staff_port, req)).status


async def test_login_page_with_an_undecodable_login_cookie(target):
    # Header bytes that are not UTF-8 reach the handler as lone surrogates ('\udcff'); _login_form puts the
    # cookie's value into the page as its CSRF token, and web.Response(text=...) cannot encode it.
    req = _staff_raw(target, "GET", b"/login", [(b"Cookie", b"kiosk_login=\xff")])
    assert await _status(target, req) == 200


async def test_login_post_with_an_undecodable_login_cookie(target):
    # common.tokens_match: hmac.compare_digest(given.encode(), expected.encode()) with expected == '\udcff'
    origin = f"http://127.0.0.1:{target.staff_port}".encode()
    req = _staff_raw(
        target,
        "POST",
        b"/login",
        [
            (b"Origin", origin),
            (b"Cookie", b"kiosk_login=\xff"),
            (b"Content-Type", b"application/x-www-form-urlencoded"),
        ],
        b"csrf=a&password=x",
    )
    assert await _status(target, req) == 403


async def test_csrf_token_with_a_lone_surrogate(target):
    # aiohttp decodes a form with whatever charset the client names; unicode_escape turns \ud800 into a lone
    # surrogate, which once reached the CSRF check's .encode(). Only UTF-8 forms are read now.
    req = _authed(target, b"/lines/add", b"unicode_escape", b"csrf=\\ud800&id=x&text=y")
    assert await _status(target, req) == 415


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        (b"/lines/add", b"&id=gold&text=\\ud800"),  # phrase_problem refuses it; lines_page shows it back
        (b"/voice", b"&engine=openai&model=\\ud800&voice=coral&speed=1"),  # ConfigError; voice_page shows it back
    ],
)
async def test_form_value_with_a_lone_surrogate_is_refused(target, path, fields):
    req = _authed(target, path, b"unicode_escape", b"csrf=" + target.csrf.encode() + fields)
    assert await _status(target, req) == 415


async def test_api_key_with_a_lone_surrogate(target):
    # utf-7 "+2AA-" decodes to '\ud800'; the settings were once saved and then the key's .encode() raised: a
    # 500 after a partial save. Refused before anything is saved now.
    body = b"csrf=" + target.csrf.encode() + b"&engine=openai&model=tts-1&voice=coral&speed=1&api_key=+2AA-"
    req = _authed(target, b"/voice", b"utf-7", body)
    assert await _status(target, req) == 415
    assert not target.service.cfg.staff.settings_file.exists()


async def test_staff_play_with_a_full_queue(tmp_path, server, alsa_file):
    server.behaviour.realtime_factor = 1.0  # each line takes its spoken length to arrive: the queue fills
    server.behaviour.max_audio_s = None
    server.behaviour.first_byte_delay_s = 2.0  # and the warm-up cannot have cached the line yet
    async with running_service(tmp_path, server, alsa_file[0], "speech:\n  queue_limit: 1\n") as target:
        origin = f"http://127.0.0.1:{target.staff_port}".encode()
        statuses = []
        for _ in range(4):
            req = _staff_raw(
                target,
                "POST",
                b"/lines/welcome/play",
                [
                    (b"Origin", origin),
                    (b"Cookie", b"kiosk_session=" + target.session.encode()),
                    (b"Content-Type", b"application/x-www-form-urlencoded"),
                ],
                b"csrf=" + target.csrf.encode(),
            )
            statuses.append(await _status(target, req))
        target.service.speaker.stop()
        assert all(s is not None and s < 500 for s in statuses), statuses


@pytest.mark.parametrize(
    ("headers", "version"),
    [
        ([], b"HTTP/1.1"),  # no Host: "Missing 'Host' header in request."
        ([(b"Host", b"127.0.0.1"), (b"Authorization", b"\x01")], b"HTTP/1.1"),  # "Invalid header value char"
    ],
)
async def test_a_malformed_request_logs_no_traceback(target, caplog, headers, version):
    # The answer is a proper 400, but web_protocol.handle_error logs "Error handling request from 127.0.0.1"
    # with the parser's exception (BadHttpMessage) at ERROR: any client can fill the journal with tracebacks.
    caplog.set_level(logging.DEBUG)
    req = Req("api", "GET", b"/healthz", headers, raw=True, version=version)
    async with aiohttp.ClientSession() as http:
        answer = await send(http, target.api_port, req)
    assert answer.status == 400
    logged = [r for r in caplog.records if r.exc_info and r.levelno >= logging.ERROR]
    assert not logged, [f"{r.name}: {r.getMessage()} ({r.exc_info[1]!r})" for r in logged]


#: Bodies that cannot be read as their headers frame or encode them: (headers, body, add Content-Length).
UNREADABLE_BODIES = {
    "deflate that is not": ([(b"Content-Encoding", b"deflate")], b"hello", True),
    "gzip that is not": ([(b"Content-Encoding", b"gzip")], b"hello", True),
    "br": ([(b"Content-Encoding", b"br")], b"hello", True),
    "gzip that is not, in chunks": (
        [(b"Content-Encoding", b"gzip"), (b"Transfer-Encoding", b"chunked")],
        b"5\r\nhello\r\n0\r\n\r\n",
        False,
    ),
    "a chunk size that is not hex": ([(b"Transfer-Encoding", b"chunked")], b"zz\r\nhello\r\n0\r\n\r\n", False),
    "a chunk without its CRLF": ([(b"Transfer-Encoding", b"chunked")], b"5\r\nhelloXX0\r\n\r\n", False),
    "chunked, then gzip": ([(b"Transfer-Encoding", b"chunked, gzip")], b"5\r\nhello\r\n0\r\n\r\n", False),
    "Content-Length and chunked": (
        [(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"15")],
        b"5\r\nhello\r\n0\r\n\r\n",
        False,
    ),
}
EMPTY_JSON = b"{}"
#: Framings a client may rightly use: (headers, body, add Content-Length, the status /api/stop answers).
READABLE_BODIES = {
    "Expect: 100-continue": ([(b"Expect", b"100-continue")], EMPTY_JSON, True, 200),
    "Expect: foo": ([(b"Expect", b"foo")], EMPTY_JSON, True, 417),
    "gzip": ([(b"Content-Encoding", b"gzip")], gzip.compress(EMPTY_JSON), True, 200),
    "deflate": ([(b"Content-Encoding", b"deflate")], zlib.compress(EMPTY_JSON), True, 200),
    "raw deflate": ([(b"Content-Encoding", b"deflate")], _raw_deflate(EMPTY_JSON), True, 200),
    "gzip, chunked": ([(b"Transfer-Encoding", b"gzip, chunked")], b"2\r\n{}\r\n0\r\n\r\n", False, 200),
    "an encoding nobody knows": ([(b"Content-Encoding", b"bogus")], EMPTY_JSON, True, 200),
}


def _body_request(target: Target, where: str, headers: list, body: bytes, length: bool) -> tuple[int, Req]:
    """A POST carrying `headers` and `body` to one of the places that read a body, as a client may send it."""
    server, path = where.split(" ")
    port = target.api_port if server == "api" else target.staff_port
    req = Req(server, "POST", path.encode(), [(b"Host", b"127.0.0.1:%d" % port)], raw=True, length=length)
    if server == "api":
        req.headers.append((b"Content-Type", b"application/json"))
    else:
        req.headers += [
            (b"Origin", b"http://127.0.0.1:%d" % port),
            (b"Cookie", b"kiosk_session=" + target.session.encode()),
        ]
        req.headers.append((b"Content-Type", b"application/x-www-form-urlencoded"))
    req.headers += headers
    req.body = body
    return port, req


async def test_a_body_that_cannot_be_read_is_a_400_on_both_servers(target, caplog):
    # Content-Encoding: deflate with data that is not deflate once gave the API a 500 and a zlib.error traceback
    # (request.read() raised it); the staff page caught it in its form reader and said 400.
    caplog.set_level(logging.DEBUG)
    statuses, answers = {}, {}
    async with aiohttp.ClientSession() as http:
        for case, (headers, body, length) in UNREADABLE_BODIES.items():
            for where in ("api /api/play", "api /api/stop", "staff /login", "staff /lines/add"):
                port, req = _body_request(target, where, headers, body, length)
                answer = await send(http, port, req)
                statuses[case, where], answers[case, where] = answer.status, answer.body[:120]
    assert statuses == dict.fromkeys(statuses, 400), answers
    logged = [r for r in caplog.records if r.exc_info and r.levelno >= logging.ERROR]
    assert not logged, [f"{r.name}: {r.getMessage()} ({r.exc_info[1]!r})" for r in logged]
    assert json.loads(answers["gzip that is not", "api /api/play"]) == {
        "error": "the request body could not be read: Can not decode content-encoding: gzip"
    }


async def test_a_body_framed_or_encoded_as_a_client_may_is_read(target, caplog):
    caplog.set_level(logging.DEBUG)
    statuses = {}
    async with aiohttp.ClientSession() as http:
        for case, (headers, body, length, _) in READABLE_BODIES.items():
            port, req = _body_request(target, "api /api/stop", headers, body, length)
            statuses[case] = (await send(http, port, req)).status
    assert statuses == {case: expected for case, (*_, expected) in READABLE_BODIES.items()}
    assert not [r for r in caplog.records if r.exc_info and r.levelno >= logging.ERROR]


async def test_a_client_hanging_up_after_expect_100_continue_logs_no_traceback(target, caplog):
    # aiohttp writes "100 Continue" before any middleware runs; to a client already gone that raised
    # ClientConnectionResetError, logged at ERROR as "Error handling request" with its traceback.
    caplog.set_level(logging.DEBUG)
    head = b"POST /api/stop HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    for _ in range(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", target.api_port)
        writer.write(head + b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n")
        writer.write_eof()
        await asyncio.wait_for(reader.read(), timeout=2)
        writer.close()
    await asyncio.sleep(0.1)  # the server's side of each hang-up
    logged = [r for r in caplog.records if r.exc_info and r.levelno >= logging.ERROR]
    assert not logged, [f"{r.name}: {r.getMessage()} ({r.exc_info[1]!r})" for r in logged]
    assert any("hung up before its 100 Continue" in r.getMessage() for r in caplog.records)


async def test_free_text_with_a_nul_under_the_piper_voice(tmp_path, server, alsa_file):
    # text_problem() (kiosk/config/phrases.py) refuses empty, over-long and unencodable text but not "\0"; PiperEngine
    # then fails with "piper: synthesis failed: embedded null character" and stream_wav answers 503 "cannot speak
    # this line now". Found by the fuzzer after it switched the voice to Piper; a staff line with a NUL is
    # accepted the same way (and fails at every press).
    async with running_service(tmp_path, server, alsa_file[0], "speech:\n  engine: piper\n") as target:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{target.api_port}/api/speech?text=Hello%00there"
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=60)) as r:
                status, body = r.status, await r.read()
        assert status < 500, (status, body[:200])


async def test_voice_change_during_a_synthesis(target, server, caplog):
    # Service.reload -> _apply closes the old engine chain (old_engines.aclose()) while a synthesis still holds
    # the old client: its request fails, OpenAIEngine retries with the captured, now closed client and gets
    # RuntimeError("Cannot send a request, as the client has been closed.") - not a SpeechError - which escapes
    # Announcer._synthesize_for_listeners: asyncio logs "Task exception was never retrieved" at ERROR. The same
    # race logs kiosk.warm "preparing a line failed" with that traceback when the old warm-up is mid-line (the
    # fuzzer hit that about once per hundred valid /voice saves).
    caplog.set_level(logging.DEBUG)
    server.behaviour.first_byte_delay_s = 1.0  # the listener's synthesis is in flight when the voice changes
    origin = f"http://127.0.0.1:{target.staff_port}".encode()
    body = b"csrf=" + target.csrf.encode() + b"&engine=openai&model=tts-1&voice=coral&speed=1.5"
    voice = _staff_raw(
        target,
        "POST",
        b"/voice",
        [
            (b"Origin", origin),
            (b"Cookie", b"kiosk_session=" + target.session.encode()),
            (b"Content-Type", b"application/x-www-form-urlencoded"),
        ],
        body,
    )
    listen = Req("api", "GET", b"/api/speech?text=A%20line%20nobody%20asked%20for%20yet", raw=True)
    listen.headers.append((b"Host", b"127.0.0.1"))
    async with aiohttp.ClientSession() as http:
        listening = asyncio.create_task(send(http, target.api_port, listen))
        await asyncio.sleep(0.3)
        assert (await send(http, target.staff_port, voice)).status == 303
        answer = await listening
        await asyncio.sleep(1.5)
    assert answer.status == 503  # "cannot speak this line now: cancelled": the voice changed under it; fair
    logged = [r for r in caplog.records if r.exc_info and r.levelno >= logging.ERROR]
    assert not logged, [f"{r.name}: {r.getMessage()} ({r.exc_info[1]!r})" for r in logged]
