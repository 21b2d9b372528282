"""The local HTTP API: trigger and stop lines, status, health and metrics. JSON in and out.

Bad input always gets a 4xx JSON answer with a message, never a 5xx: bad JSON, wrong types, unknown fields,
empty or over-long text, text that cannot be encoded, oversized or deeply nested bodies, a body that cannot be
decoded (its 400 comes from kiosk.web.server), a foreign Host or Origin, a state-changing call that is not
`application/json` (a cross-site form or `text/plain` POST cannot be). A body too slow to arrive is cut by the server
without an answer (`ConnectionLimits.request_timeout_s`); the 408 here is for an app served without that guard.
Triggers are rate-limited; the speaker's queue is bounded.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from kiosk.commands import (
    MAX_BODY_BYTES,
    CommandError,
    IdempotencyKeys,
    bad_idempotency_key,
    check_choice,
    parse_body,
    refused,
    start_field,
    string_field,
    too_many,
)
from kiosk.commands import MAX_JSON_DEPTH as MAX_JSON_DEPTH
from kiosk.commands import MAX_TEXT_CHARS as MAX_TEXT_CHARS
from kiosk.commands import json_depth as json_depth
from kiosk.errors import KioskError
from kiosk.pcm import AudioFormat, wav_stream_header
from kiosk.speaker import Rejected, Request
from kiosk.web.hosts import HostNames
from kiosk.web.server import ConnectionLimits

log = logging.getLogger(__name__)

BODY_TIMEOUT_S = ConnectionLimits().body_timeout_s

#: The rules and wording are shared with MQTT and OSC (kiosk.commands); over HTTP the status is the status code.
ApiError = CommandError


class Backend(Protocol):
    """What the API needs of the speaker: the part of kiosk.app.App it uses (its tests' fakes implement it)."""

    def play(
        self, *, phrase: str | None, text: str | None, origin: str, language: str | None = None, at: float | None = None
    ) -> Request: ...
    def line_text(
        self, *, phrase: str | None, text: str | None, language: str | None = None
    ) -> tuple[str, str | None]: ...
    async def listen(self, text: str, language: str | None = None) -> tuple[AudioFormat, AsyncIterator[bytes]]: ...
    def stop_speaking(self) -> bool: ...
    def find(self, request_id: str) -> Request | None: ...
    async def status(self) -> dict: ...
    def health(self) -> tuple[bool, str]: ...
    def metrics_text(self) -> tuple[bytes, str]: ...
    @property
    def api_token(self) -> str | None: ...
    def allow_trigger(self) -> float | None: ...
    async def history_rows(self, days: int) -> list[dict]: ...
    async def history_csv(self, days: int) -> str: ...


BACKEND = web.AppKey("backend", Backend)
IDEMPOTENCY = web.AppKey("idempotency", "IdempotencyKeys")
HOSTS = web.AppKey("hosts", HostNames)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_app(backend: Backend, hosts: HostNames | None = None) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_json_errors, _known_host, _bearer_token])
    app[BACKEND] = backend
    app[HOSTS] = hosts or HostNames()
    app[IDEMPOTENCY] = IdempotencyKeys()
    app.router.add_post("/api/play", play)
    app.router.add_get("/api/play/{id}", playback)
    app.router.add_post("/api/stop", stop)
    app.router.add_get("/api/speech", speech)
    app.router.add_get("/api/status", status)
    app.router.add_get("/api/history", history)
    app.router.add_get("/api/history.csv", history_csv)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers, dumps=lambda o: json.dumps(o, default=str))


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return _json(exc.status, {"error": str(exc)}, exc.headers)
    except web.HTTPException as exc:  # 404, 405, 413 from aiohttp itself: same JSON shape
        if exc.status < 400:
            raise
        default = exc.text is None or exc.text == f"{exc.status}: {exc.reason}"
        message = "request body too large" if exc.status == 413 else exc.reason.lower() if default else exc.text
        return _json(exc.status, {"error": message}, {k: v for k, v in exc.headers.items() if k == "Allow"})


