"""What every way in shares: the HTTP API, MQTT and OSC check a command's body by the same rules and answer with the
same words, so a show controller gets the same message whichever way it sends.

Bodies are untrusted: their size and JSON nesting are bounded before parsing, NaN and Infinity are refused, unknown
fields are refused. A refusal is a `CommandError` with an HTTP-style status and one plain sentence.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Callable
from typing import Any

from kiosk.in_step import BadStart, start_time
from kiosk.speaker import Rejected

MAX_BODY_BYTES = 16 * 1024
MAX_TEXT_CHARS = 4096
MAX_JSON_DEPTH = 8
REJECTED_STATUS = {
    "unknown_phrase": 404,
    "unknown_language": 404,
    "text_disabled": 403,
    "busy": 409,
    "queue_full": 409,
    "bad_text": 400,
    "bad_start": 400,
}


class CommandError(Exception):
    """A refused command: `status` as HTTP would say it, the message in plain words, headers for HTTP."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def parse_body(raw: bytes, allowed: set[str]) -> dict:
    """A JSON object with only `allowed` fields ({} for an empty body); CommandError saying what is wrong."""
    if len(raw) > MAX_BODY_BYTES:
        raise CommandError(413, "request body too large")
    if not raw.strip():
        return {}
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise CommandError(400, "body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise CommandError(400, f"unknown field(s): {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    return body


def parse_json(raw: bytes) -> Any:
    """Any JSON value, its size and nesting bounded first; NaN and Infinity refused."""
    if len(raw) > MAX_BODY_BYTES:
        raise CommandError(413, "request body too large")
    if json_depth(raw) > MAX_JSON_DEPTH:
        raise CommandError(400, f"body is nested more than {MAX_JSON_DEPTH} levels deep")
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise CommandError(400, "body must be JSON") from None


def json_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in JSON text, counted without parsing it (so a body of
    thousands of brackets costs a scan, not a recursion)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's json accepts NaN and Infinity; JSON does not


def string_field(body: dict, name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise CommandError(400, f"'{name}' must be a string")
    return value


def start_field(body: dict) -> float | None:
    """A play command's optional start time `at` (Unix seconds, kiosk.in_step): a finite number, never a bool."""
    try:
        return start_time(body.get("at"))
    except BadStart as exc:
        raise CommandError(400, str(exc)) from None


def check_choice(phrase: str | None, text: str | None) -> None:
    """Exactly one of a configured line or free text, the text not empty and not too long."""
    if (phrase is None) == (text is None):
        raise CommandError(400, "give exactly one of 'phrase' or 'text'")
    if text is not None and not text.strip():
        raise CommandError(400, "'text' is empty")
    if text is not None and len(text) > MAX_TEXT_CHARS:
        raise CommandError(400, f"'text' is {len(text)} characters; the limit is {MAX_TEXT_CHARS}")


def bad_idempotency_key(key: str) -> bool:
    """Whether `key` is not an acceptable idempotency key (1 to 255 printable characters)."""
    return not 1 <= len(key) <= 255 or not key.isprintable()


def too_many(retry_after: float) -> CommandError:
    """The answer to a trigger over the rate limit."""
    return CommandError(429, "too many requests", {"Retry-After": str(max(1, round(retry_after)))})


def refused(exc: Rejected) -> CommandError:
    """The answer to a trigger the speaker did not accept (busy, unknown line, ...)."""
    return CommandError(REJECTED_STATUS.get(exc.reason, 409), str(exc))


class IdempotencyKeys:
    """Accepted triggers by Idempotency-Key, for `window_s`: a show controller's retry gets the first answer
    (the same playback id) and the line is not spoken twice. Only accepted triggers are remembered, so a retry of
    a refused one (busy, rate-limited) is tried afresh. Bounded: the oldest keys go first."""

    def __init__(self, window_s: float = 600, limit: int = 1000, clock: Callable[[], float] = time.monotonic):
        self._window_s, self._limit, self._clock = window_s, limit, clock
        self._answers: collections.OrderedDict[str, tuple[float, Any, dict]] = collections.OrderedDict()

    def get(self, key: str, request: Any) -> dict | None:
        self._expire()
        found = self._answers.get(key)
        if found is None:
            return None
        if found[1] != request:
            raise CommandError(422, "this Idempotency-Key was already used for a different request")
        return found[2]

    def put(self, key: str, request: Any, answer: dict) -> None:
        self._answers[key] = (self._clock() + self._window_s, request, answer)
        while len(self._answers) > self._limit:
            self._answers.popitem(last=False)

    def _expire(self) -> None:
        now = self._clock()
        while self._answers and next(iter(self._answers.values()))[0] <= now:
            self._answers.popitem(last=False)
