"""What the service reports: recent events, metrics per line, `/api/status`, `/healthz` and the staff page's
problems — read from the service's parts, never changing them."""

from __future__ import annotations

import asyncio
import collections
import logging
import shutil
import time
from typing import TYPE_CHECKING

from kiosk import __version__
from kiosk.history import History, Outcome
from kiosk.metrics import CONTENT_TYPE, Metrics
from kiosk.speaker import Request
from kiosk.warm import ready_ids, translated

if TYPE_CHECKING:
    from kiosk.service import Service

log = logging.getLogger(__name__)

#: A blocking ALSA write lasts one period; a writer silent this long is wedged and systemd should restart us.
WRITER_STUCK_S = 5.0
_FINISHED = ("done", "stopped", "failed")


class EventLog:
    """The last hundred things worth telling staff, each logged once and kept in the history across restarts.

    The same event again in a row only counts up ("speaker missing ×12"), so a flapping fault cannot push
    everything else off the list.
    """

    def __init__(self, history: History | None = None, size: int = 100):
        self.events: collections.deque[dict] = collections.deque(maxlen=size)
        self._history = history

    def load(self, events: list[dict]) -> None:
        """Events kept from before a restart, oldest first."""
        self.events.extend(events)

    def add(self, text: str) -> None:
        now = time.time()
        if self.events and self.events[-1]["text"] == text:
            self.events[-1] = {**self.events[-1], "time": now, "count": self.events[-1].get("count", 1) + 1}
        else:
            self.events.append({"time": now, "text": text, "count": 1})
        if self._history is not None:
            self._history.event(text, now)
        log.info("%s", text)

    def recent(self, count: int = 20) -> list[dict]:
        return [_dated(e) for e in self.events][-count:]


def _origin_words(origin: str) -> str:
    if origin.startswith("button:"):
        return f"Button on GPIO {origin.split(':', 1)[1]}"
    return {"api": "Show control (API)", "staff": "Staff page"}.get(origin, origin)


def _dated(event: dict) -> dict:
    moment = time.localtime(event["time"])
    return {
        **event,
        "count": event.get("count", 1),
        "date": time.strftime("%Y-%m-%d", moment),
        "clock": time.strftime("%H:%M:%S", moment),
    }


