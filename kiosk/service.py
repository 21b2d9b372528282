"""Wiring and lifetime: config → cache, engine, player, speaker, buttons, HTTP API; systemd notify and watchdog."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib.util
import logging
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from kiosk import __version__
from kiosk.alsa_output import AlsaOutput
from kiosk.announcer import Announcer
from kiosk.buttons import Buttons
from kiosk.cache import PhraseCache
from kiosk.config import AudioConfig, ButtonConfig, Config, load_config, read_secret_file, resolve_api_key
from kiosk.errors import ConfigError, KioskError, SpeechError
from kiosk.metrics import CONTENT_TYPE, Metrics
from kiosk.pcm import AudioFormat
from kiosk.player import Player, SinkOpener
from kiosk.speaker import Rejected, Request, Speaker
from kiosk.speech import SpeechEngine
from kiosk.speech.openai_engine import OpenAIEngine
from kiosk.systemd import Notifier
from kiosk.web.api import RateLimiter, make_app

log = logging.getLogger(__name__)

#: A blocking ALSA write lasts one period; a writer silent this long is wedged and systemd should restart us.
WRITER_STUCK_S = 5.0
ENGINE_PROBE_EVERY_S = 60.0
_FINISHED = ("done", "stopped", "failed")


def alsa_opener(audio: AudioConfig) -> SinkOpener:
    def open_sink(fmt: AudioFormat) -> AlsaOutput:
        return AlsaOutput(audio.device, fmt, audio.period_ms, audio.buffer_periods)

    return open_sink


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


@contextlib.asynccontextmanager
async def open_announcer(cfg: Config, *, open_sink: SinkOpener | None = None) -> AsyncIterator[Announcer]:
    """An announcer whose device is already open; everything is closed again on exit."""
    cache = build_cache(cfg)
    engine = build_engine(cfg)
    player = Player(open_sink or alsa_opener(cfg.audio), preroll_ms=cfg.audio.preroll_ms)
    player.start()
    try:
        announcer = Announcer(engine=engine, cache=cache, player=player)
        announcer.pin_lines(list(cfg.phrases.values()))
        await player.open_device(engine.fmt)
        yield announcer
    finally:
        await asyncio.to_thread(player.close)
        await engine.aclose()


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
    ):
        self.cfg = cfg
        self._config_path = config_path
        self._overrides = overrides or {}
        self._open_sink = open_sink
        self._pin_factory = pin_factory
        self.notifier = notifier or Notifier()
        self._writer_stuck_s = writer_stuck_s
        self.metrics = Metrics()
        self.events: collections.deque[dict] = collections.deque(maxlen=100)
        self.engine_state: dict = {"reachable": None, "error": None, "checked_at": None}
        self._started = time.monotonic()
        self._tasks: list[asyncio.Task] = []
        self._runner: web.AppRunner | None = None
        self.buttons: Buttons | None = None
        self.port: int | None = None
        self._api_token: str | None = None

    # -- lifetime

    async def start(self) -> None:
        cfg = self.cfg
        self._api_token = _token(cfg)
        self.cache = build_cache(cfg)
        stale = await asyncio.to_thread(self.cache.remove_stale_temps)
        if stale:
            self.event(f"removed {stale} unfinished cache file(s) left by a crash or power cut")
        self.engine = build_engine(cfg)
        self.player = self._new_player(cfg)
        self.announcer = Announcer(engine=self.engine, cache=self.cache, player=self.player)
        self.announcer.pin_lines(list(cfg.phrases.values()))
        self.speaker = Speaker(self.announcer, queue_limit=cfg.speech.queue_limit)
        self.speaker.on_change(self._on_request_change)
        self._limiter = RateLimiter(cfg.api.rate_limit_per_min)
        await self.player.open_device(self.engine.fmt)
        self._start_buttons(cfg.buttons)
        await self._start_web(cfg)
        self._tasks = [
            asyncio.create_task(self.speaker.run(), name="speaker"),
            asyncio.create_task(self._probe_engine_forever(), name="engine-probe"),
            asyncio.create_task(self._watchdog(), name="watchdog"),
        ]
        self.event(f"started: {len(cfg.phrases)} lines, {len(cfg.buttons)} buttons, engine {self.engine.name}")
        self.notifier.ready(f"speaking on {cfg.audio.device}; API on {cfg.api.bind}:{self.port}")

    async def stop(self) -> None:
        """Silence at once, then close everything; bounded so SIGTERM ends the process within 2 s."""
        self.notifier.stopping()
        self.speaker.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.wait(self._tasks, timeout=0.5)
        if self.buttons:
            self.buttons.close()
        if self._runner:
            await asyncio.wait_for(self._runner.cleanup(), timeout=1.0)
        await asyncio.to_thread(self.player.close, 0.5)
        await self.engine.aclose()

    async def reload(self) -> bool:
        """Re-read the config file; an invalid one is logged and the running config kept."""
        try:
            new = load_config(self._config_path).with_overrides(**self._overrides)
            new_token = _token(new)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload rejected: %s", problem)
            self.event(f"reload rejected ({len(exc.problems)} problem(s)); keeping the running config")
            return False
        self.notifier.reloading(int(time.monotonic() * 1_000_000))
        await self._apply(self.cfg, new)
        self._api_token = new_token
        self.cfg = new
        self.event("config reloaded")
        self.notifier.ready("config reloaded")
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
            old_engine, old_player = self.engine, self.player
            self.engine = build_engine(new)
            self.cache = build_cache(new)
            if old.audio != new.audio:
                self.player = self._new_player(new)
                await asyncio.to_thread(old_player.close, 1.0)
            self.announcer = Announcer(engine=self.engine, cache=self.cache, player=self.player)
            self.speaker.announcer = self.announcer
            await self.player.open_device(self.engine.fmt)
            await old_engine.aclose()
        self.announcer.pin_lines(list(new.phrases.values()))
        self.speaker.queue_limit = new.speech.queue_limit
        self._limiter = RateLimiter(new.api.rate_limit_per_min)
        if self.buttons:
            self.buttons.close()
        self._start_buttons(new.buttons)
        if (old.api.bind, old.api.port) != (new.api.bind, new.api.port):
            log.warning("api.bind and api.port changes take effect after a restart")

    def _new_player(self, cfg: Config) -> Player:
        player = Player(self._open_sink or alsa_opener(cfg.audio), preroll_ms=cfg.audio.preroll_ms)
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

    async def _start_web(self, cfg: Config) -> None:
        self._runner = web.AppRunner(make_app(self), access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, cfg.api.bind, cfg.api.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise KioskError(f"cannot listen on {cfg.api.bind}:{cfg.api.port}: {exc.strerror or exc}") from exc
        self.port = self._runner.addresses[0][1]

    # -- requests

    def _on_press(self, button: ButtonConfig) -> None:
        self.metrics.presses.labels(str(button.pin)).inc()
        if button.action == "stop":
            self.stop_speaking()
            return
        try:
            self.speaker.request(
                self.cfg.phrases[button.phrase],
                origin=f"button:{button.pin}",
                policy=button.when_busy,
                phrase=button.phrase,
            )
        except Rejected as exc:
            self.metrics.rejected.labels(exc.reason).inc()
            log.info("button %d: %s", button.pin, exc)

    def play(self, *, phrase: str | None, text: str | None, origin: str) -> Request:
        """Queue a configured line or (where allowed) free text; raises Rejected saying why not."""
        if phrase is not None:
            if phrase not in self.cfg.phrases:
                raise Rejected(f"no phrase '{phrase}'", "unknown_phrase")
            text = self.cfg.phrases[phrase]
        elif not self.cfg.api.allow_text:
            raise Rejected("free text is disabled (api.allow_text: false)", "text_disabled")
        try:
            return self.speaker.request(text, origin=origin, policy=self.cfg.api.when_busy, phrase=phrase)
        except Rejected as exc:
            self.metrics.rejected.labels(exc.reason).inc()
            raise

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
        if self.buttons and req.origin.startswith("button:"):
            self.buttons.light(int(req.origin.split(":")[1]), req.state == "playing")
        self.metrics.speaking.set(1 if req.state == "playing" else 0)
        if req.state in _FINISHED and req.trace is not None:
            self._record(req)

    def _record(self, req: Request) -> None:
        trace, m = req.trace, self.metrics
        m.lines.labels(req.state).inc()
        m.underruns.inc(trace.underruns)
        (m.cache_hits if trace.source == "cache" else m.cache_misses).inc()
        if trace.error and trace.source != "cache":
            m.engine_errors.labels(trace.source).inc()
        if trace.first_audio_ms is not None and req.started_at is not None:
            m.first_audio.labels(trace.source).observe(req.started_at - req.requested_at + trace.first_audio_ms / 1000)
        what = req.phrase or f"{len(req.text)} characters of text"
        self.event(f"{req.origin}: {what}: {req.state}" + (f" ({trace.error})" if trace.error else ""))

    def event(self, text: str) -> None:
        self.events.append({"time": time.time(), "text": text})
        log.info("%s", text)

    # -- status, health, metrics

    async def status(self) -> dict:
        ready, configured = await asyncio.to_thread(self._coverage)
        speaker = self.speaker
        return {
            "version": __version__,
            "state": "speaking" if speaker.speaking else "idle",
            "playing": speaker.current.summary() if speaker.current else None,
            "queued": speaker.queued,
            "last_trace": speaker.last_trace.__dict__ if speaker.last_trace else None,
            "cache": {"lines_ready": ready, "lines_configured": configured},
            "engine": {"name": self.engine.name, **self.engine_state},
            "device": self.cfg.audio.device,
            "buttons": {
                "count": len(self.cfg.buttons),
                "factory": self.buttons.factory if self.buttons else None,
                "simulated": bool(self.buttons and self.buttons.simulated),
                "error": self.buttons.error if self.buttons else None,
            },
            "uptime_s": round(time.monotonic() - self._started),
            "events": list(self.events)[-20:],
        }

    def _coverage(self) -> tuple[int, int]:
        keys = [self.announcer.key_for(text) for text in self.cfg.phrases.values()]
        ready = sum(1 for key in keys if self.cache.contains(key))
        self.metrics.lines_ready.set(ready)
        self.metrics.lines_configured.set(len(keys))
        return ready, len(keys)

    def health(self) -> tuple[bool, str]:
        stuck = time.monotonic() - self.player.heartbeat
        if stuck > self._writer_stuck_s:
            return False, f"audio writer stuck for {stuck:.0f} s"
        return True, ""

    def metrics_text(self) -> tuple[bytes, str]:
        self._coverage()
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

    async def _probe_engine_forever(self) -> None:
        while True:
            await self.probe_engine()
            await asyncio.sleep(ENGINE_PROBE_EVERY_S)

    async def probe_engine(self) -> None:
        try:
            await self.engine.probe()
            self.engine_state.update(reachable=True, error=None)
        except KioskError as exc:
            if self.engine_state.get("error") != str(exc):
                self.event(f"engine {self.engine.name} unreachable: {exc}")
            self.engine_state.update(reachable=False, error=str(exc))
        self.engine_state["checked_at"] = time.time()


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
