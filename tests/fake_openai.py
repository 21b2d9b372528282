"""An OpenAI-compatible text-to-speech server on loopback, for tests that drive the real `openai` SDK.

Mocking the SDK would hide exactly the things the speaker must survive: chunked bodies split at odd byte
counts, a slow first byte, stalls, connections cut mid-body, rate limits with Retry-After. This server speaks
real HTTP so those arrive through the SDK's own transport, the way they would on the museum's Wi-Fi.

    async with FakeOpenAI() as server:
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="test-key", max_retries=0)
        server.behaviour.chunk_sizes = [1, 3, 7]
        ...

Tests change `server.behaviour` between requests and read `server.requests` afterwards. The audio for a text
is deterministic, so `pcm_for(text)` says exactly which bytes a complete answer carries. Every wait inside
the server ends by itself or when `stop()` is called, so a misbehaving test cannot hang the suite.

Run as a script, it serves until killed: `python tests/fake_openai.py --port 0 --realtime-factor 1`.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from aiohttp import web
from multidict import CIMultiDict  # installed with aiohttp, which uses it for headers

SAMPLE_RATE = 24_000
SAMPLE_WIDTH = 2
CHANNELS = 1
BYTES_PER_SECOND = SAMPLE_RATE * SAMPLE_WIDTH * CHANNELS
#: The real API rejects longer input; mirroring it catches callers that forget to split.
MAX_INPUT_CHARS = 4096
MODELS = ("gpt-4o-mini-tts", "tts-1", "tts-1-hd")

_FADE_S = 0.005
#: A line's peak, as a share of full scale: 0.19 puts every line's loudness within 0.5 LU of kiosk's default
#: target (-18 LUFS), so that kiosk stores and plays it byte for byte as sent (tests compare the bytes).
AMPLITUDE = 0.19
_FLUSH_LIMIT_S = 1.0
_STOP_GRACE_S = 2.0


# --- audio ----------------------------------------------------------------------------------------------


def pcm_for(
    text: str,
    *,
    ms_per_char: float = 60.0,
    min_audio_s: float = 0.2,
    max_audio_s: float | None = None,
    amplitude: float = AMPLITUDE,
) -> bytes:
    """The exact PCM (s16le, mono, 24 kHz) the server sends for `text` with these knobs.

    Length grows with the text like speech does (so long lines really take longer), pitch comes from a hash
    of the text (so different lines are audibly and byte-wise different). Pass the same knobs the server's
    `Behaviour` has, or use `Behaviour.audio_for`.
    """
    seconds = max(min_audio_s, len(text) * ms_per_char / 1000)
    if max_audio_s is not None:
        seconds = min(seconds, max_audio_s)
    return _tone(text, max(0, round(seconds * SAMPLE_RATE)), amplitude)


@lru_cache(maxsize=256)
def _tone(text: str, frames: int, amplitude: float) -> bytes:
    """A sine tone with short fades (no clicks in demos), cached because tests ask for the same text twice."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    frequency = 220 + int.from_bytes(digest[:2], "little") % 660
    step = 2 * math.pi * frequency / SAMPLE_RATE
    fade = max(1, round(_FADE_S * SAMPLE_RATE))
    samples = array.array("h", (_sample(n, frames, step, fade, amplitude * 32767) for n in range(frames)))
    if sys.byteorder == "big":
        samples.byteswap()
    return samples.tobytes()


def spoken_words(text: str, amplitude: float = AMPLITUDE) -> tuple[bytes, list[int]]:
    """Audio shaped like speech for `text`, and the frame each word starts at: a voiced burst per word (longer for a
    longer word, a digit read out as a word, each length drawn ±25 % from a seed of the text), a gap of 30-90 ms
    between words, 250-380 ms after a comma and 450-650 ms after a sentence. For measuring captions against known
    word times."""
    rng = random.Random(hashlib.sha256(text.encode("utf-8")).digest())
    samples, starts = array.array("h", bytes(2 * round(0.12 * SAMPLE_RATE))), []
    peak, fade = amplitude * 32767, round(0.008 * SAMPLE_RATE)
    for word in text.split():
        starts.append(len(samples))
        letters = sum(c.isalpha() for c in word) + 4 * sum(c.isdigit() for c in word)  # "1921": nineteen twenty-one
        frames = round((0.07 + 0.055 * letters) * rng.uniform(0.75, 1.25) * SAMPLE_RATE)
        pitch = 2 * math.pi * rng.uniform(140, 260) / SAMPLE_RATE
        samples.extend(
            round(
                peak
                * min(1.0, n / fade, (frames - 1 - n) / fade)
                * (0.7 * math.sin(pitch * n) + 0.3 * math.sin(3 * pitch * n))
            )
            for n in range(frames)
        )
        end = word.rstrip("\"')»”’")[-1:]
        gap = (
            rng.uniform(0.45, 0.65)
            if end in ".!?"
            else rng.uniform(0.25, 0.38)
            if end in ",;:"
            else rng.uniform(0.03, 0.09)
        )
        samples.extend(bytes(2 * round(gap * SAMPLE_RATE)))
    if sys.byteorder == "big":
        samples.byteswap()
    return samples.tobytes(), starts


