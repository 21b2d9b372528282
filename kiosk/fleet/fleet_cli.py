"""What `kiosk fleet status` and `kiosk fleet say` do once connected to the broker (kiosk.fleet.mqtt connects and
hands in its client): read the speakers' retained topics for a while, publish a command and collect the refusals.

Every payload read is untrusted: bounded in size, parsed as the speakers parse commands, skipped when unsound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any

from kiosk.commands import MAX_BODY_BYTES, CommandError, parse_json
from kiosk.in_step import stamp


async def status_of(client: Any, prefix: str, seconds: float) -> dict[str, dict]:
    """Every speaker the broker knows under `prefix`: {device: {"availability": ..., "status": {...}}}, from the
    retained topics collected for `seconds`."""
    speakers: dict[str, dict] = {}
    await client.subscribe([(f"{prefix}/+/availability", 0), (f"{prefix}/+/status", 0)])
    for message in await collect(client, seconds):
        device, kind = message.topic.value.removeprefix(f"{prefix}/").split("/", 1)
        payload = message.payload if isinstance(message.payload, bytes) else b""
        if not payload or len(payload) > MAX_BODY_BYTES:
            continue
        entry = speakers.setdefault(device, {"availability": None, "status": {}})
        if kind == "availability":
            entry["availability"] = payload.decode("utf-8", "replace")[:20]
        else:
            with contextlib.suppress(CommandError):
                status = parse_json(payload)
                entry["status"] = status if isinstance(status, dict) else {}
    return dict(sorted(speakers.items()))


async def command(client: Any, prefix: str, base: str, name: str, body: dict, seconds: float) -> list[dict]:
    """Publish command `name` to `base` (a speaker, a group or all) at QoS 1 (the broker acknowledges it, and hands
    it on at QoS 1 to speakers subscribed so) and return the errors speakers answered with within `seconds`, each
    with its "device"."""
    request_id = body.setdefault("id", uuid.uuid4().hex) if name == "play" else None
    errors = []
    await client.subscribe(f"{prefix}/+/error", qos=1)
    await client.publish(f"{base}/{name}", json.dumps(stamp(body)), qos=1)  # a start time `Lead` s from now
    for message in await collect(client, seconds):
        payload = message.payload if isinstance(message.payload, bytes) else b""
        with contextlib.suppress(CommandError):
            answer = parse_json(payload)
            if isinstance(answer, dict) and (request_id is None or answer.get("id") == request_id):
                device = message.topic.value.removeprefix(f"{prefix}/").split("/", 1)[0]
                errors.append({"device": device, **answer})
    return errors


async def collect(client: Any, seconds: float) -> list:
    """The messages that arrive within `seconds`."""
    got: list = []

    async def gather() -> None:
        async for message in client.messages:
            got.append(message)

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(gather(), seconds)
    return got
