"""OpenAI text-to-speech, streamed as raw PCM. The only module that imports `openai` (and its `httpx2`).

The SDK is imported at its first use, in a worker thread: it costs about 23 MB and 0.4 s (several seconds on a
Pi), and a speaker whose lines are all in the phrase cache never needs it. The reachability check is a plain
GET /models through aiohttp, which the service has loaded anyway. `preload()` imports it ahead of need, for
speakers that take free text.

The SDK's defaults (600 s timeout, 2 blind retries) suit a batch job, not a visitor waiting at a button, so
every deadline is explicit: connect, first audio byte (which also bounds all retries), gap between chunks and
the whole request. A request is retried only before its first audio byte: after that, a retry would repeat
words the visitor has already heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from types import ModuleType
from typing import TYPE_CHECKING

import aiohttp

from kiosk.config import OpenAIConfig
from kiosk.errors import SpeechError
from kiosk.pcm import OPENAI_PCM
from kiosk.speech import AudioCallback
from kiosk.speech.text import split_text

if TYPE_CHECKING:
    import openai

log = logging.getLogger(__name__)

#: The speech API rejects input longer than this.
API_TEXT_LIMIT = 4096
#: The speeds the speech API takes.
MIN_SPEED, MAX_SPEED = 0.25, 4.0
#: The speech API's voices and models, as the staff page offers them (kiosk.yaml may name others, for an
#: OpenAI-compatible server that has them).
VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse")
MODELS = ("gpt-4o-mini-tts", "tts-1", "tts-1-hd")
_BACKOFF_S = (0.2, 0.5, 1.0, 2.0)
PUBLIC_API = "https://api.openai.com/v1"
NO_KEY_HINT = "or install the local voice: pip install 'kiosk[piper]'"
#: How much of an error answer to the reachability check is read.
_PROBE_BODY_LIMIT = 65536


def _sdk() -> ModuleType:
    """The openai SDK (imported once; afterwards a dictionary lookup)."""
    import openai  # here, not at the top: see the module docstring

    return openai


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class OpenAIEngine:
    name = "openai"
    on_device = False
    fmt = OPENAI_PCM

    def __init__(self, cfg: OpenAIConfig, api_key: str | None, *, offline_hint: str = NO_KEY_HINT):
        self._cfg = cfg
        self._api_key = api_key
        self._offline_hint = offline_hint  # how to speak without a key, said when there is none
        self._client: openai.AsyncOpenAI | None = None
        if api_key and "openai" in sys.modules:  # building it takes tens of ms a visitor should not wait for
            self._client = _new_client(_sdk(), cfg, api_key)

    def identity(self) -> dict:
        c = self._cfg
        return {
            "engine": self.name,
            "model": c.model,
            "voice": c.voice,
            "instructions": c.instructions,
            "speed": c.speed,
        }

    async def preload(self) -> None:
        """Import the SDK and build the client now, so that the first line not in the cache does not wait."""
        if self._api_key:
            await self._ready_client()

    async def synthesize(self, text: str, on_audio: AudioCallback, speed: float = 1.0) -> None:
        client = await self._ready_client()
        for piece in split_text(text, API_TEXT_LIMIT):
            await self._synthesize_piece(client, piece, on_audio, speed)

    async def probe(self) -> None:
        """Check the server is reachable and accepts the key (a models listing); raises SpeechError if not."""
        self._require_key()
        c = self._cfg
        url = f"{base_url(c).rstrip('/')}/models"
        timeout = aiohttp.ClientTimeout(total=c.connect_timeout_s + c.first_byte_timeout_s, connect=c.connect_timeout_s)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(url, headers={"Authorization": f"Bearer {self._api_key}"}) as response,
            ):
                if response.status < 400:
                    return
                body = await response.content.read(_PROBE_BODY_LIMIT)
                problem = _status_problem(response.status, response.reason or "", _json_or_none(body), None)
        except TimeoutError:
            raise SpeechError("OpenAI: no answer to a reachability check", "transient") from None
        except (aiohttp.ClientError, ValueError) as exc:
            raise SpeechError(f"OpenAI: cannot connect ({exc or type(exc).__name__})", "transient") from None
        raise _as_speech_error(problem)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _require_key(self) -> None:
        if not self._api_key:
            raise SpeechError(
                f"no OpenAI API key: set OPENAI_API_KEY or openai.api_key_file in the config ({self._offline_hint})",
                "auth",
            )

    async def _ready_client(self) -> openai.AsyncOpenAI:
        self._require_key()
        if self._client is None:
            sdk = await asyncio.to_thread(_sdk)  # the first import takes long; the event loop keeps serving
            if self._client is None:  # another caller may have built it meanwhile
                self._client = _new_client(sdk, self._cfg, self._api_key)
        return self._client

    async def _synthesize_piece(
        self, client: openai.AsyncOpenAI, text: str, on_audio: AudioCallback, speed: float
    ) -> None:
        c = self._cfg
        try:
            async with asyncio.timeout(c.request_timeout_s):
                await self._request_with_retries(client, self._params(text, speed), on_audio)
        except TimeoutError:
            raise SpeechError(f"OpenAI: the request took longer than {c.request_timeout_s:g} s", "transient") from None

    async def _request_with_retries(self, client: openai.AsyncOpenAI, params: dict, on_audio: AudioCallback) -> None:
        first_byte_deadline = time.monotonic() + self._cfg.first_byte_timeout_s
        for attempt in range(self._cfg.retries + 1):
            try:
                return await self._request(client, params, on_audio, first_byte_deadline)
            except _Retryable as exc:
                pause = _pause(exc, attempt)
                if attempt == self._cfg.retries or time.monotonic() + pause >= first_byte_deadline:
                    raise SpeechError(f"OpenAI: {exc}", "transient") from None
                log.warning("OpenAI: %s; retrying in %.1f s", exc, pause)
                await asyncio.sleep(pause)

    def _params(self, text: str, speed: float = 1.0) -> dict:
        """The request's body; `speed` (a share of the configured speed) kept within what the API takes."""
        c = self._cfg
        speed = min(MAX_SPEED, max(MIN_SPEED, c.speed * speed))
        params = {"input": text, "model": c.model, "voice": c.voice, "response_format": "pcm", "speed": speed}
        if c.instructions:
            params["instructions"] = c.instructions
        return params

    async def _request(
        self, client: openai.AsyncOpenAI, params: dict, on_audio: AudioCallback, first_byte_deadline: float
    ) -> None:
        c = self._cfg
        openai = _sdk()
        received = 0
        try:
            async with contextlib.AsyncExitStack() as stack:
                try:
                    async with asyncio.timeout(first_byte_deadline - time.monotonic()):
                        response = await stack.enter_async_context(
                            client.audio.speech.with_streaming_response.create(**params)
                        )
                        chunks = aiter(response.iter_bytes())  # as they arrive: no re-chunking delay
                        first = await anext(chunks, b"")
                except TimeoutError:
                    raise _Retryable(f"no audio within {c.first_byte_timeout_s:g} s") from None
                if not first:
                    raise SpeechError("OpenAI: the server answered with no audio")
                received = len(first)
                on_audio(first)
                while True:
                    try:
                        async with asyncio.timeout(c.chunk_gap_timeout_s):
                            chunk = await anext(chunks, None)
                    except TimeoutError:
                        raise SpeechError(
                            f"OpenAI: the stream stalled for more than {c.chunk_gap_timeout_s:g} s "
                            f"after {received} bytes",
                            "cut",
                        ) from None
                    if chunk is None:
                        return
                    received += len(chunk)
                    on_audio(chunk)
        except (openai.APIStatusError, openai.APIConnectionError, _sdk_http_error()) as exc:
            if received:
                raise SpeechError(
                    f"OpenAI: the stream was cut after {received} bytes ({_describe(exc)})", "cut"
                ) from None
            raise _classify(exc) from None