def _sample(n: int, frames: int, step: float, fade: int, peak: float) -> int:
    envelope = min(1.0, n / fade, (frames - 1 - n) / fade)
    return round(peak * envelope * math.sin(step * n))


# --- behaviour and records ------------------------------------------------------------------------------


@dataclass
class Behaviour:
    """How the server answers the next speech requests. Tests mutate it between requests.

    The defaults give a fast, well-behaved server. Fields are read when a request arrives, except the
    streaming ones (chunks, pacing, stall, cut, endless), which are fixed when its body starts.
    """

    headers_delay_s: float = 0.0  # before the response headers (or error) are sent
    first_byte_delay_s: float = 0.0  # headers go out at once; the first audio byte waits this long
    chunk_sizes: list[int] | None = field(default_factory=lambda: [4096])  # cycled; None = one chunk
    realtime_factor: float | None = None  # 1.0 = audio arrives as fast as it plays; None = no pacing
    stall_after_bytes: int | None = None  # pause once after exactly this many body bytes
    stall_at_fraction: float | None = None  # or after this fraction of the audio (0.5: mid-line)
    stall_s: float = 1.0
    jitter_s: float = 0.0  # the first byte and each paced chunk (or burst) move by up to ± this much
    burst_every_s: float | None = None  # paced chunks are held and sent together every this often
    seed: int = 0  # jitter is drawn from it, so a seed replays the same arrival pattern
    cut_after_bytes: int | None = None  # abort the connection after this many body bytes (no clean end)
    endless: bool = False  # a runaway stream: the line's audio again and again until the client hangs up (pace it)
    hang: bool = False  # read the request, then never answer until stop()
    status: int | None = None  # answer with this HTTP error status and an OpenAI-style error body
    error_code: str | None = None
    error_message: str | None = None
    retry_after: str | None = None  # Retry-After header on error answers
    fail_times: int = 0  # >0: only the first `fail_times` requests get `status`, later ones succeed
    api_key: str | None = None  # if set, other bearer tokens get 401 invalid_api_key
    models_status: int | None = None  # the models listing answers with this error status (and error_code)
    chat_reply: str | None = None  # a chat completion's message content (None: translations of what was asked)
    ms_per_char: float = 60.0
    min_audio_s: float = 0.2
    max_audio_s: float | None = None
    amplitude: float = AMPLITUDE  # each line's peak, as a share of full scale
    voice: str = "tone"  # "tone": one tone per line (pcm_for); "words": a burst per word (spoken_words)
    errors_served: int = 0  # how many forced errors went out; counts against `fail_times`

    def audio_for(self, text: str) -> bytes:
        """The audio this behaviour produces for `text`."""
        if self.voice == "words":
            return spoken_words(text, self.amplitude)[0]
        return pcm_for(
            text,
            ms_per_char=self.ms_per_char,
            min_audio_s=self.min_audio_s,
            max_audio_s=self.max_audio_s,
            amplitude=self.amplitude,
        )

    def take_forced_error(self) -> bool:
        """Whether this request gets the configured error; counts it, so `fail_times` can run out."""
        if self.status is None or (self.fail_times > 0 and self.errors_served >= self.fail_times):
            return False
        self.errors_served += 1
        return True


@dataclass
class RecordedRequest:
    """One request as the server saw it, plus how its answer ended (for asserting on client behaviour)."""

    method: str
    path: str
    headers: CIMultiDict[str]  # case-insensitive: headers["authorization"] works
    body: Any  # parsed JSON, or None if the body was not JSON
    received_at: float  # time.monotonic() when the request arrived
    bytes_sent: int = 0  # audio bytes written so far
    outcome: str = "pending"  # complete | cut | error | client_disconnected | stopped | pending

    @property
    def authorization(self) -> str | None:
        return self.headers.get("Authorization")


