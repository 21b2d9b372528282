"""Wiring and lifetime: build the parts (kiosk.parts) from the config, hand the adapters the app interface
(kiosk.app), start, reload (SIGHUP) and stop (SIGTERM).

What a press means is in kiosk.presses, the background work in kiosk.upkeep, the reports in kiosk.status, the
audio device in kiosk.device; how each part is built in kiosk.build.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

from aiohttp import web

from kiosk import __version__
from kiosk.alsa_output import set_volume
from kiosk.announcer import Announcer
from kiosk.app import App
from kiosk.build import api_token, build_chain, build_player, build_voices, new_announcer, open_cache, read_secrets
from kiosk.cache import PhraseCache
from kiosk.captions.feed import CaptionFeed
from kiosk.captions.web import make_captions_app
from kiosk.clock import Probe, TrustedClock
from kiosk.config import Config, load_config, resolve_api_key
from kiosk.device import DeviceKeeper
from kiosk.errors import ConfigError, KioskError
from kiosk.events import EventLog
from kiosk.fleet import Fleet
from kiosk.history import History
from kiosk.languages import LanguageChoice
from kiosk.parts import Parts
from kiosk.player import Player, SinkOpener
from kiosk.presses import Presses
from kiosk.ratelimit import RateLimiter
from kiosk.schedule import Scheduler
from kiosk.speaker import Speaker
from kiosk.staff.app import make_staff_app
from kiosk.status import WRITER_STUCK_S, StatusBoard
from kiosk.supervisor import Supervisor, all_within
from kiosk.systemd import Notifier
from kiosk.upkeep import Upkeep
from kiosk.visitor import VisitorVolume
from kiosk.web.api import make_app
from kiosk.web.hosts import HostNames
from kiosk.web.server import ConnectionLimits, serve

log = logging.getLogger(__name__)

STOP_ROUND_S = 0.5  # SIGTERM: two rounds of closing, so the process is gone within 1.5 s


class Service:
    """The always-on speaker: `start`, `reload` (SIGHUP) and `stop` (SIGTERM). `parts` are its live parts, `app`
    the interface every adapter gets."""

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
        clock_probe: Probe | None = None,
    ):
        self._overrides = overrides or {}
        self._open_sink = open_sink
        self._pin_factory = pin_factory
        self.notifier = notifier or Notifier()
        self._limits = limits or ConnectionLimits()
        self._clock = clock  # session and lockout expiry on the staff page, the visitor's language choice
        self.hosts = HostNames(cfg.hostnames)
        history = History(cfg.history.file, keep_days=cfg.history.keep_days, write_every_s=cfg.history.write_every_s)
        events = EventLog(history)
        self.parts = p = Parts(
            cfg=cfg,
            config_path=config_path,
            history=history,
            event_log=events,
            supervisor=Supervisor(on_event=lambda text: self.app.event(text)),
            language_choice=LanguageChoice([lang.code for lang in cfg.languages], clock=clock),
            visitor_volume=VisitorVolume(clock=clock),
            captions=CaptionFeed(title=cfg.captions.title, prompt=cfg.captions.prompt),
            clock=TrustedClock(probe=clock_probe, enabled=cfg.clock.check, on_change=self._clock_changed),
        )
        self.board = StatusBoard(p, on_event=lambda text: self.app.event(text), now=now, writer_stuck_s=writer_stuck_s)
        self.app = App(p, self.board, reload=self.reload, now=now)
        self.fleet = Fleet(self.app)  # MQTT and OSC (kiosk.fleet): off unless configured
        self.app.on_status_change(self.fleet.status_changed)
        self.board.add_reporter(self.fleet.status, self.fleet.problems)
        self.presses = Presses(self.app, p, on_pressed=self.fleet.pressed, clock=clock)
        self.upkeep = Upkeep(p, self.app, self.notifier)
        p.device = DeviceKeeper(
            player=lambda: p.player,
            fmt=lambda: p.engine.fmt,
            speaking=lambda: p.speaker.speaking,
            on_event=self.app.event,
        )
        p.scheduler = Scheduler(
            config=lambda: p.cfg,
            speak=self.presses.announce,
            claim=history.claim,
            on_event=self.app.event,
            now=now,
            trusted=p.clock.trusted,
            monotonic=clock,
        )
        # The visitor's path (cache reads and writes) gets threads of its own: a flood of status requests or
        # password checks on the default pool must never delay a press.
        self._audio_io = ThreadPoolExecutor(max_workers=2, thread_name_prefix="audio-io")
        self._runners: list[web.AppRunner] = []

    def __getattr__(self, name: str):
        """Tests, the bench and the CLI read the live parts and the app through the service (`service.speaker`,
        `service.play(...)`); adapters never do: they are handed `app`."""
        if name in ("parts", "app"):  # not built yet (a failed __init__): never recurse
            raise AttributeError(name)
        for holder in (self.parts, self.app):
            with contextlib.suppress(AttributeError):
                return getattr(holder, name)
        raise AttributeError(f"'Service' has no attribute {name!r}")

    # -- lifetime

    async def start(self) -> None:
        p, cfg = self.parts, self.parts.cfg
        p.api_token, p.api_key, p.secret_problems = read_secrets(cfg)
        await p.history.open()
        p.history.clock_trusted = p.clock.trusted
        p.clock.not_before(await p.history.newest_time())
        if not await asyncio.to_thread(p.clock.check):
            self.app.event("clock not set: no announcements, and opening hours as clock.untrusted_hours says")
        p.event_log.load(await p.history.recent_events())
        p.history.on_notice = self.app.event  # a damaged database set aside while running
        p.cache = await self._open_cache(cfg)
        p.engines, p.voices = build_chain(cfg), build_voices(cfg)
        p.player = self._new_player(cfg)
        p.announcer = await self._new_announcer(cfg)
        p.announcer.pin_lines(cfg.all_lines())
        await asyncio.to_thread(p.announcer.recheck_cache)  # a read-only or full cache is told at once
        if p.announcer.cache_problem:
            self.app.event(f"{p.announcer.cache_problem}; lines already cached still play where readable")
        p.speaker = Speaker(p.announcer, queue_limit=cfg.speech.queue_limit)
        for listener in (self.presses.request_changed, self.board.request_changed, self.fleet.request_changed):
            p.speaker.on_change(listener)
        p.limiter = RateLimiter(cfg.api.rate_limit_per_min)
        await p.device.open()
        await self._apply_volume(cfg)
        self.presses.connect(cfg.buttons, pin_factory=self._pin_factory, presence=cfg.presence, knob=cfg.knob)
        p.port = await self._serve(make_app(self.app, self.hosts), cfg.api.bind, cfg.api.port)
        if cfg.staff.enabled:
            staff_app = make_staff_app(self.app, clock=self._clock, hosts=self.hosts)
            p.staff_port = await self._serve(staff_app, cfg.staff.bind, cfg.staff.port)
        if cfg.captions.enabled:
            p.captions_port = await self._serve_captions(cfg)
        self.upkeep.start_warm()
        self._start_upkeep()
        self._start_fleet(cfg)
        self.app.event(f"started: {len(cfg.phrases)} lines, {len(cfg.buttons)} buttons, engine {p.engine.name}")
        self.notifier.ready(self.upkeep.status_text())

    def _start_upkeep(self) -> None:
        p, upkeep, run = self.parts, self.upkeep, self.parts.supervisor.start
        run("speaker", lambda: p.speaker.run(beat=lambda: p.supervisor.beat("speaker")), stale_after_s=5.0)
        run("engine-probe", upkeep.probe_engines_forever)
        run("cache", upkeep.keep_cache)
        if self.notifier.watchdog_s:
            run("watchdog", upkeep.watchdog)
        run("device", p.device.run)
        run("history", p.history.run)
        run("schedule", p.scheduler.run)
        run("clock", p.clock.run)
        if p.config_path is not None:
            run("config-check", upkeep.check_config_file)

    async def stop(self) -> None:
        """Silence at once, then close everything; bounded so that SIGTERM ends the process within 1.5 s.

        Two rounds, each part of a round closed at the same time: first what can still start work (the
        supervised tasks, the web servers), then what they used (the device, the engines, the history)."""
        p = self.parts
        self.notifier.stopping()
        p.speaker.stop()
        self.presses.disconnect()
        p.captions.close()
        await all_within(
            STOP_ROUND_S,
            p.supervisor.stop(timeout=STOP_ROUND_S),
            self.fleet.updates.stop(),
            *(r.cleanup() for r in self._runners),
        )
        await all_within(
            STOP_ROUND_S,
            asyncio.to_thread(p.player.close, STOP_ROUND_S),
            *(chain.aclose() for chain in (p.engines, *p.voices.values())),
            p.history.close(),  # what was recorded since the last commit
        )
        with contextlib.suppress(OSError, KioskError):
            await asyncio.to_thread(p.cache.close)  # last-use order, kept in memory between presses
        self._audio_io.shutdown(wait=False, cancel_futures=True)

    async def reload(self) -> bool:
        """Re-read the config file; an invalid one is reported (status, systemd) and the running config kept."""
        p = self.parts
        try:
            new = (await asyncio.to_thread(load_config, p.config_path)).with_overrides(**self._overrides)
            new_token = api_token(new)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload rejected: %s", problem)
            self.app.event(f"reload rejected ({len(exc.problems)} problem(s)); keeping the running config")
            self.upkeep.config_rejected(exc.problems)
            return False
        self.notifier.reloading(int(time.monotonic() * 1_000_000))
        try:
            await self._apply(p.cfg, new)
        except KioskError as exc:  # e.g. the new device does not open: say so, keep serving
            log.error("reload failed: %s", exc)
            self.app.event(f"reload failed: {exc}")
            self.notifier.ready(f"reload failed: {exc}")  # systemd waits for READY after RELOADING
            return False
        p.api_token, p.cfg = new_token, new
        p.secret_problems = []  # the reload read both files
        self.upkeep.config_accepted()
        self.notifier.ready(self.upkeep.status_text())
        self.upkeep.start_warm()
        self.app.event("config reloaded")
        return True

    async def _apply(self, old: Config, new: Config) -> None:
        p = self.parts
        new_key = resolve_api_key(new.openai)
        voice = (old.speech, old.openai, old.piper, old.audio, old.cache, old.languages, p.api_key)
        if voice != (new.speech, new.openai, new.piper, new.audio, new.cache, new.languages, new_key):
            await self._replace_voice(old, new, new_key)
        if old.languages != new.languages:
            p.language_choice = LanguageChoice([lang.code for lang in new.languages], clock=self._clock)
        p.announcer.pin_lines(new.all_lines())
        await self._apply_volume(new)
        p.speaker.queue_limit = new.speech.queue_limit
        self.hosts.configure(new.hostnames)
        p.captions.configure(title=new.captions.title, prompt=new.captions.prompt)
        p.history.keep_days = new.history.keep_days
        p.clock.enabled = new.clock.check
        p.limiter.set_rate(new.api.rate_limit_per_min)
        self.presses.connect(new.buttons, pin_factory=self._pin_factory, presence=new.presence, knob=new.knob)
        self._start_fleet(new)
        servers = ("api.bind", "api.port", "history.file", "captions.enabled", "captions.bind", "captions.port")
        if any(_setting(old, key) != _setting(new, key) for key in servers):
            log.warning("%s changes take effect after a restart", ", ".join(servers))

    async def _replace_voice(self, old: Config, new: Config, new_key: str | None) -> None:
        """New engines, cache and (where the audio settings changed) player; nothing uses the old ones after."""
        p = self.parts
        p.speaker.stop()
        p.supervisor.cancel("warm")  # started again after the reload, in the new voice
        await p.announcer.aclose()
        old_chains, old_player = (p.engines, *p.voices.values()), p.player
        p.engines, p.voices = build_chain(new), build_voices(new)
        p.api_key = new_key  # a key typed on the staff page is used from the next line on
        p.cache = await self._open_cache(new)
        if old.audio != new.audio:
            p.player = self._new_player(new)
            await asyncio.to_thread(old_player.close, 1.0)
        p.announcer = await self._new_announcer(new)
        await asyncio.to_thread(p.announcer.recheck_cache)
        p.speaker.announcer = p.announcer
        await p.device.open()
        for chain in old_chains:
            await chain.aclose()

    def _clock_changed(self, trusted: bool) -> None:
        self.app.event("the clock is set: announcements go on from now" if trusted else "clock not set")

    def _start_fleet(self, cfg: Config) -> None:
        """The MQTT link and the OSC listener, each a supervised child while configured."""
        for name, job in self.fleet.jobs(cfg).items():
            if job is None:
                self.parts.supervisor.cancel(name)
            else:
                self.parts.supervisor.start(name, job)

    async def _open_cache(self, cfg: Config) -> PhraseCache:
        return await open_cache(cfg, on_event=self.app.event)

    async def _new_announcer(self, cfg: Config) -> Announcer:
        p = self.parts
        return await new_announcer(
            cfg, p.engines, p.voices, p.cache, p.player, io=self._audio_io, on_event=self.app.event, captions=p.captions
        )

    def _new_player(self, cfg: Config) -> Player:
        player = build_player(cfg.audio, self._open_sink)
        player.start()
        return player

    async def _serve_captions(self, cfg: Config) -> int | None:
        """The public captions server; the speaker starts without it when its port is taken (and says so)."""
        app = make_captions_app(self.app, hosts=self.hosts)
        try:
            return await self._serve(app, cfg.captions.bind, cfg.captions.port)
        except KioskError as exc:  # the port is taken, or the address is not this machine's
            log.warning("live captions are off: %s", exc)
            why = "another program uses their port" if "in use" in str(exc) else "their address is not this speaker's"
            self.app.event(f"Live captions are off: {why} (captions: in the config says where they are served)")
            return None

    async def _serve(self, app: web.Application, bind: str, port: int) -> int:
        runner, bound_port = await serve(app, bind, port, self._limits)
        self._runners.append(runner)
        return bound_port

    async def _apply_volume(self, cfg: Config) -> None:
        """The device's mixer where it has one; otherwise software gain on every playback."""
        control = await asyncio.to_thread(set_volume, cfg.audio.device, cfg.audio.volume)
        self.parts.gain = 1.0 if control else cfg.audio.volume / 100


def _setting(cfg: Config, dotted: str) -> object:
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)


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
    # What start built (the SDK, engines, templates) lives as long as the process: moved out of the collector's
    # way, each full collection scans only what came later, so the event loop pauses less for it.
    gc.freeze()
    log.info("kiosk %s running; API on http://%s:%s", __version__, cfg.api.bind, service.parts.port)
    await stopping.wait()
    log.info("stopping")
    await service.stop()
    return 0