def _classify(exc: Exception) -> Exception:
    """Before the first byte: rate limits, server errors and network faults are worth a retry; the rest is not."""
    if isinstance(exc, _sdk().APIStatusError):
        return _status_problem(exc.status_code, exc.response.reason_phrase, exc.body, _retry_after(exc))
    return _Retryable(_describe(exc))


def _status_problem(status: int, reason: str, body: object, retry_after: float | None) -> Exception:
    """What an error answer means: a SpeechError to give up with, or a _Retryable."""
    if status == 429 and _error_code(body) == "insufficient_quota":
        return SpeechError("OpenAI: the account has run out of credit (429 insufficient_quota)", "quota")
    if status == 429 or status >= 500:
        return _Retryable(_answer(status, reason, body), retry_after)
    if status in (401, 403):
        return SpeechError(f"OpenAI: the API key was refused ({status})", "auth")
    return SpeechError(f"OpenAI: {_answer(status, reason, body)}")


def _as_speech_error(problem: Exception) -> SpeechError:
    """A problem worth a retry, where nothing will retry it: a transient SpeechError."""
    return problem if isinstance(problem, SpeechError) else SpeechError(f"OpenAI: {problem}", "transient")


def _answer(status: int, reason: str, body: object) -> str:
    error = body.get("error", body) if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return f"server answered {status} {reason}" + (f": {message}" if message else "")