# --- the server -----------------------------------------------------------------------------------------


class FakeOpenAI:
    """The aiohttp server. `await start()` / `await stop()`, or `async with FakeOpenAI() as server:`."""

    def __init__(
        self,
        behaviour: Behaviour | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        profiles: dict[str, Behaviour] | None = None,
    ) -> None:
        self.behaviour = behaviour or Behaviour()
        self.profiles = profiles or {}  # served under /profiles/NAME/SEED/v1, each request with its own seed
        self.requests: list[RecordedRequest] = []  # speech requests only, in arrival order
        self.model_requests: list[RecordedRequest] = []  # GET /v1/models, kept apart so counts stay simple
        self.chat_requests: list[RecordedRequest] = []  # POST /v1/chat/completions (translation drafts)
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None
        self._stopping: asyncio.Event | None = None
        self._request_ids = itertools.count(1)

    @property
    def url(self) -> str:
        if self._bound_port is None:
            raise RuntimeError("FakeOpenAI is not started")
        return f"http://{self._host}:{self._bound_port}"

    async def start(self) -> FakeOpenAI:
        """Bind (port 0 = any free port) and serve; returns self so `server = await FakeOpenAI().start()`."""
        if self._runner is not None:
            raise RuntimeError("FakeOpenAI is already started")
        self._stopping = asyncio.Event()
        runner = web.AppRunner(self._make_app(), access_log=None, shutdown_timeout=_STOP_GRACE_S)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._bound_port = runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        """Stop serving. Wakes hanging, stalled and delayed handlers first, so this returns promptly."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        assert self._stopping is not None
        self._stopping.set()
        await asyncio.wait_for(runner.cleanup(), timeout=_STOP_GRACE_S + 3)

    async def __aenter__(self) -> FakeOpenAI:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _make_app(self) -> web.Application:
        app = web.Application()
        for prefix in ("", "/profiles/{profile}/{seed:\\d+}"):
            app.router.add_post(f"{prefix}/v1/audio/speech", self._speech)
            app.router.add_get(f"{prefix}/v1/models", self._models)
            app.router.add_post(f"{prefix}/v1/chat/completions", self._chat)
        return app

    def _behaviour_for(self, request: web.Request) -> Behaviour | None:
        """`self.behaviour`, or a named profile when the base URL is .../profiles/NAME/SEED/v1 (None: unknown)."""
        name = request.match_info.get("profile")
        if name is None:
            return self.behaviour
        if name not in self.profiles:
            return None
        return dataclasses.replace(self.profiles[name], seed=int(request.match_info["seed"]))

    # --- handlers ---

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        record = await _record(request, self.requests)
        behaviour = self._behaviour_for(request)
        if behaviour is None:
            record.outcome = "error"
            known = ", ".join(sorted(self.profiles))
            return self._error(
                404, "not_found", f"no network profile {request.match_info['profile']!r}; known: {known}"
            )
        if behaviour.hang:
            return await self._hang(request, record)
        if not await self._pause(behaviour.headers_delay_s):
            return _drop(request, record, "stopped")
        refusal = self._refusal(request, record, behaviour)
        if refusal is not None:
            return refusal
        return await self._stream(request, record, behaviour)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        """A chat completion as the real API shapes it. Asked (as kiosk asks) for a JSON object of translations of
        {"text", "languages": {code: name}}, it answers "[code] text" for each language, or `Behaviour.chat_reply`
        as the message content when a test sets one."""
        record = await _record(request, self.chat_requests)
        behaviour = self.behaviour
        refusal = self._auth_refusal(record, behaviour)
        if refusal is None and behaviour.take_forced_error():
            record.outcome = "error"
            refusal = self._error(behaviour.status, behaviour.error_code, behaviour.error_message)
        if refusal is not None:
            return refusal
        content = behaviour.chat_reply
        if content is None:
            asked = json.loads(record.body["messages"][-1]["content"])
            content = json.dumps({code: f"[{code}] {asked['text']}" for code in asked["languages"]}, ensure_ascii=False)
        record.outcome = "complete"
        choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
        answer = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 0,
            "model": record.body.get("model", "fake"),
            "choices": [choice],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
        return web.json_response(answer, headers=self._id_header())

    async def _models(self, request: web.Request) -> web.StreamResponse:
        record = await _record(request, self.model_requests)
        behaviour = self.behaviour
        refusal = self._auth_refusal(record, behaviour)
        if refusal is not None:
            return refusal
        if behaviour.models_status is not None:
            record.outcome = "error"
            return self._error(behaviour.models_status, behaviour.error_code, behaviour.error_message)
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "fake-openai"} for name in MODELS]
        record.outcome = "complete"
        return web.json_response({"object": "list", "data": data}, headers=self._id_header())

    async def _hang(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        """Never answer; `stop()` sets the event, so even this wait is bounded by the test's teardown."""
        assert self._stopping is not None
        await self._stopping.wait()
        return _drop(request, record, "stopped")

    def _refusal(self, request: web.Request, record: RecordedRequest, behaviour: Behaviour) -> web.Response | None:
        """The error answer for this request, if any: forced by the test, bad credentials, or a bad body."""
        if behaviour.take_forced_error():
            assert behaviour.status is not None
            record.outcome = "error"
            return self._error(behaviour.status, behaviour.error_code, behaviour.error_message, behaviour.retry_after)
        refusal = self._auth_refusal(record, behaviour)
        if refusal is not None:
            return refusal
        problem = _invalid_speech_body(record.body)
        if problem is not None:
            record.outcome = "error"
            return self._error(400, None, problem)
        return None

    def _auth_refusal(self, record: RecordedRequest, behaviour: Behaviour) -> web.Response | None:
        """401 like the real API: no bearer token at all, or not the one the test configured."""
        scheme, _, token = (record.authorization or "").partition(" ")
        if scheme != "Bearer" or not token:
            record.outcome = "error"
            return self._error(401, None, "You didn't provide an API key.")
        if behaviour.api_key is not None and token != behaviour.api_key:
            record.outcome = "error"
            return self._error(401, "invalid_api_key", "Incorrect API key provided.")
        return None

    def _error(
        self, status: int, code: str | None, message: str | None = None, retry_after: str | None = None
    ) -> web.Response:
        """An OpenAI-style error body, which the SDK turns into the matching `openai.APIStatusError` subclass."""
        error = {
            "message": message or f"fake error {status}",
            "type": _error_type(status, code),
            "param": None,
            "code": code,
        }
        headers = self._id_header()
        if retry_after is not None:
            headers["Retry-After"] = retry_after
        return web.json_response({"error": error}, status=status, headers=headers)

    def _id_header(self) -> dict[str, str]:
        """The SDK reads x-request-id into `.request_id`; a unique one helps when reading failures."""
        return {"x-request-id": f"req_fake_{next(self._request_ids)}"}

    # --- streaming ---

    async def _stream(self, request: web.Request, record: RecordedRequest, behaviour: Behaviour) -> web.StreamResponse:
        """200 with a chunked body and no Content-Length, like the real API streams speech."""
        audio = behaviour.audio_for(record.body["input"])
        response = web.StreamResponse(status=200, headers={"Content-Type": "audio/pcm", **self._id_header()})
        response.enable_chunked_encoding()
        await response.prepare(request)  # aiohttp sends StreamResponse headers right away
        try:
            record.outcome = await _Delivery(self._pause, response, audio, behaviour, record).run()
        except ConnectionError:
            record.outcome = "client_disconnected"
        if record.outcome != "complete":
            await _abort_after_flush(request)
        return response

    async def _pause(self, seconds: float) -> bool:
        """Sleep, but wake at once on stop(). Returns False if the server is stopping."""
        assert self._stopping is not None
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        return not self._stopping.is_set()


