"""The Voice page: the speech engine, OpenAI's model, voice and key, the local voice, samples of a voice and how
far the phrase cache has come."""

from __future__ import annotations

import asyncio
import math
import os
import re
from pathlib import Path

from aiohttp import web

from kiosk.errors import KioskError
from kiosk.fileio import write_atomically
from kiosk.speech import openai_engine
from kiosk.staff.backend import StaffBackend
from kiosk.staff.common import BACKEND, FORM, render, save_changes
from kiosk.web.api import send_wav

routes = web.RouteTableDef()

KEY_MASK = "••••••••"


@routes.get("/voice")
async def voice_page(
    request: web.Request, errors: dict | None = None, values: dict | None = None, status: int = 200
) -> web.Response:
    backend = request.app[BACKEND]
    cfg = backend.cfg
    key_file = cfg.openai.api_key_file
    return render(
        "voice.html",
        request,
        status=status,
        openai=cfg.openai,
        engine=cfg.speech.engine,
        local_voice=cfg.piper.voice,
        now=backend.voice_report(),
        choices=_voice_choices(backend),
        labels={**MODEL_WORDS, **LOCAL_VOICE_WORDS},
        errors=errors or {},
        values=values or {},
        key_set=bool(key_file and key_file.exists()),
        key_from_env=bool(os.environ.get("OPENAI_API_KEY")),
        key_file=key_file,
        key_mask=KEY_MASK,
        progress=backend.warm_progress(),
    )


#: The choices' labels in words (the id stays in brackets, for whoever reads OpenAI's or Piper's own pages).
MODEL_WORDS = {
    "gpt-4o-mini-tts": "Most natural; follows “How to speak” (gpt-4o-mini-tts)",
    "tts-1": "Quick, standard quality (tts-1)",
    "tts-1-hd": "Standard, clearer (tts-1-hd)",
}
LOCAL_VOICE_WORDS = {"joe-us": "Joe, American English; comes with the speaker (joe-us)"}


def _voice_choices(backend: StaffBackend) -> dict[str, list[str]]:
    """What the Voice page offers: OpenAI's models and voices, the local voices installed, and whatever kiosk.yaml
    names besides (an OpenAI-compatible server may have other voices)."""
    cfg = backend.cfg
    return {
        "engine": ["auto", "openai", "piper"],
        "model": list(dict.fromkeys([*openai_engine.MODELS, cfg.openai.model])),
        "voice": list(dict.fromkeys([*openai_engine.VOICES, cfg.openai.voice])),
        "local_voice": backend.local_voices(),
    }


_KEY = re.compile(r"[A-Za-z0-9_-]{8,300}")


@routes.post("/voice")
async def save_voice(request: web.Request) -> web.Response:
    form, backend = request[FORM], request.app[BACKEND]
    cfg = backend.cfg
    current = {"engine": cfg.speech.engine, "model": cfg.openai.model, "voice": cfg.openai.voice}
    current["local_voice"] = cfg.piper.voice
    values = {name: str(form.get(name, current[name])).strip() for name in current}  # a field left out: unchanged
    values |= {"instructions": str(form.get("instructions", "")).strip(), "speed": str(form.get("speed", "")).strip()}
    choices = _voice_choices(backend)
    errors = {
        name: "choose one of the listed options"
        for name in ("engine", "model", "voice")
        if values[name] not in choices[name]
    }
    if choices["local_voice"] and values["local_voice"] not in choices["local_voice"]:
        errors["local_voice"] = "choose one of the listed voices"
    speed = _finite_number(values["speed"])
    if speed is None:
        errors["speed"] = "must be a number from 0.25 to 4"
    new_key = str(form.get("api_key", "")).strip()
    if new_key == KEY_MASK:
        new_key = ""  # the mask sent back changes nothing
    if new_key and cfg.openai.api_key_file is None:
        errors["api_key"] = "set openai.api_key_file in kiosk.yaml to let the key be changed here"
    elif new_key and not _KEY.fullmatch(new_key):
        errors["api_key"] = "an OpenAI key is letters, digits, '-' and '_' (paste it again)"
    if errors:
        return await voice_page(request, errors, values, 400)
    openai = {
        "model": values["model"],
        "voice": values["voice"],
        "instructions": values["instructions"],
        "speed": speed,
    }
    changes = {"openai": openai, "speech": {"engine": values["engine"]}}
    if choices["local_voice"]:
        changes["piper"] = {"voice": values["local_voice"]}
    try:
        return await save_changes(request, changes, "/voice", voice_page, None, values)
    except web.HTTPSeeOther:  # saved: now the key, if a new one was typed
        if new_key:
            await asyncio.to_thread(_write_key, cfg.openai.api_key_file, new_key)
            await backend.reload()  # used from the next line on
        raise


def _finite_number(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


@routes.get("/voice/sample.wav")
async def voice_sample(request: web.Request) -> web.StreamResponse:
    """A short sample of a voice, streamed as it is made (not cached)."""
    backend = request.app[BACKEND]
    engine, voice = request.query.get("engine", ""), request.query.get("voice", "")
    choices = _voice_choices(backend)
    allowed = choices["voice"] if engine == "openai" else choices["local_voice"] if engine == "piper" else []
    if voice not in allowed:
        raise web.HTTPBadRequest(text="choose one of the listed voices")
    if backend.allow_trigger() is not None:
        raise web.HTTPTooManyRequests(text="too many samples at once; try again in a moment")
    try:
        sample = await backend.sample(engine, voice)
    except KioskError as exc:
        raise web.HTTPServiceUnavailable(text=f"cannot play a sample now: {exc}") from None
    try:
        return await send_wav(request, sample.fmt, sample)
    finally:
        await sample.aclose()


def _write_key(path: Path, key: str) -> None:
    write_atomically(path, key.encode() + b"\n", mode=0o600)


@routes.get("/voice/progress.json")
async def warm_progress(request: web.Request) -> web.Response:
    return web.json_response(request.app[BACKEND].warm_progress())
