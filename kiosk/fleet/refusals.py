"""What a speaker answers when it refuses an MQTT command, and the last refusal it keeps for Home Assistant.

A refusal is answered on `<p>/<id>/error` (for whoever sent the command and waits for it: `kiosk fleet say`) and kept
as `last_refusal` in the retained status (for Home Assistant, which gets no answer to the commands it sends: its
"Last refusal" sensor shows it). A refused volume or mute also has the status sent again, so that Home Assistant's
slider and switch go back to what the speaker really has.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from kiosk.commands import CommandError, parse_json

#: The commands whose refusal leaves Home Assistant showing a value the speaker does not have.
STATEFUL = ("volume", "mute")
RETAINED = "retained commands are refused (they would repeat at every reconnect)"


def answer(command: str, topic: str, payload: bytes, status: int, message: str, headers: Mapping) -> dict[str, Any]:
    """The JSON answered on the error topic."""
    out: dict[str, Any] = {"command": command, "topic": topic, "status": status, "error": message}
    request_id = request_id_of(payload)
    if request_id is not None:
        out["id"] = request_id
    if "Retry-After" in headers:
        out["retry_after_s"] = int(headers["Retry-After"])
    return out


def last_refusal(answered: dict[str, Any]) -> dict[str, Any]:
    """The status's `last_refusal`: the answer without the request id, with the time it was refused."""
    keep = ("command", "topic", "status", "error", "retry_after_s")
    return {**{k: answered[k] for k in keep if k in answered}, "time": round(time.time(), 3)}


def request_id_of(payload: bytes) -> str | None:
    """The "id" of a play command, to tie an error to its command (only if the payload is sound)."""
    try:
        body = parse_json(payload)
    except CommandError:
        return None
    request_id = body.get("id") if isinstance(body, dict) else None
    return request_id[:255] if isinstance(request_id, str) else None