class _Delivery:
    """Writes one audio body: chunk sizes, first-byte delay, pacing, one stall, and a cut, as configured."""

    def __init__(
        self,
        pause: Callable[[float], Awaitable[bool]],
        response: web.StreamResponse,
        audio: bytes,
        behaviour: Behaviour,
        record: RecordedRequest,
    ) -> None:
        self._pause = pause  # the server's stop-aware sleep
        self._response = response
        self._audio = audio
        self._record = record
        self._jitter = _Jitter(behaviour.seed, behaviour.jitter_s)
        self._first_byte_delay_s = max(0.0, behaviour.first_byte_delay_s + self._jitter("first byte", 0))
        self._sizes = itertools.cycle(_chunk_sizes(behaviour.chunk_sizes, len(audio)))
        self._bytes_per_s = None if behaviour.realtime_factor is None else BYTES_PER_SECOND * behaviour.realtime_factor
        self._burst_every_s = behaviour.burst_every_s
        self._chunks_sent = 0
        self._stall_at = behaviour.stall_after_bytes
        if behaviour.stall_at_fraction is not None:
            self._stall_at = int(len(audio) * behaviour.stall_at_fraction)
        self._stall_s = behaviour.stall_s
        self._cut = behaviour.cut_after_bytes
        self._endless = behaviour.endless and bool(audio)
        length = math.inf if self._endless else len(audio)
        self._limit = length if self._cut is None else max(0, min(self._cut, length))
        self._sent = 0
        self._started = 0.0  # when the first byte went out, shifted by the stall

    async def run(self) -> str:
        """Send the body; returns the outcome ("complete", "cut" or "stopped")."""
        if not await self._pause(self._first_byte_delay_s):
            return "stopped"
        self._started = time.monotonic()
        while True:
            if self._stall_due() and not await self._stall():
                return "stopped"
            if self._sent >= self._limit:
                return "complete" if self._cut is None else "cut"
            if not await self._pause(self._pacing_wait()):
                return "stopped"
            await self._send_chunk()

    def _stall_due(self) -> bool:
        return self._stall_at is not None and self._sent >= self._stall_at

    async def _stall(self) -> bool:
        """Pause once; pacing resumes from where it was, as if the server's clock stopped too."""
        self._stall_at = None
        stalled_from = time.monotonic()
        carry_on = await self._pause(self._stall_s)
        self._started += time.monotonic() - stalled_from
        return carry_on

    def _pacing_wait(self) -> float:
        """How long until the next chunk is due, so audio arrives at `realtime_factor` times playback speed.

        With bursts, a chunk waits for the next burst at or after its due time; jitter moves each chunk, or each
        burst as a whole. A chunk is never sent before the one ahead of it, so jitter can bunch chunks together.
        """
        if self._bytes_per_s is None:
            return 0.0
        due = self._sent / self._bytes_per_s
        if self._burst_every_s:
            burst = math.ceil(round(due / self._burst_every_s, 9))
            due = burst * self._burst_every_s + self._jitter("burst", burst)
        else:
            due += self._jitter("chunk", self._chunks_sent)
        return self._started + due - time.monotonic()

    async def _send_chunk(self) -> None:
        """One write = one HTTP chunk; it never crosses the stall or cut point, so those land on exact bytes."""
        end = min(self._sent + next(self._sizes), self._limit)
        if self._stall_at is not None and self._stall_at > self._sent:
            end = min(end, self._stall_at)
        await self._response.write(self._slice(self._sent, end))
        self._sent = end
        self._chunks_sent += 1
        self._record.bytes_sent = end

    def _slice(self, start: int, end: int) -> bytes:
        """Bytes start..end of the body: for an endless one, of the line's audio repeated."""
        if not self._endless:
            return self._audio[start:end]
        body = bytearray()
        while start < end:
            piece = self._audio[start % len(self._audio) :][: end - start]
            body += piece
            start += len(piece)
        return bytes(body)


