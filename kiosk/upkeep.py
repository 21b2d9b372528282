"""The service's background work, each a supervised task: warming the lines, probing the voices, checking the
config file on disk, the cache's upkeep and the systemd watchdog.

Each runs for the life of the service under kiosk.supervisor (a crash is reported and the task restarted), reads
the live parts (kiosk.parts) and tells staff through the app's events. A problem found here clears when its cause
does: each task looks again on its own, where nothing else would notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from kiosk.app import App
from kiosk.cache import USAGE_FLUSH_S
from kiosk.config import load_config
from kiosk.errors import ConfigError, KioskError
from kiosk.parts import Parts
from kiosk.plain_words import VOICE_NAMES, fault_words
from kiosk.speech.openai_engine import OpenAIEngine
from kiosk.systemd import Notifier
from kiosk.warm import new_progress, warm

log = logging.getLogger(__name__)

ENGINE_PROBE_EVERY_S = 60.0
BACKOFF_CHECK_EVERY_S = 5.0
CONFIG_CHECK_EVERY_S = 30.0
CACHE_CHECK_EVERY_S = 30.0


class Upkeep:
    def __init__(self, parts: Parts, app: App, notifier: Notifier):
        self._parts = parts
        self._app = app
        self._notifier = notifier
        self._config_signature = file_signature(parts.config_path)

    # -- warming the lines

    def start_warm(self) -> None:
        """Synthesize, in the background, every configured line the cache lacks in the current voice."""
        parts = self._parts
        # A fresh record per run, set before the task starts: a cancelled run finishing late cannot touch it.
        progress = parts.warm = new_progress(len(parts.cfg.all_lines()), running=True)
        parts.supervisor.start("warm", lambda: self._warm(progress), restart=False)

    async def _warm(self, progress: dict) -> None:
        await warm(self._parts.announcer, self._parts.cfg.all_lines(), progress)
        await asyncio.to_thread(self._app.ready_lines)
        for error in progress["errors"]:
            self._app.event(f"A line could not be made ready offline: {fault_words(error)}")

    # -- the voices

    async def probe_engines_forever(self) -> None:
        parts = self._parts
        for fallback in parts.engines.engines[1:]:  # load the local voice now, not at the first failover
            with contextlib.suppress(KioskError):
                await fallback.probe()
        next_probe = 0.0
        while True:
            if time.monotonic() >= next_probe:
                await self.probe_engine()
                next_probe = time.monotonic() + ENGINE_PROBE_EVERY_S
            was_backed_off = parts.engines.health[parts.engine.name].in_backoff
            await parts.engines.probe_due()
            if was_backed_off and not parts.engines.health[parts.engine.name].in_backoff:
                self._app.event(f"{parts.engine.name} is back: replacing lines made by the fallback voice")
                self.start_warm()
            await asyncio.sleep(BACKOFF_CHECK_EVERY_S)

    async def probe_engine(self) -> None:
        parts = self._parts
        engine, state = parts.engine, parts.engine_state
        if parts.cfg.api.allow_text and isinstance(engine, OpenAIEngine):
            # Free text is rarely in the cache: load the SDK now rather than at such a line's first press.
            with contextlib.suppress(KioskError):
                await engine.preload()
        try:
            await engine.probe()
            state.update(reachable=True, error=None)
        except KioskError as exc:
            if state.get("error") != str(exc):
                self._app.event(f"{VOICE_NAMES.get(engine.name, 'A voice')} cannot be used: {fault_words(str(exc))}")
            state.update(reachable=False, error=str(exc))
        state["checked_at"] = time.time()

    # -- the config file on disk

    def config_rejected(self, problems: list[str]) -> None:
        """The file on disk is broken: staff, the broker and systemd are told until a good reload, because the
        next restart would fail on it."""
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        self._parts.config_problem = f"{problems[0]}{more}"
        self._notifier.status(self.status_text())
        self._app.status_changed()

    def config_accepted(self) -> None:
        self._config_signature = file_signature(self._parts.config_path)
        if self._parts.config_problem is not None:
            self._parts.config_problem = None
            self._notifier.status(self.status_text())
            self._app.status_changed()

    def status_text(self) -> str:
        """systemd's StatusText: what is wrong first, else where the speaker speaks."""
        parts = self._parts
        if parts.config_problem:
            return f"reload rejected: {parts.config_problem} — running on the previous config"
        problem = parts.device.problem
        speaker = f"speaker missing ({problem})" if problem else f"speaking on {parts.cfg.audio.device}"
        return f"{speaker}; API on port {parts.port}, staff page on {parts.staff_port}"

    async def check_config_file(self) -> None:
        """A config file edited but not reloaded is checked too: a broken one is reported before a restart trips
        on it, and the report clears once the file is good again."""
        path = self._parts.config_path
        while True:
            await asyncio.sleep(CONFIG_CHECK_EVERY_S)
            signature = await asyncio.to_thread(file_signature, path)
            if signature == self._config_signature:
                continue
            self._config_signature = signature
            try:
                await asyncio.to_thread(load_config, path)
            except ConfigError as exc:
                if self._parts.config_problem is None:
                    self._app.event(
                        f"the config file has {len(exc.problems)} problem(s); fix it before the next restart"
                    )
                self.config_rejected(exc.problems)
            else:
                self.config_accepted()

    # -- the cache

    async def keep_cache(self) -> None:
        """Look again at a cache that could not be written (a full disk freed, a directory made writable), so the
        problem clears when its cause does; save the cache's last-use order every few hours (an SD card is spared a
        write per press)."""
        flushed_at = time.monotonic()
        while True:
            await asyncio.sleep(CACHE_CHECK_EVERY_S)
            announcer = self._parts.announcer
            if announcer.cache_problem is not None:  # only then: a healthy cache is not written to every 30 s
                await asyncio.to_thread(announcer.recheck_cache)
            if time.monotonic() - flushed_at >= USAGE_FLUSH_S:
                flushed_at = time.monotonic()
                try:
                    await asyncio.to_thread(self._parts.cache.flush_usage)
                except KioskError as exc:  # a read-only or full disk: the order is kept in memory meanwhile
                    log.warning("%s", exc)

    # -- systemd

    async def watchdog(self) -> None:
        """Ping systemd only while the speaker loop and the ALSA writer both show progress."""
        interval = self._notifier.watchdog_s / 2
        warned = False
        while True:
            ok, problem = self._app.health()
            if ok:
                self._notifier.watchdog()
                warned = False
            elif not warned:
                log.error("%s: withholding watchdog pings so that systemd restarts the service", problem)
                warned = True
            await asyncio.sleep(interval)


def file_signature(path: Path | None) -> tuple | None:
    """What changes when a file is edited (or replaced, or removed)."""
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError as exc:
        return ("missing", exc.errno)
    return (st.st_ino, st.st_size, st.st_mtime_ns)
