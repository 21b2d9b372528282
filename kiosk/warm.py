"""Warming: synthesize every configured line the cache lacks, one at a time, in the background.

Lines are made in the primary engine's voice; a line that only a fallback engine could make is replaced once the
primary is reachable again (the fallback's entry is then removed). The player is not involved, so warming never
delays a visitor's press.
"""

from __future__ import annotations

import asyncio
import logging

from kiosk.announcer import Announcer
from kiosk.config import Config
from kiosk.errors import KioskError

log = logging.getLogger(__name__)


def new_progress(total: int = 0, *, running: bool = False) -> dict:
    """A fresh progress record for `warm` (what the staff page's Voice progress bar reads)."""
    return {
        "total": total,
        "done": 0,
        "failed": 0,
        "running": running,
        "text": "starting" if running else "not started",
        "errors": [],
    }


async def warm(announcer: Announcer, lines: list[str | tuple[str, str | None]], progress: dict) -> None:
    """Make the lines (texts, or (text, language)) ready offline, each in its language's voice, updating
    `progress` (total, done, failed, running, text, errors)."""
    pairs = [(line, None) if isinstance(line, str) else line for line in lines]
    pairs = list(dict.fromkeys((text.strip(), language) for text, language in pairs))
    progress.update(total=len(pairs), done=0, failed=0, running=True, text="checking the lines", errors=[])
    try:
        for text, language in pairs:
            try:
                await _warm_line(announcer, text, language)
            except KioskError as exc:
                _failed(progress, f"{language}: {exc}" if language else str(exc))
            except Exception as exc:  # a fault nobody foresaw fails this line, not the rest
                log.exception("preparing a line failed")
                _failed(progress, f"internal error: {type(exc).__name__}: {exc}")
            else:
                progress["done"] += 1
            progress["text"] = _summary(progress)
    finally:
        progress["running"] = False


async def _warm_line(announcer: Announcer, text: str, language: str | None) -> None:
    chain, cache = announcer.chain_for(language), announcer.cache
    primary_key, *fallback_keys = announcer.keys_for(text, language)
    if await asyncio.to_thread(cache.contains, primary_key):
        return
    usable = chain.usable()
    if chain.primary in usable:
        await announcer.prepare(text, chain.primary, language)
        for key in fallback_keys:  # the primary's voice replaces what a fallback made meanwhile
            await asyncio.to_thread(cache.remove, key)
        return
    if any([await asyncio.to_thread(cache.contains, key) for key in fallback_keys]):
        return  # ready offline in a fallback voice until the primary is back
    if not usable:
        raise KioskError("no speech engine available now")
    await announcer.prepare(text, usable[0], language)


def ready_ids(cfg: Config, announcer: Announcer, language: str | None = None) -> list[str]:
    """Ids of the configured lines ready offline as heard in `language` (a line without a translation is heard in
    the default language), in any voice of the language heard. Reads the cache directory: not on the event loop."""
    ready = []
    for pid in cfg.phrases:
        text, heard = cfg.text_for(pid, language)
        if any(announcer.cache.contains(key) for key in announcer.keys_for(text, heard)):
            ready.append(pid)
    return ready


def translated(cfg: Config, language: str) -> int:
    """How many configured lines `language` has its own text for (all of them, for the default language)."""
    return sum(cfg.text_for(pid, language)[1] == language for pid in cfg.phrases)


def _failed(progress: dict, error: str) -> None:
    progress["failed"] += 1
    progress["errors"] = [*progress["errors"][-4:], error]


def _summary(progress: dict) -> str:
    text = f"{progress['done']} of {progress['total']} lines ready"
    return text + (f", {progress['failed']} failed" if progress["failed"] else "")
