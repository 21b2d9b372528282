"""Wiring and lifetime: config → cache, engine, player, speaker, buttons, HTTP API; systemd notify and watchdog."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib.util
import logging
import shutil
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from kiosk import __version__
from kiosk.alsa_output import AlsaOutput, set_volume
from kiosk.announcer import Announcer
from kiosk.buttons import Buttons
from kiosk.cache import PhraseCache
from kiosk.config import AudioConfig, ButtonConfig, Config, load_config, read_secret_file, resolve_api_key
from kiosk.errors import AudioError, ConfigError, KioskError, SpeechError
from kiosk.metrics import CONTENT_TYPE, Metrics
from kiosk.pcm import AudioFormat
from kiosk.player import Player, SinkOpener
from kiosk.speaker import Rejected, Request, Speaker
from kiosk.speech import SpeechEngine
from kiosk.speech.chain import EngineChain
from kiosk.speech.openai_engine import OpenAIEngine
from kiosk.staff.pages import make_staff_app
from kiosk.systemd import Notifier
from kiosk.warm import warm
from kiosk.web.api import RateLimiter, make_app

log = logging.getLogger(__name__)

#: A blocking ALSA write lasts one period; a writer silent this long is wedged and systemd should restart us.
WRITER_STUCK_S = 5.0
ENGINE_PROBE_EVERY_S = 60.0
BACKOFF_CHECK_EVERY_S = 5.0
DEVICE_RETRY_FIRST_S = 1.0
DEVICE_RETRY_MAX_S = 30.0
_FINISHED = ("done", "stopped", "failed")


def alsa_opener(audio: AudioConfig) -> SinkOpener:
    def open_sink(fmt: AudioFormat) -> AlsaOutput:
        return AlsaOutput(audio.device, fmt, audio.period_ms, audio.buffer_periods)

    return open_sink


def build_player(audio: AudioConfig, open_sink: SinkOpener | None = None) -> Player:
    """A player on the configured device (or `open_sink`), with the configured pre-roll."""
    return Player(open_sink or alsa_opener(audio), preroll_ms=audio.preroll_ms, preroll_max_ms=audio.preroll_max_ms)


def build_cache(cfg: Config) -> PhraseCache:
    return PhraseCache(cfg.cache.dir, int(cfg.cache.max_mb * 1_000_000)).open()


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
        from kiosk.speech.piper_engine import PiperEngine  # imported only when chosen: it loads onnxruntime

        return PiperEngine(cfg.piper)
    return OpenAIEngine(cfg.openai, key)


def build_chain(cfg: Config, clock=time.monotonic) -> EngineChain:
    """The primary engine, then the local voice as fallback ("auto": when installed and not already primary)."""
    primary = build_engine(cfg)
    engines = [primary]
    wanted = cfg.speech.fallback
    if wanted == "piper" and not piper_installed():
        raise SpeechError("speech.fallback is piper but Piper is not installed (pip install 'kiosk[piper]')")
    if wanted != "none" and primary.name != "piper" and piper_installed():
        from kiosk.speech.piper_engine import PiperEngine

        engines.append(PiperEngine(cfg.piper))
    return EngineChain(engines, failover_s=cfg.speech.failover_ms / 1000, clock=clock)


@contextlib.asynccontextmanager
async def open_announcer(cfg: Config, *, open_sink: SinkOpener | None = None) -> AsyncIterator[Announcer]:
    """An announcer whose device is already open; everything is closed again on exit."""
    cache = build_cache(cfg)
    engines = build_chain(cfg)
    player = build_player(cfg.audio, open_sink)
    player.start()
    try:
        announcer = Announcer(engines=engines, cache=cache, player=player)
        announcer.pin_lines(list(cfg.phrases.values()))
        await player.open_device(engines.primary.fmt)
        yield announcer
    finally:
        await asyncio.to_thread(player.close)
        await engines.aclose()


class Service:
    """The always-on speaker: `start`, `reload` (SIGHUP) and `stop` (SIGTERM)."""

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
        clock=time.monotonic,
    ):
        self.cfg = cfg
        self.config_path = config_path
        self._overrides = overrides or {}
        self._open_sink = open_sink
        self._pin_factory = pin_factory
        self.notifier = notifier or Notifier()
        self._writer_stuck_s = writer_stuck_s
        self._clock = clock  # for session and lockout expiry on the staff page
        self.metrics = Metrics()
        self.events: collections.deque[dict] = collections.deque(maxlen=100)
        self.engine_state: dict = {"reachable": None, "error": None, "checked_at": None}
        self._started = time.monotonic()
        self._tasks: list[asyncio.Task] = []
        self._runners: list[web.AppRunner] = []
        self._warm_task: asyncio.Task | None = None
        self.warm: dict = {"total": 0, "done": 0, "failed": 0, "running": False, "text": "not started", "errors": []}
        self._gain = 1.0
        self.underruns_total = 0
        self.staff_port: int | None = None
        self.buttons: Buttons | None = None
        self.port: int | None = None
        self._api_token: str | None = None
        self.device_problem: str | None = None

    # -- lifetime

    async def start(self) -> None:
        cfg = self.cfg
        self._api_token = _token(cfg)
        self.cache = build_cache(cfg)
        stale = await asyncio.to_thread(self.cache.remove_stale_temps)
        if stale:
            self.event(f"removed {stale} unfinished cache file(s) left by a crash or power cut")
        self.engines = build_chain(cfg)
        self.player = self._new_player(cfg)
        self.announcer = Announcer(engines=self.engines, cache=self.cache, player=self.player)
        self.announcer.pin_lines(list(cfg.phrases.values()))
        self.speaker = Speaker(self.announcer, queue_limit=cfg.speech.queue_limit)
        self.speaker.on_change(self._on_request_change)
        self._limiter = RateLimiter(cfg.api.rate_limit_per_min)
        await self._open_device()
        await self._apply_volume(cfg)
        self._start_buttons(cfg.buttons)
        self.port = await self._serve(make_app(self), cfg.api.bind, cfg.api.port)
        if cfg.staff.enabled:
            self.staff_port = await self._serve(make_staff_app(self, clock=self._clock), cfg.staff.bind, cfg.staff.port)
        self._start_warm()
        self._tasks = [
            asyncio.create_task(self.speaker.run(), name="speaker"),
            asyncio.create_task(self._probe_engine_forever(), name="engine-probe"),
            asyncio.create_task(self._watchdog(), name="watchdog"),
            asyncio.create_task(self._reopen_device_forever(), name="device"),
        ]
        self.event(f"started: {len(cfg.phrases)} lines, {len(cfg.buttons)} buttons, engine {self.engine.name}")
        device = cfg.audio.device
        speaker = f"speaker missing ({self.device_problem})" if self.device_problem else f"speaking on {device}"
        self.notifier.ready(f"{speaker}; API on port {self.port}, staff page on {self.staff_port}")

    async def stop(self) -> None:
        """Silence at once, then close everything; bounded so SIGTERM ends the process within 2 s."""
        self.notifier.stopping()
        self.speaker.stop()
        tasks = [*self._tasks, *([self._warm_task] if self._warm_task else [])]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=0.5)
        if self.buttons:
            self.buttons.close()
        if self._runners:
            await asyncio.wait([asyncio.create_task(r.cleanup()) for r in self._runners], timeout=1.0)
        await asyncio.to_thread(self.player.close, 0.5)
        await self.engines.aclose()

    async def reload(self) -> bool:
        """Re-read the config file; an invalid one is logged and the running config kept."""
        try:
            new = load_config(self.config_path).with_overrides(**self._overrides)
            new_token = _token(new)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload rejected: %s", problem)
            self.event(f"reload rejected ({len(exc.problems)} problem(s)); keeping the running config")
            return False
        self.notifier.reloading(int(time.monotonic() * 1_000_000))
        try:
            await self._apply(self.cfg, new)
        except KioskError as exc:  # e.g. the new device does not open: say so, keep serving
            log.error("reload failed: %s", exc)
            self.event(f"reload failed: {exc}")
            return False
        finally:
            self.notifier.ready("config reloaded")  # systemd waits for READY after RELOADING, whatever happened
        self._api_token = new_token
        self.cfg = new
        self._start_warm()
        self.event("config reloaded")
        return True

    async def _apply(self, old: Config, new: Config) -> None:
        if (old.speech, old.openai, old.piper, old.audio, old.cache) != (
            new.speech,
            new.openai,
            new.piper,
            new.audio,
            new.cache,
        ):
            self.speaker.stop()
            old_engines, old_player = self.engines, self.player
            self.engines = build_chain(new)
            self.cache = build_cache(new)
            if old.audio != new.audio:
                self.player = self._new_player(new)
                await asyncio.to_thread(old_player.close, 1.0)
            self.announcer = Announcer(engines=self.engines, cache=self.cache, player=self.player)
            self.speaker.announcer = self.announcer
            await self._open_device()
            await old_engines.aclose()
        self.announcer.pin_lines(list(new.phrases.values()))
        await self._apply_volume(new)
        self.speaker.queue_limit = new.speech.queue_limit
        self._limiter = RateLimiter(new.api.rate_limit_per_min)
        if self.buttons:
            self.buttons.close()
        self._start_buttons(new.buttons)
        if (old.api.bind, old.api.port) != (new.api.bind, new.api.port):
            log.warning("api.bind and api.port changes take effect after a restart")

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
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        try:
            await web.TCPSite(runner, bind, port).start()
        except OSError as exc:
            await runner.cleanup()
            raise KioskError(f"cannot listen on {bind}:{port}: {exc.strerror or exc}") from exc
        self._runners.append(runner)
        return runner.addresses[0][1]

    async def _apply_volume(self, cfg: Config) -> None:
        """The device's mixer where it has one; otherwise software gain on every playback."""
        control = await asyncio.to_thread(set_volume, cfg.audio.device, cfg.audio.volume)
        self._gain = 1.0 if control else cfg.audio.volume / 100

    # -- requests

    def _on_press(self, button: ButtonConfig) -> None:
        self.metrics.presses.labels(str(button.pin)).inc()
        if button.action == "stop":
            self.stop_speaking()
            return
        quiet = self.cfg.quiet_volume(time.strftime("%H:%M"))
        if quiet == 0:
            self.metrics.rejected.labels("quiet_hours").inc()
            self.event(f"button {button.pin}: quiet hours, not spoken")
            return
        try:
            self.speaker.request(
                self.cfg.phrases[button.phrase],
                origin=f"button:{button.pin}",
                policy=button.when_busy,
                phrase=button.phrase,
                gain=self._gain * (1.0 if quiet is None else quiet / 100),
            )
        except Rejected as exc:
            self.metrics.rejected.labels(exc.reason).inc()
            log.info("button %d: %s", button.pin, exc)

    def play(self, *, phrase: str | None, text: str | None, origin: str, policy: str | None = None) -> Request:
        """Queue a configured line or (where allowed) free text; raises Rejected saying why not."""
        text = self.line_text(phrase=phrase, text=text)
        try:
            return self.speaker.request(
                text, origin=origin, policy=policy or self.cfg.api.when_busy, phrase=phrase, gain=self._gain
            )
        except Rejected as exc:
            self.metrics.rejected.labels(exc.reason).inc()
            raise

    def line_text(self, *, phrase: str | None, text: str | None) -> str:
        """The configured line, or free text where allowed; raises Rejected saying why not."""
        if phrase is not None:
            if phrase not in self.cfg.phrases:
                raise Rejected(f"no phrase '{phrase}'", "unknown_phrase")
            return self.cfg.phrases[phrase]
        if not self.cfg.api.allow_text:
            raise Rejected("free text is disabled (api.allow_text: false)", "text_disabled")
        return text

    async def listen(self, text: str):
        """(format, chunks) of a line for a listener over HTTP; see Announcer.listen."""
        return await self.announcer.listen(text)

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
        if self.buttons and req.origin.startswith("button:") and req.state != "queued":
            self.buttons.light(int(req.origin.split(":")[1]), req.state == "playing")  # a queued press changes nothing
        self.metrics.speaking.set(1 if self.speaker.speaking else 0)
        if req.state in _FINISHED and req.trace is not None:
            self._record(req)
            if self.player.last_error is not None and self.device_problem is None:
                self.device_problem = str(self.player.last_error)
                self.event(f"speaker failed: {self.device_problem}; reopening it")

    def _record(self, req: Request) -> None:
        trace, m = req.trace, self.metrics
        m.lines.labels(req.state).inc()
        m.underruns.inc(trace.underruns)
        self.underruns_total += trace.underruns
        (m.cache_hits if trace.source == "cache" else m.cache_misses).inc()
        if trace.error and trace.source != "cache":
            m.engine_errors.labels(trace.source).inc()
        press_to_audio_ms = _press_to_audio_ms(req)
        if press_to_audio_ms is not None:
            m.first_audio.labels(trace.source).observe(press_to_audio_ms / 1000)
        what = req.phrase or f"{len(req.text)} characters of text"
        self.event(f"{req.origin}: {what}: {req.state}" + (f" ({trace.error})" if trace.error else ""))

    def event(self, text: str) -> None:
        self.events.append({"time": time.time(), "text": text})
        log.info("%s", text)

    # -- status, health, metrics

    async def status(self) -> dict:
        ready_ids = await asyncio.to_thread(self._ready_lines)
        speaker, trace = self.speaker, self.speaker.last_trace
        last = next((r for r in reversed(speaker.history.values()) if r.trace and r.started_at), None)
        disk = await asyncio.to_thread(shutil.disk_usage, self.cache.root)
        uptime = round(time.monotonic() - self._started)
        return {
            "version": __version__,
            "state": "speaking" if speaker.speaking else "idle",
            "playing": speaker.current.summary() if speaker.current else None,
            "queued": speaker.queued,
            "last_trace": trace.__dict__ if trace else None,
            "last_press_to_audio_ms": _press_to_audio_ms(last) if last else None,
            "underruns_total": self.underruns_total,
            "cache": {"lines_ready": len(ready_ids), "lines_configured": len(self.cfg.phrases), "ready_ids": ready_ids},
            "engine": {"name": self.engine.name, **self.engine_state, "chain": self.engines.state()},
            "speaker_problem": self.device_problem,
            "cache_problem": self.announcer.cache_problem,
            "device": self.cfg.audio.device,
            "buttons": {
                "count": len(self.cfg.buttons),
                "factory": self.buttons.factory if self.buttons else None,
                "simulated": bool(self.buttons and self.buttons.simulated),
                "error": self.buttons.error if self.buttons else None,
            },
            "disk_free_gb": round(disk.free / 1e9, 1),
            "uptime_s": uptime,
            "uptime_text": _duration(uptime),
            "warm": dict(self.warm),
            "problems": self._problems(),
            "events": [{**e, "clock": time.strftime("%H:%M:%S", time.localtime(e["time"]))} for e in self.events][-20:],
        }

    def _problems(self) -> list[str]:
        """What staff should know about now, in plain words."""
        problems = []
        if self.device_problem:
            problems.append(f"Speaker missing or failing: {self.device_problem}. Retrying.")
        for engine in self.engines.state():
            if engine["in_backoff"]:
                name, reason, wait = engine["name"], engine["reason"], engine["next_check_s"]
                problems.append(f"Voice '{name}' paused: {reason}. Checking again in {wait} s.")
        if self.announcer.cache_problem:
            problems.append(f"New lines cannot be kept for offline use: {self.announcer.cache_problem}")
        if self.buttons and self.buttons.error:
            problems.append(self.buttons.error)
        return problems

    def _ready_lines(self) -> list[str]:
        """Ids of the configured lines whose audio is in the cache (in the current voice or a fallback's)."""
        ready = [
            pid
            for pid, text in self.cfg.phrases.items()
            if any(self.cache.contains(key) for key in self.announcer.keys_for(text))
        ]
        self.metrics.lines_ready.set(len(ready))
        self.metrics.lines_configured.set(len(self.cfg.phrases))
        return ready

    def warm_progress(self) -> dict:
        return dict(self.warm)

    def health(self) -> tuple[bool, str]:
        stuck = time.monotonic() - self.player.heartbeat
        if stuck > self._writer_stuck_s:
            return False, f"audio writer stuck for {stuck:.0f} s"
        return True, ""

    def metrics_text(self) -> tuple[bytes, str]:
        self._ready_lines()
        return self.metrics.render(), CONTENT_TYPE

    # -- background work

    async def _watchdog(self) -> None:
        """Ping systemd from the event loop, but only while the ALSA writer is alive too."""
        if not self.notifier.watchdog_s:
            return
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
        if self._warm_task is not None:
            self._warm_task.cancel()
        # A fresh record per run, set before the task starts: a cancelled run finishing late cannot touch it.
        self.warm = {
            "total": len(self.cfg.phrases),
            "done": 0,
            "failed": 0,
            "running": True,
            "text": "starting",
            "errors": [],
        }
        self._warm_task = asyncio.create_task(self._warm(self.warm), name="warm")

    async def _warm(self, progress: dict) -> None:
        await warm(self.announcer, list(self.cfg.phrases.values()), progress)
        await asyncio.to_thread(self._ready_lines)
        for error in progress["errors"]:
            self.event(f"could not prepare a line: {error}")

    @property
    def engine(self) -> SpeechEngine:
        return self.engines.primary

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

    async def _open_device(self) -> None:
        """Open the audio device; when it is missing the service stays up, says so and keeps trying."""
        try:
            await self.player.open_device(self.engine.fmt)
        except AudioError as exc:
            if self.device_problem is None:
                self.event(f"speaker missing: {exc}")
            self.device_problem = str(exc)
        else:
            if self.device_problem is not None:
                self.event("speaker back")
            self.device_problem = None

    async def _reopen_device_forever(self) -> None:
        pause = DEVICE_RETRY_FIRST_S
        while True:
            await asyncio.sleep(pause)
            if self.device_problem is None:
                pause = DEVICE_RETRY_FIRST_S
                continue
            if not self.speaker.speaking:
                await self._open_device()
            pause = min(DEVICE_RETRY_MAX_S, pause * 2) if self.device_problem else DEVICE_RETRY_FIRST_S

    async def probe_engine(self) -> None:
        try:
            await self.engine.probe()
            self.engine_state.update(reachable=True, error=None)
        except KioskError as exc:
            if self.engine_state.get("error") != str(exc):
                self.event(f"engine {self.engine.name} unreachable: {exc}")
            self.engine_state.update(reachable=False, error=str(exc))
        self.engine_state["checked_at"] = time.time()


def _press_to_audio_ms(req: Request) -> float | None:
    if req.trace is None or req.trace.first_audio_ms is None or req.started_at is None:
        return None
    return round((req.started_at - req.requested_at) * 1000 + req.trace.first_audio_ms, 1)


def _duration(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    return (f"{days} d " if days else "") + f"{hours} h {rest // 60} min"


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
