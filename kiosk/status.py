"""What the service reports: metrics per line, `/api/status`, `/healthz` and the staff page's problems — read from
the live parts (kiosk.parts), never changing them. Adapters with a state of their own (the MQTT link, OSC) add
theirs through `add_reporter`."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Callable
from datetime import datetime

from kiosk import __version__, clock
from kiosk.config import staff_settings_problem
from kiosk.history import Outcome
from kiosk.metrics import CONTENT_TYPE, Metrics
from kiosk.parts import Parts
from kiosk.plain_words import fault_words, last_line, unreachable, voice_paused
from kiosk.speaker import Request
from kiosk.staff.auth import PasswordFile
from kiosk.update.rollout import RECORD, read_record
from kiosk.update.spool import state_dir
from kiosk.warm import ready_ids, translated

log = logging.getLogger(__name__)

#: A blocking ALSA write lasts one period; a writer silent this long is wedged and systemd should restart us.
WRITER_STUCK_S = 5.0
_FINISHED = ("done", "stopped", "failed")


def _origin_words(origin: str) -> str:
    if origin.startswith("button:"):
        return f"Button on GPIO {origin.split(':', 1)[1]}"
    return {"api": "Show control (API)", "staff": "Staff page"}.get(origin, origin)


class StatusBoard:
    """Metrics and reports for one service."""

    def __init__(
        self,
        parts: Parts,
        *,
        on_event: Callable[[str], None],
        now: Callable[[], datetime] = datetime.now,
        writer_stuck_s: float = WRITER_STUCK_S,
    ):
        self._parts = parts
        self._on_event = on_event
        self._now = now
        self._reporters: list[tuple[Callable[[], dict], Callable[[], list[str]]]] = []
        self._writer_stuck_s = writer_stuck_s
        self._started = time.monotonic()
        self.metrics = Metrics()
        self.underruns_total = 0

    def request_changed(self, req: Request) -> None:
        """Every request's outcome goes to the history; a line that ended is counted, and a failed playback tells
        the device keeper to look at the device."""
        s = self._parts
        self.metrics.speaking.set(1 if s.speaker.speaking else 0)
        if req.state in ("done", "stopped", "failed", "dropped"):
            s.history.record(outcome_of(req))
        if req.state in _FINISHED and req.trace is not None:
            self.finished(req)
            s.device.playback_failed()

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
        if trace.source == self._parts.engine.name and (not trace.error or unreachable(trace.error)):
            # What a line just found is newer than the last probe: the Voice card must not say "online" meanwhile.
            reached = not trace.error
            self._parts.engine_state.update(reachable=reached, error=trace.error, checked_at=time.time())
        if req.state == "failed":  # every press is in the history; only what went wrong is news for staff
            what = f"'{req.phrase}'" if req.phrase else f"a text of {len(req.text)} characters"
            self._on_event(f"{_origin_words(req.origin)}: {what} could not be spoken: {fault_words(trace.error)}")

    def add_reporter(self, status: Callable[[], dict], problems: Callable[[], list[str]]) -> None:
        """An adapter's own state: `status()` is merged into the status JSON, `problems()` added to the list."""
        self._reporters.append((status, problems))

    async def status(self) -> dict:
        s = self._parts
        by_language = await asyncio.to_thread(self._ready_in_each_language)  # reads the cache directory once
        ready_ids, languages = self.ready_lines(by_language), self.language_coverage(by_language)
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
            "last_line_words": last_line(trace.__dict__ if trace else None),
            "last_press_to_audio_ms": press_to_audio(last) if last else None,
            "underruns_total": self.underruns_total,
            "cache": {"lines_ready": len(ready_ids), "lines_configured": len(s.cfg.phrases), "ready_ids": ready_ids},
            "languages": languages,
            "language_now": s.language_choice.current,
            "engine": {
                "name": s.engine.name,
                **s.engine_state,
                "error_words": fault_words(s.engine_state.get("error")) if s.engine_state.get("error") else None,
                "chain": s.engines.state(),
            },
            "speaker_problem": s.device.problem,
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
            "open": clock.is_open(s.cfg, s.clock.trusted(), self._now()),
            "clock": {"trusted": s.clock.trusted(), "state": s.clock.problem() or "set"},
            "next_announcement": s.scheduler.next_announcement(),
            "update": await asyncio.to_thread(self.last_update),
            **{key: value for status, _ in self._reporters for key, value in status().items()},  # "mqtt", "osc"
            "problems": problems,
            "headline": "All good" if not problems else f"Needs attention: {problems[0]}",
            "events": s.event_log.recent(),
        }

    def _buttons(self) -> list[dict]:
        """Each button as staff know it: its name, what it says, and when it was last pressed."""
        s = self._parts
        return [
            {
                "pin": b.pin,
                "name": b.name or f"Button on GPIO {b.pin}",
                "action": b.action,
                "phrase": b.phrase if b.action == "speak" else None,  # a line left on another kind says nothing
                "text": s.cfg.phrases.get(b.phrase, "") if b.phrase and b.action == "speak" else "",
                "has_led": b.led is not None,
                "last_pressed": s.last_pressed.get(b.pin),
            }
            for b in s.cfg.buttons
        ]

    def problems(self) -> list[str]:
        """What staff should know about now, in plain words."""
        s = self._parts
        problems = [clock_problem(s)] if s.clock.problem() else []
        if s.config_problem:
            problems.append(
                f"The settings file has a mistake, so the last change to it was not used: {s.config_problem}. "
                "The speaker goes on with the settings it had, but would not start again until the file is fixed."
            )
        if s.device.problem:
            problems.append(f"Speaker missing or failing: {s.device.problem}. Retrying.")
        problems += s.secret_problems + self._file_problems()
        chain = s.engines.state()
        for engine in chain:
            stands_in = engine["name"] != "piper" and any(e["name"] == "piper" for e in chain)
            if engine["in_backoff"]:
                problems.append(voice_paused(engine["name"], engine["reason"], engine["next_check_s"], stands_in))
            elif engine["name"] == s.engine.name and s.engine_state.get("reachable") is False:
                problems.append(voice_paused(engine["name"], s.engine_state.get("error"), None, stands_in))
        if s.announcer.cache_problem:
            problems.append(f"New lines cannot be kept for offline use: {s.announcer.cache_problem}")
        if s.buttons and s.buttons.error:
            problems.append(s.buttons.error)
        if s.history.problem:
            problems.append(f"Presses are not being recorded: {s.history.problem}.")
        ok, why = self.health()
        if not ok:
            problems.append(f"The speaker is not working: {why}. The service will be restarted.")
        for _, reported in self._reporters:
            problems += reported()
        return problems + s.supervisor.problems()

    def _file_problems(self) -> list[str]:
        """Files staff depend on that could not be used: the saved settings (set aside), the password file."""
        staff = self._parts.cfg.staff
        found = [staff_settings_problem(staff.settings_file)]
        if staff.enabled:
            why = PasswordFile(staff.password_file).problem()
            found.append(f"The staff password cannot be read ({why}); set a new one." if why else None)
        return [p for p in found if p]

    def last_update(self) -> dict | None:
        """The last update's outcome from its record ({"result", "version", "message", "time"}), or None when there
        is none or it cannot be read."""
        return read_record(state_dir(self._parts.cfg.staff.settings_file) / RECORD)

    def ready_lines(self, by_language: dict[str | None, list[str]] | None = None) -> list[str]:
        """Ids of the configured lines whose audio is in the cache (in the current voice or a fallback's) in every
        offered language: a line a visitor would hear from the network in one of them is not ready offline."""
        s = self._parts
        in_each = [set(ids) for ids in (by_language or self._ready_in_each_language()).values()]
        ready = [pid for pid in s.cfg.phrases if all(pid in ids for ids in in_each)]
        self.metrics.lines_ready.set(len(ready))
        self.metrics.lines_configured.set(len(s.cfg.phrases))
        return ready

    def _ready_in_each_language(self) -> dict[str | None, list[str]]:
        """Per offered language (None: the one language of a speaker that offers none), the ids of the lines ready
        offline as heard in it. Reads the cache directory: not on the event loop."""
        s = self._parts
        codes = [lang.code for lang in s.cfg.languages] or [None]
        return {code: ready_ids(s.cfg, s.announcer, code) for code in codes}

    def language_coverage(self, by_language: dict[str | None, list[str]]) -> list[dict]:
        """Per offered language: how many lines are ready offline as visitors would hear them in it (a line without
        a translation is heard in the default language), how many are translated, and whether it has a local voice
        (without one, a line not cached yet needs the network)."""
        s = self._parts
        coverage = []
        for lang in s.cfg.languages:
            local = any(e.name == "piper" for e in s.announcer.chain_for(lang.code).engines)
            ready = len(by_language[lang.code])
            coverage.append(
                {
                    "code": lang.code,
                    "name": lang.spoken_name,
                    "ready": ready,
                    "total": len(s.cfg.phrases),
                    "translated": translated(s.cfg, lang.code),
                    "local_voice": local,
                    "note": None if local or ready == len(s.cfg.phrases) else "the rest need the network until cached",
                }
            )
        return coverage

    def health(self) -> tuple[bool, str]:
        """Alive means the speaker loop and the audio writer both keep making progress."""
        s = self._parts
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


def clock_problem(parts: Parts) -> str:
    """The clock not set, in words for staff: what the speaker does until it is."""
    hours = "always open" if parts.cfg.clock.untrusted_hours == "open" else "closed"
    return (
        f"{clock.NOT_SET.capitalize()}: the time is not synchronized yet (no network since the power came on?). "
        f"No announcements are made and the exhibit is {hours} until it is (clock.untrusted_hours)."
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