@web.middleware
async def _known_host(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a Host that does not name this device (DNS rebinding) and, for calls that change something, a
    foreign browser Origin or a body that is not JSON (which a cross-site page could send without asking)."""
    hosts = request.app[HOSTS]
    if not hosts.allows_host(request.headers.get("Host")):
        raise ApiError(421, "this device does not answer to that host name (see hostnames in kiosk.yaml)")
    if request.method == "POST":
        if not hosts.allows_origin(request.headers.get("Origin")):
            raise ApiError(403, "cross-site request refused")
        if request.content_type != "application/json":
            raise ApiError(415, "send the body as JSON with Content-Type: application/json")
    return await handler(request)


@web.middleware
async def _bearer_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[BACKEND].api_token
    if token and request.path.startswith("/api/"):
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise ApiError(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
    return await handler(request)


async def _body(request: web.Request, allowed: set[str]) -> dict:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(413, "request body too large")
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            raw = await request.read()
    except TimeoutError:
        raise ApiError(408, f"the body did not arrive within {BODY_TIMEOUT_S:g} s") from None
    return parse_body(raw, allowed)


async def play(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    body = await _body(request, {"phrase", "text", "language", "at"})
    phrase, text, language = string_field(body, "phrase"), string_field(body, "text"), string_field(body, "language")
    at = start_field(body)  # a start time, Unix seconds (kiosk.in_step)
    check_choice(phrase, text)
    idempotency = request.app[IDEMPOTENCY]
    key = _idempotency_key(request)
    if key is not None:
        earlier = idempotency.get(key, (phrase, text, language))
        if earlier is not None:
            return _json(202, earlier, {"Idempotent-Replayed": "true"})
    retry_after = backend.allow_trigger()
    if retry_after is not None:
        raise too_many(retry_after)
    try:
        req = backend.play(
            phrase=phrase, text=text, origin="api", language=language, **({} if at is None else {"at": at})
        )
    except Rejected as exc:
        raise refused(exc) from None
    answer = {"id": req.id, "state": req.state, **({"language": req.language} if req.language else {})}
    if key is not None:
        idempotency.put(key, (phrase, text, language), answer)
    return _json(202, answer)


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if bad_idempotency_key(key):
        raise ApiError(400, "Idempotency-Key must be 1 to 255 printable characters")
    return key


async def speech(request: web.Request) -> web.StreamResponse:
    """The line as WAV, streamed while it is synthesized (from the cache when it is there)."""
    backend = request.app[BACKEND]
    unknown = sorted(set(request.query) - {"phrase", "text", "language"})
    if unknown:
        raise ApiError(400, f"unknown parameter(s): {', '.join(unknown)}; allowed: phrase, text, language")
    phrase, text = request.query.get("phrase"), request.query.get("text")
    check_choice(phrase, text)
    try:
        line, language = backend.line_text(phrase=phrase, text=text, language=request.query.get("language"))
    except Rejected as exc:
        raise refused(exc) from None
    retry_after = backend.allow_trigger()
    if retry_after is not None:
        raise too_many(retry_after)
    return await stream_wav(request, backend, line, language)


async def stream_wav(request: web.Request, backend: Any, line: str, language: str | None = None) -> web.StreamResponse:
    """Send `line` as a WAV stream; the synthesis goes on (and is cached) if the listener leaves early."""
    try:
        fmt, chunks = await backend.listen(line, language)
    except KioskError as exc:
        raise web.HTTPServiceUnavailable(text=f"cannot speak this line now: {exc}") from None
    return await send_wav(request, fmt, chunks)


async def send_wav(request: web.Request, fmt: AudioFormat, chunks: AsyncIterator[bytes]) -> web.StreamResponse:
    """Stream PCM chunks as one WAV; a listener who leaves early is not an error.

    A line that cannot be finished (the chunks raise KioskError) breaks the response off: the connection is closed
    after what was sent, without the final chunk, so the listener's client (the staff page's fetch, curl, an HTTP
    library) reports an incomplete body instead of playing a short line as if it were whole. The WAV header cannot
    say it either way: it went out before the length was known."""
    response = web.StreamResponse(
        headers={
            "Content-Type": "audio/wav",
            "Content-Disposition": "inline",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # proxies must pass each chunk on at once
        }
    )
    try:
        await response.prepare(request)
        await response.write(wav_stream_header(fmt))
        async for chunk in chunks:
            await response.write(chunk)
        await response.write_eof()
    except ConnectionResetError:  # the listener left early: not an error; the line is still finished and cached
        log.debug("a listener left before the end of the line")
    except KioskError as exc:
        log.warning("a listener got only part of a line: %s", exc)
        _break_off(request)
    return response


def _break_off(request: web.Request) -> None:
    """End the response without its final chunk: close (not abort), so the audio already written still arrives.
    aiohttp then finds the transport closing and writes nothing more."""
    if request.transport is not None:
        request.transport.close()


async def playback(request: web.Request) -> web.Response:
    req = request.app[BACKEND].find(request.match_info["id"])
    if req is None:
        raise ApiError(404, "no such playback (only the most recent ones are kept)")
    return _json(200, {**req.summary(), "trace": req.trace.__dict__ if req.trace else None})


async def stop(request: web.Request) -> web.Response:
    await _body(request, set())
    return _json(200, {"stopped": request.app[BACKEND].stop_speaking()})


async def status(request: web.Request) -> web.Response:
    return _json(200, await request.app[BACKEND].status())


async def history(request: web.Request) -> web.Response:
    """Every press and trigger of the last `days` days (default 30) with its outcome, oldest first."""
    return _json(200, await request.app[BACKEND].history_rows(history_days(request.query)))


async def history_csv(request: web.Request) -> web.Response:
    days = history_days(request.query)
    body = await request.app[BACKEND].history_csv(days)
    disposition = f'attachment; filename="kiosk-history-{days}-days.csv"'
    return web.Response(text=body, content_type="text/csv", headers={"Content-Disposition": disposition})


def history_days(query) -> int:
    """`?days=N`, 1 to 3650 (default 30); anything else is a 400."""
    unknown = sorted(set(query) - {"days"})
    if unknown:
        raise ApiError(400, f"unknown parameter(s): {', '.join(unknown)}; allowed: days")
    raw = query.get("days", "30")
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 4 and 1 <= int(raw) <= 3650):
        raise ApiError(400, "'days' must be a whole number from 1 to 3650")
    return int(raw)


async def healthz(request: web.Request) -> web.Response:
    ok, problem = request.app[BACKEND].health()
    return _json(200 if ok else 503, {"ok": ok, "problem": problem or None})


async def metrics(request: web.Request) -> web.Response:
    body, content_type = await asyncio.to_thread(request.app[BACKEND].metrics_text)  # counts cache files: off the loop
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response