def _json_or_none(body: bytes) -> object:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _describe(exc: Exception) -> str:
    openai = _sdk()
    if isinstance(exc, openai.APIStatusError):
        return _answer(exc.status_code, exc.response.reason_phrase, exc.body)
    if isinstance(exc, openai.APITimeoutError):
        return "timed out connecting"
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__
        return f"cannot connect ({cause or exc})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _error_code(body: object) -> str | None:
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return inner.get("code") or inner.get("type")
    return None


def _new_client(sdk: ModuleType, c: OpenAIConfig, api_key: str) -> openai.AsyncOpenAI:
    return sdk.AsyncOpenAI(
        api_key=api_key,
        base_url=c.base_url,  # None: the SDK reads OPENAI_BASE_URL, else the public API
        max_retries=0,  # retries are ours, and only before the first audio byte
        timeout=sdk.Timeout(
            connect=c.connect_timeout_s,
            read=max(c.first_byte_timeout_s, c.chunk_gap_timeout_s),
            write=c.connect_timeout_s,
            pool=c.connect_timeout_s,
        ),
    )


def _sdk_http_error() -> type[Exception]:
    import httpx2  # the SDK's HTTP client, loaded with it

    return httpx2.HTTPError


def base_url(cfg: OpenAIConfig) -> str:
    """The API's address, found as the SDK finds it: the config, else OPENAI_BASE_URL, else the public API."""
    return cfg.base_url or os.environ.get("OPENAI_BASE_URL") or PUBLIC_API


def _retry_after(exc: openai.APIStatusError) -> float | None:
    try:
        return float(exc.response.headers.get("retry-after", ""))
    except ValueError:
        return None


def _pause(exc: _Retryable, attempt: int) -> float:
    backoff = _BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)]
    return max(backoff, exc.retry_after or 0.0)


#: A translation draft longer than this is not a translation of an exhibit line.
_DRAFT_LIMIT = 4 * API_TEXT_LIMIT
_DRAFT_INSTRUCTIONS = (
    "You translate short texts that a museum exhibit speaks aloud to visitors. Keep the meaning, tone and length; "
    "write numbers and names as they are said in each language; do not add anything. The user message is a JSON "
    'object {"text": ..., "languages": {code: language name}}. Answer with one JSON object that maps each '
    "language code to the translated text, and nothing else."
)


async def draft_translations(cfg: OpenAIConfig, api_key: str | None, text: str, languages: dict[str, str]) -> dict:
    """Drafts of `text` in each of `languages` (code → name) from OpenAI's text model (`openai.text_model`), for
    staff to review: {code: draft} for every language the answer held a usable draft for. Raises SpeechError with a
    plain explanation (no key, no network, a refusal, an answer that is not translations)."""
    if not api_key:
        raise SpeechError("drafts need an OpenAI API key: set one on the Voice page or in OPENAI_API_KEY", "auth")
    sdk = await asyncio.to_thread(_sdk)
    client = _new_client(sdk, cfg, api_key)
    ask = json.dumps({"text": text, "languages": languages}, ensure_ascii=False)
    try:
        async with asyncio.timeout(cfg.connect_timeout_s + cfg.request_timeout_s):
            answer = await client.chat.completions.create(
                model=cfg.text_model,
                messages=[{"role": "system", "content": _DRAFT_INSTRUCTIONS}, {"role": "user", "content": ask}],
                response_format={"type": "json_object"},
            )
    except TimeoutError:
        raise SpeechError("OpenAI did not answer in time; try again", "transient") from None
    except (sdk.APIStatusError, sdk.APIConnectionError, _sdk_http_error()) as exc:
        raise _as_speech_error(_classify(exc)) from None
    finally:
        await client.close()
    return _drafts(answer, languages)


def _drafts(answer, languages: dict[str, str]) -> dict:
    try:
        content = answer.choices[0].message.content or ""
        drafts = json.loads(content)
    except (AttributeError, IndexError, ValueError):
        raise SpeechError("OpenAI's answer held no translations; try again") from None
    if not isinstance(drafts, dict):
        raise SpeechError("OpenAI's answer held no translations; try again")
    usable = {
        code: draft.strip()
        for code, draft in drafts.items()
        if code in languages and isinstance(draft, str) and draft.strip() and len(draft) <= _DRAFT_LIMIT
    }
    if not usable:
        raise SpeechError("OpenAI's answer held no translations; try again")
    return usable