class StatusBoard:
    """Metrics and reports for one service."""

    def __init__(self, service: Service, *, writer_stuck_s: float = WRITER_STUCK_S):
        self._service = service
        self._writer_stuck_s = writer_stuck_s
        self._started = time.monotonic()
        self.metrics = Metrics()
        self.underruns_total = 0

    def finished(self, req: Request) -> None:
        """Count a line that has ended (metrics, event log)."""
        if req.state not in _FINISHED or req.trace is None:
            return
        trace, m = req.trace, self.metrics
        m.lines.labels(req.state).inc()
        m.underruns.inc(trace.underruns)
        self.underruns_total += trace.underruns
        (m.cache_hits if trace.source == "cache" else m.cache_misses).inc()
        if trace.error and trace.source != "cache":
            m.engine_errors.labels(trace.source).inc()
        press_to_audio_ms = press_to_audio(req)
        if press_to_audio_ms is not None:
            m.first_audio.labels(trace.source).observe(press_to_audio_ms / 1000)
        if req.state == "failed":  # every press is in the history; only what went wrong is news for staff
            what = f"'{req.phrase}'" if req.phrase else f"a text of {len(req.text)} characters"
            self._service.event(f"{_origin_words(req.origin)}: {what} could not be spoken ({trace.error})")

    async def status(self) -> dict:
        s = self._service
        ready_ids = await asyncio.to_thread(self.ready_lines)
        languages = await asyncio.to_thread(self.language_coverage)
        speaker, trace = s.speaker, s.speaker.last_trace
        last = next((r for r in reversed(speaker.history.values()) if r.trace and r.started_at), None)
        disk = await asyncio.to_thread(shutil.disk_usage, s.cache.root)
        uptime = round(time.monotonic() - self._started)
        problems = self.problems()
        return {
            "version": __version__,
            "state": "speaking" if speaker.speaking else "idle",
            "playing": speaker.current.summary() if speaker.current else None,
            "queued": speaker.queued,
            "last_trace": trace.__dict__ if trace else None,
            "last_press_to_audio_ms": press_to_audio(last) if last else None,
            "underruns_total": self.underruns_total,
            "cache": {"lines_ready": len(ready_ids), "lines_configured": len(s.cfg.phrases), "ready_ids": ready_ids},
            "languages": languages,
            "language_now": s.language_choice.current,
            "engine": {"name": s.engine.name, **s.engine_state, "chain": s.engines.state()},
            "speaker_problem": s.device_problem,
            "cache_problem": s.announcer.cache_problem,
            "device": s.cfg.audio.device,
            "buttons": {
                "count": len(s.cfg.buttons),
                "factory": s.buttons.factory if s.buttons else None,
                "simulated": bool(s.buttons and s.buttons.simulated),
                "error": s.buttons.error if s.buttons else None,
                "list": self._buttons(),
            },
            "tasks": s.supervisor.state(),
            "disk_free_gb": round(disk.free / 1e9, 1),
            "uptime_s": uptime,
            "uptime_text": _duration(uptime),
            "warm": dict(s.warm),
            "open": s.cfg.is_open(s.local_time()),
            "next_announcement": s.scheduler.next_announcement(),
            **s.fleet.status(),  # "mqtt" and "osc": each link's state
            "problems": problems,
            "headline": "All good" if not problems else f"Needs attention: {problems[0]}",
            "events": s.events_log.recent(),
        }

    def _buttons(self) -> list[dict]:
        """Each button as staff know it: its name, what it says, and when it was last pressed."""
        s = self._service
        return [
            {
                "pin": b.pin,
                "name": b.name or f"Button on GPIO {b.pin}",
                "action": b.action,
                "phrase": b.phrase,
                "text": s.cfg.phrases.get(b.phrase, "") if b.phrase else "",
                "has_led": b.led is not None,
                "last_pressed": s.last_pressed.get(b.pin),
            }
            for b in s.cfg.buttons
        ]

    def problems(self) -> list[str]:
        """What staff should know about now, in plain words."""
        s = self._service
        problems = []
        if s.config_problem:
            problems.append(
                f"The settings file has a mistake, so the last change to it was not used: {s.config_problem}. "
                "The speaker goes on with the settings it had, but would not start again until the file is fixed."
            )
        if s.device_problem:
            problems.append(f"Speaker missing or failing: {s.device_problem}. Retrying.")
        for engine in s.engines.state():
            if engine["in_backoff"]:
                name, reason, wait = engine["name"], engine["reason"], engine["next_check_s"]
                problems.append(f"Voice '{name}' paused: {reason}. Checking again in {wait} s.")
        if s.announcer.cache_problem:
            problems.append(f"New lines cannot be kept for offline use: {s.announcer.cache_problem}")
        if s.buttons and s.buttons.error:
            problems.append(s.buttons.error)
        if s.history.problem:
            problems.append(f"Presses are not being recorded: {s.history.problem}.")
        ok, why = self.health()
        if not ok:
            problems.append(f"The speaker is not working: {why}. The service will be restarted.")
        return problems + s.fleet.problems() + s.supervisor.problems()

    def ready_lines(self) -> list[str]:
        """Ids of the configured lines whose audio is in the cache (in the current voice or a fallback's)."""
        s = self._service
        ready = ready_ids(s.cfg, s.announcer)
        self.metrics.lines_ready.set(len(ready))
        self.metrics.lines_configured.set(len(s.cfg.phrases))
        return ready

    def language_coverage(self) -> list[dict]:
        """Per offered language: how many lines are ready offline as visitors would hear them in it (a line without
        a translation is heard in the default language), how many are translated, and whether it has a local voice
        (without one, a line not cached yet needs the network)."""
        s = self._service
        coverage = []
        for lang in s.cfg.languages:
            local = any(e.name == "piper" for e in s.announcer.chain_for(lang.code).engines)
            coverage.append(
                {
                    "code": lang.code,
                    "name": lang.spoken_name,
                    "ready": len(ready_ids(s.cfg, s.announcer, lang.code)),
                    "total": len(s.cfg.phrases),
                    "translated": translated(s.cfg, lang.code),
                    "local_voice": local,
                    "note": None if local else "needs the network until cached",
                }
            )
        return coverage

    def health(self) -> tuple[bool, str]:
        """Alive means the speaker loop and the audio writer both keep making progress."""
        s = self._service
        stuck = time.monotonic() - s.player.heartbeat
        if stuck > self._writer_stuck_s:
            return False, f"audio writer stuck for {stuck:.0f} s"
        stale = s.supervisor.stale()
        if stale:
            return False, "; ".join(stale)
        return True, ""

    def metrics_text(self) -> tuple[bytes, str]:
        self.ready_lines()
        return self.metrics.render(), CONTENT_TYPE


def outcome_of(req: Request) -> Outcome:
    """A finished request as the history keeps it."""
    trace = req.trace
    return Outcome(
        time=time.time() - (time.monotonic() - req.requested_at),
        origin=req.origin,
        line=req.phrase,
        source=trace.source if trace and trace.frames else None,
        response_ms=press_to_audio(req),
        outcome=req.state,
        error=trace.error if trace else None,
        text_chars=len(req.text),
        language=req.language,
    )


def press_to_audio(req: Request) -> float | None:
    """Milliseconds from the press (or API call) to the first frame the device accepted."""
    if req.trace is None or req.trace.first_audio_ms is None or req.started_at is None:
        return None
    return round((req.started_at - req.requested_at) * 1000 + req.trace.first_audio_ms, 1)


def _duration(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    return (f"{days} d " if days else "") + f"{hours} h {rest // 60} min"