class _Jitter:
    """A reproducible offset within ±`spread_s` for each (kind, index): the same seed gives the same pattern."""

    def __init__(self, seed: int, spread_s: float) -> None:
        self._seed = seed
        self._spread_s = spread_s

    def __call__(self, kind: str, index: int) -> float:
        if not self._spread_s:
            return 0.0
        return random.Random(f"{self._seed}:{kind}:{index}").uniform(-self._spread_s, self._spread_s)


# --- helpers --------------------------------------------------------------------------------------------


async def _record(request: web.Request, into: list[RecordedRequest]) -> RecordedRequest:
    """Note the arrival time before reading the body, so delays measured by tests include the upload."""
    received_at = time.monotonic()
    try:
        body = await request.json()
    except ValueError:
        body = None
    record = RecordedRequest(request.method, request.path, CIMultiDict(request.headers), body, received_at)
    into.append(record)
    return record


def _invalid_speech_body(body: Any) -> str | None:
    """Why the real API would reject this body with a 400 (roughly), or None if it is fine."""
    if not isinstance(body, dict):
        return "We could not parse the JSON body of your request."
    for name in ("model", "voice", "input"):
        if not isinstance(body.get(name), str):
            return f"Missing required parameter: '{name}'."
    if len(body["input"]) > MAX_INPUT_CHARS:
        return f"'input' is too long: {len(body['input'])} > {MAX_INPUT_CHARS} characters."
    if body.get("response_format") != "pcm":
        return "This fake server only produces response_format 'pcm'."
    if body.get("stream_format", "audio") != "audio":
        return "This fake server only supports stream_format 'audio'."
    speed = body.get("speed", 1.0)
    if isinstance(speed, bool) or not isinstance(speed, int | float) or not 0.25 <= speed <= 4.0:
        return "'speed' must be a number from 0.25 to 4.0."
    return None


