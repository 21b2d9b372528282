"""Wiring and lifetime: config → cache, engine, player, speaker, buttons, HTTP API; systemd notify and watchdog.

Supervision lives in kiosk.supervisor, reports in kiosk.status, the audio device in kiosk.device.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import logging
import signal
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

from aiohttp import web

from kiosk import __version__
from kiosk.alsa_output import AlsaOutput, set_volume
from kiosk.announcer import Announcer, SampleStream
from kiosk.buttons import Buttons
from kiosk.cache import PhraseCache
from kiosk.chime import Chime, load_chime
from kiosk.config import (
    AudioConfig,
    ButtonConfig,
    Config,
    load_config,
    read_secret_file,
    resolve_api_key,
    text_problem,
)
from kiosk.device import DeviceKeeper
from kiosk.errors import ConfigError, KioskError, SpeechError
from kiosk.fleet import Fleet
from kiosk.history import History, Outcome
from kiosk.languages import LanguageChoice
from kiosk.loudness import Leveller
from kiosk.metrics import Metrics
from kiosk.pcm import AudioFormat
from kiosk.player import Player, SinkOpener
from kiosk.schedule import Scheduler
from kiosk.speaker import Rejected, Request, Speaker
from kiosk.speech import SpeechEngine
from kiosk.speech.chain import EngineChain
from kiosk.speech.openai_engine import OpenAIEngine, draft_translations
from kiosk.staff.pages import make_staff_app
from kiosk.status import WRITER_STUCK_S, EventLog, StatusBoard, outcome_of
from kiosk.supervisor import Supervisor
from kiosk.systemd import Notifier
from kiosk.warm import warm
from kiosk.web.api import RateLimiter, make_app
from kiosk.web.hosts import HostNames
from kiosk.web.server import ConnectionLimits, serve

log = logging.getLogger(__name__)

ENGINE_PROBE_EVERY_S = 60.0
VOICE_SAMPLE = "Welcome to the museum. This is how I sound when I tell you about the exhibits."
BUNDLED_VOICE = "joe-us"  # kiosk.speech.piper_engine.BUNDLED_VOICE, named here without loading onnxruntime
BACKOFF_CHECK_EVERY_S = 5.0
CONFIG_CHECK_EVERY_S = 30.0
STOP_ROUND_S = 0.5  # SIGTERM: two rounds of closing, so the process is gone within 1.5 s


def alsa_opener(audio: AudioConfig) -> SinkOpener:
    def open_sink(fmt: AudioFormat) -> AlsaOutput:
        return AlsaOutput(audio.device, fmt, audio.period_ms, audio.buffer_periods)

    return open_sink


def build_player(audio: AudioConfig, open_sink: SinkOpener | None = None) -> Player:
    """A player on the configured device (or `open_sink`), with the configured pre-roll."""
    return Player(open_sink or alsa_opener(audio), preroll_ms=audio.preroll_ms, preroll_max_ms=audio.preroll_max_ms)


def build_cache(cfg: Config) -> PhraseCache:
    return new_cache(cfg).open()


def new_cache(cfg: Config) -> PhraseCache:
    """The phrase cache as configured (not opened yet): where, how large, and the loudness lines are levelled to."""
    return PhraseCache(cfg.cache.dir, int(cfg.cache.max_mb * 1_000_000), loudness_lufs=cfg.audio.loudness_lufs)


def piper_installed() -> bool:
    return importlib.util.find_spec("piper") is not None


def build_engine(cfg: Config) -> SpeechEngine:
    """OpenAI when a key is configured; otherwise the local Piper voice if it is installed ("auto")."""
    key = resolve_api_key(cfg.openai)
    choice = cfg.speech.engine
    if choice == "auto":
        choice = "openai" if key or not piper_installed() else "piper"
    if choice == "piper":
        if not piper_installed():
            raise SpeechError("speech.engine is piper but Piper is not installed (pip install 'kiosk[piper]')")
        return build_local_voice(cfg.piper)
    return OpenAIEngine(cfg.openai, key)


def build_local_voice(piper_cfg) -> SpeechEngine:
    from kiosk.speech.piper_engine import PiperEngine  # imported only when used: it loads onnxruntime

    return PiperEngine(piper_cfg)


def build_leveller(cfg: Config, cache: PhraseCache) -> Leveller | None:
    """Matched loudness at the configured target, each engine's gain learned from the lines it has in the cache
    (so the first line heard after a restart is already at the right level). Reads every entry's header. None
    when matching is off (`audio.loudness_lufs: null`)."""
    if cfg.audio.loudness_lufs is None:
        return None
    leveller = Leveller(cfg.audio.loudness_lufs)
    entries = sorted(cache.list(), key=lambda info: info.created)  # the most recent last: they are remembered
    leveller.learn_all((info.engine, info.levelled) for info in entries)
    return leveller


def build_voices(cfg: Config, clock=time.monotonic) -> dict[str, EngineChain]:
    """The engines of each language after the first (the default, spoken by build_chain's): OpenAI with the
    language's own voice and instructions where given, then the language's local Piper voice where one is set. A
    language without a local voice needs the network until its lines are cached."""
    key = resolve_api_key(cfg.openai)
    voices = {}
    for n, lang in enumerate(cfg.languages[1:], start=1):
        hint = f"or give {lang.spoken_name} a local voice: languages[{n}].piper_voice"
        openai_cfg = dataclasses.replace(
            cfg.openai,
            voice=lang.voice or cfg.openai.voice,
            instructions=cfg.openai.instructions if lang.instructions is None else lang.instructions,
        )
        engines: list[SpeechEngine] = []
        if cfg.speech.engine != "piper" or key:
            engines.append(OpenAIEngine(openai_cfg, key, offline_hint=hint))
        if lang.piper_voice and piper_installed():
            engines.append(build_local_voice(dataclasses.replace(cfg.piper, voice=lang.piper_voice)))
        if not engines:  # speech.engine piper and no local voice for it: say so when asked, never fail silently
            engines.append(OpenAIEngine(openai_cfg, key, offline_hint=hint))
        voices[lang.code] = EngineChain(engines, failover_s=cfg.speech.failover_ms / 1000, clock=clock)
    return voices


def build_chain(cfg: Config, clock=time.monotonic) -> EngineChain:
    """The primary engine, then the local voice as fallback ("auto": when installed and not already primary)."""
    primary = build_engine(cfg)
    engines = [primary]
    wanted = cfg.speech.fallback
    if wanted == "piper" and not piper_installed():
        raise SpeechError("speech.fallback is piper but Piper is not installed (pip install 'kiosk[piper]')")
    if wanted != "none" and primary.name != "piper" and piper_installed():
        engines.append(build_local_voice(cfg.piper))
    return EngineChain(engines, failover_s=cfg.speech.failover_ms / 1000, clock=clock)


@contextlib.asynccontextmanager
async def open_announcer(cfg: Config, *, open_sink: SinkOpener | None = None) -> AsyncIterator[Announcer]:
    """An announcer whose device is already open; everything is closed again on exit."""
    cache = build_cache(cfg)
    engines, voices = build_chain(cfg), build_voices(cfg)
    player = build_player(cfg.audio, open_sink)
    player.start()
    try:
        leveller = build_leveller(cfg, cache)
        announcer = Announcer(engines=engines, cache=cache, player=player, leveller=leveller, voices=voices)
        announcer.pin_lines(cfg.all_lines())
        await player.open_device(engines.primary.fmt)
        yield announcer
    finally:
        await asyncio.to_thread(player.close)
        for chain in (engines, *voices.values()):
            await chain.aclose()


class Service:
    """The always-on speaker: `start`, `reload` (SIGHUP) and `stop` (SIGTERM).

    Wiring and lifetime live here; long-lived work runs under `supervisor`, reports under `board`
    (kiosk.status) and the audio device under `device` (kiosk.device).
    """

    def __init__(
        self,
        cfg: Config,
        *,
        config_path: Path | None = None,
        overrides: dict | None = None,
        open_sink: SinkOpener | None = None,
        pin_factory=None,
        notifier: Notifier | None = None,
        writer_stuck_s: float = WRITER_STUCK_S,
        limits: ConnectionLimits | None = None,
        clock=time.monotonic,
        now=datetime.now,
    ):
        self.cfg = cfg
        self.config_path = config_path
        self._overrides = overrides or {}
        self._open_sink = open_sink
        self._pin_factory = pin_factory
        self.notifier = notifier or Notifier()
        self._limits = limits or ConnectionLimits()
        self.hosts = HostNames(cfg.hostnames)
        self._clock = clock  # for session and lockout expiry on the staff page
        self._now = now  # local time of day: opening hours, quiet hours, the schedule
        self.history = History(
            cfg.history.file, keep_days=cfg.history.keep_days, write_every_s=cfg.history.write_every_s
        )
        self.events_log = EventLog(self.history)
        self.fleet = Fleet(self)  # MQTT and OSC (kiosk.fleet): off unless configured
        self.board = StatusBoard(self, writer_stuck_s=writer_stuck_s)
        self.supervisor = Supervisor(on_event=self.event)
        self.device = DeviceKeeper(
            player=lambda: self.player,
            fmt=lambda: self.engine.fmt,
            speaking=lambda: self.speaker.speaking,
            on_event=self.event,
        )
        # The visitor's path (cache reads and writes) gets threads of its own: a flood of status requests or
        # password checks on the default pool must never delay a press.
        self._audio_io = ThreadPoolExecutor(max_workers=2, thread_name_prefix="audio-io")
        self.engine_state: dict = {"reachable": None, "error": None, "checked_at": None}
        self._runners: list[web.AppRunner] = []
        self.warm: dict = {"total": 0, "done": 0, "failed": 0, "running": False, "text": "not started", "errors": []}
        self._gain = 1.0
        self.staff_port: int | None = None
        self.buttons: Buttons | None = None
        self.port: int | None = None
        self._api_token: str | None = None
        self._api_key: str | None = None
        self.last_pressed: dict[int, float] = {}  # GPIO pin → wall-clock time of its last press
        self.language_choice = LanguageChoice([lang.code for lang in cfg.languages], clock=clock)
        self.voices: dict[str, EngineChain] = {}
        self.config_problem: str | None = None  # the config file on disk, when it cannot be used
        self._config_signature = _file_signature(config_path)
        self.scheduler = Scheduler(
            config=lambda: self.cfg, speak=self._announce, claim=self.history.claim, on_event=self.event, now=now
        )

    # -- lifetime

    async def start(self) -> None:
        cfg = self.cfg
        self._api_token = _token(cfg)
        self._api_key = resolve_api_key(cfg.openai)
        await self.history.open()
        self.events_log.load(await self.history.recent_events())
        self.cache = await self._open_cache(cfg)
        self.engines, self.voices = build_chain(cfg), build_voices(cfg)
        self.player = self._new_player(cfg)
        self.announcer = await self._new_announcer(cfg)
        self.announcer.pin_lines(cfg.all_lines())
        self.speaker = Speaker(self.announcer, queue_limit=cfg.speech.queue_limit)
        self.speaker.on_change(self._on_request_change)
        self._limiter = RateLimiter(cfg.api.rate_limit_per_min)
        await self.device.open()
        await self._apply_volume(cfg)
        self._start_buttons(cfg.buttons)
        self.port = await self._serve(make_app(self, self.hosts), cfg.api.bind, cfg.api.port)
        if cfg.staff.enabled:
            staff_app = make_staff_app(self, clock=self._clock, hosts=self.hosts)
            self.staff_port = await self._serve(staff_app, cfg.staff.bind, cfg.staff.port)
        self._start_warm()
        run = self.supervisor.start
        run("speaker", lambda: self.speaker.run(beat=lambda: self.supervisor.beat("speaker")), stale_after_s=5.0)
        run("engine-probe", self._probe_engine_forever)
        if self.notifier.watchdog_s:
            run("watchdog", self._watchdog)
        run("device", self.device.run)
        run("history", self.history.run)
        run("schedule", self.scheduler.run)
        if self.config_path is not None:
            run("config-check", self._check_config_file)
        self._start_fleet(cfg)
        self.event(f"started: {len(cfg.phrases)} lines, {len(cfg.buttons)} buttons, engine {self.engine.name}")
        self.notifier.ready(self._status_text())

    async def stop(self) -> None:
        """Silence at once, then close everything; bounded so that SIGTERM ends the process within 1.5 s.

        Two rounds, each part of a round closed at the same time: first what can still start work (the
        supervised tasks, the web servers), then what they used (the device, the engines, the history)."""
        self.notifier.stopping()
        self.speaker.stop()
        if self.buttons:
            self.buttons.close()
        await _all_within(
            STOP_ROUND_S, self.supervisor.stop(timeout=STOP_ROUND_S), *(r.cleanup() for r in self._runners)
        )
        await _all_within(
            STOP_ROUND_S,
            asyncio.to_thread(self.player.close, STOP_ROUND_S),
            *(chain.aclose() for chain in (self.engines, *self.voices.values())),
            self.history.close(),  # what was recorded since the last commit
        )
        with contextlib.suppress(OSError, KioskError):
            await asyncio.to_thread(self.cache.close)  # last-use order, kept in memory between presses
        self._audio_io.shutdown(wait=False, cancel_futures=True)

    async def reload(self) -> bool:
        """Re-read the config file; an invalid one is reported (status, systemd) and the running config kept."""
        try:
            new = (await asyncio.to_thread(load_config, self.config_path)).with_overrides(**self._overrides)
            new_token = _token(new)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload rejected: %s", problem)
            self.event(f"reload rejected ({len(exc.problems)} problem(s)); keeping the running config")
            self._config_rejected(exc.problems)
            return False
        self.notifier.reloading(int(time.monotonic() * 1_000_000))
        try:
            await self._apply(self.cfg, new)
        except KioskError as exc:  # e.g. the new device does not open: say so, keep serving
            log.error("reload failed: %s", exc)
            self.event(f"reload failed: {exc}")
            self.notifier.ready(f"reload failed: {exc}")  # systemd waits for READY after RELOADING
            return False
        self._api_token = new_token
        self.cfg = new
        self._config_accepted()
        self.notifier.ready(self._status_text())
        self._start_warm()
        self.event("config reloaded")
        return True

    def _config_rejected(self, problems: list[str]) -> None:
        """The file on disk is broken: staff, the broker and systemd are told until a good reload, because the
        next restart would fail on it."""
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        self.config_problem = f"{problems[0]}{more}"
        self.notifier.status(self._status_text())
        self.fleet.status_changed()

    def _config_accepted(self) -> None:
        self._config_signature = _file_signature(self.config_path)
        if self.config_problem is not None:
            self.config_problem = None
            self.notifier.status(self._status_text())
            self.fleet.status_changed()

    def _status_text(self) -> str:
        """systemd's StatusText: what is wrong first, else where the speaker speaks."""
        if self.config_problem:
            return f"reload rejected: {self.config_problem} — running on the previous config"
        problem = self.device.problem
        speaker = f"speaker missing ({problem})" if problem else f"speaking on {self.cfg.audio.device}"
        return f"{speaker}; API on port {self.port}, staff page on {self.staff_port}"

    async def _check_config_file(self) -> None:
        """A config file edited but not reloaded is checked too: a broken one is reported before a restart trips
        on it, and the report clears once the file is good again (a supervised task)."""
        while True:
            await asyncio.sleep(CONFIG_CHECK_EVERY_S)
            signature = await asyncio.to_thread(_file_signature, self.config_path)
            if signature == self._config_signature:
                continue
            self._config_signature = signature
            try:
                await asyncio.to_thread(load_config, self.config_path)
            except ConfigError as exc:
                if self.config_problem is None:
                    self.event(f"the config file has {len(exc.problems)} problem(s); fix it before the next restart")
                self._config_rejected(exc.problems)
            else:
                self._config_accepted()

    async def _apply(self, old: Config, new: Config) -> None:
        new_key = resolve_api_key(new.openai)
        voice = (old.speech, old.openai, old.piper, old.audio, old.cache, old.languages, self._api_key)
        if voice != (new.speech, new.openai, new.piper, new.audio, new.cache, new.languages, new_key):
            self.speaker.stop()
            self.supervisor.cancel("warm")  # started again below, in the new voice
            await self.announcer.aclose()  # nothing may use the old engines once they are closed
            old_chains, old_player = (self.engines, *self.voices.values()), self.player
            self.engines, self.voices = build_chain(new), build_voices(new)
            self._api_key = new_key  # a key typed on the staff page is used from the next line on
            self.cache = await self._open_cache(new)
            if old.audio != new.audio:
                self.player = self._new_player(new)
                await asyncio.to_thread(old_player.close, 1.0)
            self.announcer = await self._new_announcer(new)
            self.speaker.announcer = self.announcer
            await self.device.open()
            for chain in old_chains:
                await chain.aclose()
        if old.languages != new.languages:
            self.language_choice = LanguageChoice([lang.code for lang in new.languages], clock=self._clock)
        self.announcer.pin_lines(new.all_lines())
        await self._apply_volume(new)
        self.speaker.queue_limit = new.speech.queue_limit
        self.hosts.configure(new.hostnames)
        self.history.keep_days = new.history.keep_days
        self._limiter = RateLimiter(new.api.rate_limit_per_min)
        if self.buttons:
            self.buttons.close()
        self._start_buttons(new.buttons)
        self._start_fleet(new)
        if (old.api.bind, old.api.port, old.history.file) != (new.api.bind, new.api.port, new.history.file):
            log.warning("api.bind, api.port and history.file changes take effect after a restart")

    def _start_fleet(self, cfg: Config) -> None:
        """The MQTT link and the OSC listener, each a supervised child while configured."""
        for name, job in self.fleet.jobs(cfg).items():
            if job is None:
                self.supervisor.cancel(name)
            else:
                self.supervisor.start(name, job)

    async def _open_cache(self, cfg: Config) -> PhraseCache:
        """The phrase cache; a read-only, full or missing cache directory is reported, never fatal."""
        cache = new_cache(cfg)
        try:
            await asyncio.to_thread(cache.open)
            stale = await asyncio.to_thread(cache.remove_stale_temps)
        except (KioskError, OSError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            self.event(f"phrase cache {cfg.cache.dir}: {reason}; lines already cached still play where readable")
            return cache
        if stale:
            self.event(f"removed {stale} unfinished cache file(s) left by a crash or power cut")
        return cache

    async def _new_announcer(self, cfg: Config) -> Announcer:
        return Announcer(
            engines=self.engines,
            cache=self.cache,
            player=self.player,
            io=self._audio_io,
            chime=self._load_chime(cfg),
            leveller=await asyncio.to_thread(build_leveller, cfg, self.cache),
            voices=self.voices,
        )

    def _load_chime(self, cfg: Config) -> Chime | None:
        """The chime; one that cannot be read is reported and left out, never a reason not to start."""
        try:
            return load_chime(cfg.audio.chime, self.engine.fmt)
        except ConfigError as exc:
            self.event(f"no chime: {exc.problems[0]}")
            return None

    def _new_player(self, cfg: Config) -> Player:
        player = build_player(cfg.audio, self._open_sink)
        player.start()
        return player

    def _start_buttons(self, configs: tuple[ButtonConfig, ...]) -> None:
        self.buttons = None
        if not configs:
            return
        self.buttons = Buttons(configs, self._on_press, loop=asyncio.get_running_loop(), pin_factory=self._pin_factory)
        if self.buttons.error:
            log.error("%s", self.buttons.error)
            self.event(self.buttons.error)
        elif self.buttons.simulated:
            log.warning("GPIO pins are simulated (mock pin factory): the buttons are not wired to anything")

    async def _serve(self, app: web.Application, bind: str, port: int) -> int:
        runner, bound_port = await serve(app, bind, port, self._limits)
        self._runners.append(runner)
        return bound_port

    async def _apply_volume(self, cfg: Config) -> None:
        """The device's mixer where it has one; otherwise software gain on every playback."""
        control = await asyncio.to_thread(set_volume, cfg.audio.device, cfg.audio.volume)
        self._gain = 1.0 if control else cfg.audio.volume / 100

    # -- requests

    def _on_press(self, button: ButtonConfig) -> None:
        try:
            self._press(button)
        except Exception:  # a press must never take the button bridge down; the next press works
            log.exception("handling a press on GPIO %d failed", button.pin)

    def _press(self, button: ButtonConfig) -> None:
        self.last_pressed[button.pin] = time.time()
        self.metrics.presses.labels(str(button.pin)).inc()
        self.fleet.pressed(button)
        if button.action == "stop":
            self.stop_speaking()
            return
        if button.action == "language":
            self._next_language(button)
            return
        if not self.cfg.is_open(self._now()):
            self._closed(button)
            return
        quiet = self.cfg.quiet_volume(self._now())
        if quiet == 0:
            self.metrics.rejected.labels("quiet_hours").inc()
            self._refused(f"button:{button.pin}", button.phrase, "quiet_hours")
            self.event(f"button {button.pin}: quiet hours, not spoken")
            return
        chosen = button.language or self.language_choice.current  # before the touch: a lapsed choice is over
        self.language_choice.touch(self._language_reset_s())
        text, language = self.cfg.text_for(button.phrase, chosen)
        try:
            self.speaker.request(
                text,
                origin=f"button:{button.pin}",
                policy=button.when_busy,
                phrase=button.phrase,
                gain=self._gain * (1.0 if quiet is None else quiet / 100),
                language=language,
            )
        except Rejected as exc:
            self.metrics.rejected.labels(exc.reason).inc()
            self._refused(f"button:{button.pin}", button.phrase, exc.reason)
            log.info("button %d: %s", button.pin, exc)

    def _next_language(self, button: ButtonConfig) -> None:
        """A language button: the next offered language, announced by its name in its own voice, its position
        flashed on the button's LED."""
        code, position = self.language_choice.cycle(button.reset_s)
        if self.buttons is not None:
            self.buttons.flash(button.pin, position)
        name = self.cfg.language(code).spoken_name
        self.event(f"button {button.pin}: language {code} ({name})")
        with contextlib.suppress(Rejected):
            self.speaker.request(name, origin=f"button:{button.pin}", policy="restart", gain=self._gain, language=code)

    def _language_reset_s(self) -> float:
        """How long a visitor's language choice lasts: the language button's setting."""
        return next((b.reset_s for b in self.cfg.buttons if b.action == "language"), 120)

    def _closed(self, button: ButtonConfig) -> None:
        """A press while the museum is closed: the closed line where one is set, else nothing."""
        phrase = self.cfg.closed_phrase
        if phrase is None:
            self.metrics.rejected.labels("closed").inc()
            self._refused(f"button:{button.pin}", button.phrase, "closed")
            return
        text, language = self.cfg.text_for(phrase, button.language or self.language_choice.current)
        with contextlib.suppress(Rejected):
            self.speaker.request(
                text, origin=f"button:{button.pin}", policy="ignore", phrase=phrase, gain=self._gain, language=language
            )

    def _announce(self, phrase: str, origin: str, volume: int) -> bool:
        """A scheduled announcement (after what is playing) or an invitation (only when nothing is)."""
        policy = "queue" if origin == "schedule" else "ignore"
        text, language = self.cfg.text_for(phrase)
        try:
            self.speaker.request(
                text, origin=origin, policy=policy, phrase=phrase, gain=self._gain * volume / 100, language=language
            )
        except Rejected as exc:
            self._refused(origin, phrase, exc.reason)
            return False
        return True

    def play(
        self,
        *,
        phrase: str | None,
        text: str | None,
        origin: str,
        policy: str | None = None,
        language: str | None = None,
    ) -> Request:
        """Queue a configured line (in `language`, else the default) or (where allowed) free text; raises Rejected
        saying why not."""
        text, language = self.line_text(phrase=phrase, text=text, language=language)
        try:
            return self.speaker.request(
                text,
                origin=origin,
                policy=policy or self.cfg.api.when_busy,
                phrase=phrase,
                gain=self._gain,
                language=language,
            )
        except Rejected as exc:
            self.metrics.rejected.labels(exc.reason).inc()
            self._refused(origin, phrase, exc.reason)
            raise

    def _refused(self, origin: str, phrase: str | None, reason: str) -> None:
        self.history.record(Outcome(time.time(), origin, phrase, None, None, reason))

    def line_text(self, *, phrase: str | None, text: str | None, language: str | None = None) -> tuple[str, str | None]:
        """The configured line in `language` (the default language's text where it has no translation), or free
        text where allowed, spoken in `language`'s voice; with the language heard. Raises Rejected saying why not."""
        if language is not None and self.cfg.language(language) is None:
            offered = ", ".join(lang.code for lang in self.cfg.languages) or "none"
            shown = "".join(c if c.isprintable() else "?" for c in language[:16])  # a client's text, echoed
            raise Rejected(f"'{shown}' is not an offered language (offered: {offered})", "unknown_language")
        if phrase is not None:
            if phrase not in self.cfg.phrases:
                raise Rejected(f"no phrase '{phrase}'", "unknown_phrase")
            return self.cfg.text_for(phrase, language)
        if not self.cfg.api.allow_text:
            raise Rejected("free text is disabled (api.allow_text: false)", "text_disabled")
        problem = text_problem(text)
        if problem:
            raise Rejected(problem, "bad_text")
        return text, language or self.cfg.default_language

    async def draft_translations(self, phrase: str) -> dict[str, str]:
        """Drafts of a configured line in every other offered language, from OpenAI's text model, for staff to
        review (nothing is saved). Raises KioskError saying why there are none."""
        others = {lang.code: lang.spoken_name for lang in self.cfg.languages[1:]}
        if not others:
            raise KioskError("offer two or more languages (languages: in the config) to translate lines")
        return await draft_translations(self.cfg.openai, self._api_key, self.cfg.phrases[phrase], others)

    async def listen(self, text: str, language: str | None = None):
        """(format, chunks) of a line for a listener over HTTP; see Announcer.listen."""
        return await self.announcer.listen(text, language)

    def identify_button(self, pin: int) -> str | None:
        """Blink the LED of the button on `pin`; None when it blinks, else why it cannot."""
        if not any(b.pin == pin for b in self.cfg.buttons):
            return f"there is no button on GPIO {pin}"
        if self.buttons is None or self.buttons.error:
            return "the buttons are not working (see the problems above)"
        if not self.buttons.blink(pin):
            return "this button has no LED; press it and watch the page instead"
        return None

    def voice_report(self) -> dict:
        """Which voice speaks lines that are not ready offline, and why, in plain words."""
        choice, primary = self.cfg.speech.engine, self.engine.name
        paused = [e for e in self.engines.state() if e["in_backoff"]]
        if primary == "openai" and paused and paused[0]["name"] == "openai":
            standing_in = len(self.engines.engines) > 1
            why = f"OpenAI is paused ({paused[0]['reason']})" + (
                "; the local voice stands in until it is back" if standing_in else ""
            )
            return {"engine": "piper" if standing_in else "openai", "why": why}
        if primary == "openai":
            return {"engine": "openai", "why": "an OpenAI key is set" if choice == "auto" else "OpenAI was chosen"}
        if choice == "piper":
            return {"engine": "piper", "why": "the local voice was chosen"}
        return {"engine": "piper", "why": "no OpenAI key is set; add one to use the OpenAI voices"}

    def local_voices(self) -> list[str]:
        """The local voices this speaker has: the bundled one, and the one configured if that is another."""
        if not piper_installed():
            return []
        return list(dict.fromkeys([BUNDLED_VOICE, self.cfg.piper.voice]))

    async def sample(self, engine: str, voice: str) -> SampleStream:
        """A short sample of `voice` for staff, started (raises KioskError saying why it cannot be)."""
        if engine == "openai":
            if not self._api_key:
                raise SpeechError("the OpenAI voices need a key: add one below first")
            speaker = OpenAIEngine(dataclasses.replace(self.cfg.openai, voice=voice), self._api_key)
            own = True
        else:
            current = next((e for e in self.engines.engines if e.name == "piper"), None)
            own = current is None or voice != self.cfg.piper.voice
            speaker = build_local_voice(dataclasses.replace(self.cfg.piper, voice=voice)) if own else current
        stream = SampleStream(speaker, VOICE_SAMPLE, close_engine=own)
        try:
            await stream.start()
        except BaseException:
            await stream.aclose()
            raise
        return stream

    def stop_speaking(self) -> bool:
        was_speaking = self.speaker.speaking or self.speaker.queued > 0
        self.speaker.stop()
        return was_speaking

    def find(self, request_id: str) -> Request | None:
        return self.speaker.history.get(request_id)

    def allow_trigger(self) -> float | None:
        retry_after = self._limiter.take()
        if retry_after is not None:
            self.metrics.rejected.labels("rate_limited").inc()
        return retry_after

    @property
    def api_token(self) -> str | None:
        return self._api_token

    def _on_request_change(self, req: Request) -> None:
        self.scheduler.activity()
        if self.buttons and req.origin.startswith("button:") and req.state != "queued":
            self.buttons.light(int(req.origin.split(":")[1]), req.state == "playing")  # a queued press changes nothing
        self.metrics.speaking.set(1 if self.speaker.speaking else 0)
        if req.state in ("done", "stopped", "failed", "dropped"):
            self.history.record(outcome_of(req))
        if req.state in ("done", "stopped", "failed") and req.trace is not None:
            self.board.finished(req)
            self.device.playback_failed()
        self.fleet.request_changed(req)

    def event(self, text: str) -> None:
        self.events_log.add(text)
        self.fleet.status_changed()

    # -- what the API and staff page read

    @property
    def metrics(self) -> Metrics:
        return self.board.metrics

    @property
    def device_problem(self) -> str | None:
        return self.device.problem

    @property
    def events(self):
        return self.events_log.events

    async def status(self) -> dict:
        return await self.board.status()

    def health(self) -> tuple[bool, str]:
        return self.board.health()

    def metrics_text(self) -> tuple[bytes, str]:
        return self.board.metrics_text()

    def warm_progress(self) -> dict:
        return dict(self.warm)

    async def history_rows(self, days: int) -> list[dict]:
        return await self.history.as_json(days)

    async def history_csv(self, days: int) -> str:
        return await self.history.csv(days)

    async def history_summary(self, days: int) -> dict:
        return await self.history.summary(days)

    @property
    def engine(self) -> SpeechEngine:
        return self.engines.primary

    def next_announcement(self) -> dict | None:
        return self.scheduler.next_announcement()

    def local_time(self) -> datetime:
        """The time of day as the museum keeps it (injected in tests)."""
        return self._now()

    # -- background work (supervised)

    async def _watchdog(self) -> None:
        """Ping systemd only while the speaker loop and the ALSA writer both show progress."""
        interval = self.notifier.watchdog_s / 2
        warned = False
        while True:
            ok, problem = self.health()
            if ok:
                self.notifier.watchdog()
                warned = False
            elif not warned:
                log.error("%s: withholding watchdog pings so that systemd restarts the service", problem)
                warned = True
            await asyncio.sleep(interval)

    def _start_warm(self) -> None:
        """Synthesize, in the background, every configured line the cache lacks in the current voice."""
        # A fresh record per run, set before the task starts: a cancelled run finishing late cannot touch it.
        self.warm = {
            "total": len(self.cfg.all_lines()),
            "done": 0,
            "failed": 0,
            "running": True,
            "text": "starting",
            "errors": [],
        }
        progress = self.warm
        self.supervisor.start("warm", lambda: self._warm(progress), restart=False)

    async def _warm(self, progress: dict) -> None:
        await warm(self.announcer, self.cfg.all_lines(), progress)
        await asyncio.to_thread(self.board.ready_lines)
        for error in progress["errors"]:
            self.event(f"could not prepare a line: {error}")

    async def _probe_engine_forever(self) -> None:
        for fallback in self.engines.engines[1:]:  # load the local voice now, not at the first failover
            with contextlib.suppress(KioskError):
                await fallback.probe()
        next_probe = 0.0
        while True:
            if time.monotonic() >= next_probe:
                await self.probe_engine()
                next_probe = time.monotonic() + ENGINE_PROBE_EVERY_S
            was_backed_off = self.engines.health[self.engine.name].in_backoff
            await self.engines.probe_due()
            if was_backed_off and not self.engines.health[self.engine.name].in_backoff:
                self.event(f"{self.engine.name} is back: replacing lines made by the fallback voice")
                self._start_warm()
            await asyncio.sleep(BACKOFF_CHECK_EVERY_S)

    async def probe_engine(self) -> None:
        if self.cfg.api.allow_text and isinstance(self.engine, OpenAIEngine):
            # Free text is rarely in the cache: load the SDK now rather than at such a line's first press.
            with contextlib.suppress(KioskError):
                await self.engine.preload()
        try:
            await self.engine.probe()
            self.engine_state.update(reachable=True, error=None)
        except KioskError as exc:
            if self.engine_state.get("error") != str(exc):
                self.event(f"engine {self.engine.name} unreachable: {exc}")
            self.engine_state.update(reachable=False, error=str(exc))
        self.engine_state["checked_at"] = time.time()


async def _all_within(timeout: float, *steps) -> None:
    """Run `steps` at the same time for at most `timeout` seconds; what is not done by then is abandoned."""
    tasks = [asyncio.ensure_future(step) for step in steps]
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            log.warning("while stopping: %s", task.exception())


def _file_signature(path: Path | None) -> tuple | None:
    """What changes when a file is edited (or replaced, or removed)."""
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError as exc:
        return ("missing", exc.errno)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _token(cfg: Config) -> str | None:
    return read_secret_file(cfg.api.token_file, "api.token_file") if cfg.api.token_file else None


async def run_service(cfg: Config, *, config_path: Path, overrides: dict) -> int:
    """`kiosk run`: serve until SIGTERM/SIGINT; SIGHUP reloads the config."""
    service = Service(cfg, config_path=config_path, overrides=overrides)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    reloads: set[asyncio.Task] = set()

    def reload() -> None:
        task = loop.create_task(service.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
    await service.start()
    log.info("kiosk %s running; API on http://%s:%s", __version__, cfg.api.bind, service.port)
    await stopping.wait()
    log.info("stopping")
    await service.stop()
    return 0