def _error_type(status: int, code: str | None) -> str:
    """The `type` field the real API uses for this status."""
    if status == 429:
        return "insufficient_quota" if code == "insufficient_quota" else "requests"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def _chunk_sizes(sizes: list[int] | None, audio_length: int) -> list[int]:
    if sizes is None:
        return [max(1, audio_length)]
    if not sizes or any(size < 1 for size in sizes):
        raise ValueError(f"chunk_sizes must be positive, got {sizes!r}")
    return list(sizes)


def _drop(request: web.Request, record: RecordedRequest, outcome: str) -> web.StreamResponse:
    """Close the connection without an answer; aiohttp then finds the transport gone and writes nothing."""
    record.outcome = outcome
    if request.transport is not None:
        request.transport.abort()
    return web.Response()


async def _abort_after_flush(request: web.Request) -> None:
    """Abort the connection (no final chunk), after the bytes already written have left the buffer.

    abort() discards buffered data; waiting for the buffer to drain makes "cut after N bytes" mean the
    client can really receive N bytes. The wait is bounded in case the client stopped reading.
    """
    transport = request.transport
    if transport is None:
        return
    deadline = time.monotonic() + _FLUSH_LIMIT_S
    while not transport.is_closing() and transport.get_write_buffer_size() and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    transport.abort()


# --- running in a thread, or as a process -----------------------------------------------------------------


class ThreadedFakeOpenAI:
    """FakeOpenAI on its own event loop in a daemon thread, for synchronous tests.

    Set `behaviour` before making requests; the lists are appended to from the server thread.
    """

    def __init__(self, behaviour: Behaviour | None = None, *, timeout_s: float = 10.0, **server_options: Any) -> None:
        self.server = FakeOpenAI(behaviour, **server_options)  # host, port, profiles
        self._timeout_s = timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def behaviour(self) -> Behaviour:
        return self.server.behaviour

    @behaviour.setter
    def behaviour(self, value: Behaviour) -> None:
        self.server.behaviour = value

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.server.requests

    @property
    def model_requests(self) -> list[RecordedRequest]:
        return self.server.model_requests

    def start(self) -> ThreadedFakeOpenAI:
        if self._thread is not None:
            raise RuntimeError("ThreadedFakeOpenAI is already started")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=_run_loop, args=(self._loop,), name="fake-openai", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(self._timeout_s)
        except BaseException:
            self._end_thread()
            raise
        return self

    def stop(self) -> None:
        """Stop the server, then its loop and thread; each step bounded by `timeout_s`."""
        if self._loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(self._timeout_s)
        finally:
            self._end_thread()

    def _end_thread(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(self._timeout_s)

    def __enter__(self) -> ThreadedFakeOpenAI:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve a fake OpenAI text-to-speech API until killed.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on startup)")
    parser.add_argument("--headers-delay-s", type=float, default=0.0)
    parser.add_argument("--first-byte-delay-s", type=float, default=0.0)
    parser.add_argument("--realtime-factor", type=float, default=None)
    parser.add_argument("--chunk-sizes", type=_int_list, default=[4096], help="comma-separated, e.g. 1,3,4096")
    parser.add_argument("--max-audio-s", type=float, default=None)
    return parser.parse_args(argv)


def _int_list(text: str) -> list[int]:
    sizes = [int(part) for part in text.split(",") if part.strip()]
    if not sizes or any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError("expected positive integers like 1,3,4096")
    return sizes


async def _serve(host: str, port: int, behaviour: Behaviour) -> None:
    """Serve until SIGINT/SIGTERM, then stop cleanly (SIGKILL is fine too: there is nothing to save)."""
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, done.set)
    async with FakeOpenAI(behaviour, host=host, port=port) as server:
        print(f"listening on {server.url}", flush=True)
        await done.wait()


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    behaviour = Behaviour(
        headers_delay_s=args.headers_delay_s,
        first_byte_delay_s=args.first_byte_delay_s,
        realtime_factor=args.realtime_factor,
        chunk_sizes=args.chunk_sizes,
        max_audio_s=args.max_audio_s,
    )
    asyncio.run(_serve(args.host, args.port, behaviour))
    return 0


if __name__ == "__main__":
    sys.exit(main())
