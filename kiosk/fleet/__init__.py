"""Many speakers, one museum: fleet control through the museum's own MQTT broker (with Home Assistant discovery)
and OSC show control. No fleet server: each speaker talks to the broker and listens for OSC itself.

`Fleet` is an adapter: it is handed the app interface (kiosk.app), never the service. `jobs(cfg)` gives the
supervised children (the MQTT link, the OSC listener) for a config, and the service hands it presses, request
changes and status changes. The client
libraries are imported only when their link is configured (kiosk.fleet.mqtt, kiosk.fleet.osc).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Coroutine
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from kiosk import __version__
from kiosk.config import ButtonConfig, Config
from kiosk.fleet.control import Control
from kiosk.fleet.discovery import DeviceInfo, staff_url
from kiosk.fleet.download import Updates
from kiosk.status import press_to_audio

if TYPE_CHECKING:
    from kiosk.app import App
    from kiosk.fleet.mqtt import MqttLink
    from kiosk.fleet.osc import OscLink
    from kiosk.speaker import Request

log = logging.getLogger(__name__)

Job = Callable[[], Coroutine[Any, Any, None]]
_FINISHED = ("done", "stopped", "failed")
#: The days of history read at the start for what was counted before it (today's presses: a day may have 25 hours).
_SEED_DAYS = 2


class Fleet:
    def __init__(self, app: App):
        self._app = app
        self.updates = Updates(lambda: app.cfg.staff.settings_file, on_change=self.status_changed)
        self.control = Control(app, updates=self.updates)
        self.mqtt: MqttLink | None = None
        self.osc: OscLink | None = None
        self._cfg: Config | None = None
        self._presses_on: date | None = None
        self.presses_today = 0
        self.last_press: float | None = None
        self.last_response_ms: float | None = None
        #: Counted here from this second on; what came before is read from the history (`_seed`), which keeps whole
        #: seconds: a press in this very second is counted here only, never twice.
        self._counting_since = math.floor(time.time())
        self._seeding: asyncio.Future | None = None

    def jobs(self, cfg: Config) -> dict[str, Job | None]:
        """The children to (re)start for `cfg` by name, None for one to stop; a link whose settings did not change
        is left running (and told when what Home Assistant shows of this speaker changed)."""
        old, self._cfg = self._cfg, cfg
        jobs: dict[str, Job | None] = {}
        if old is None or old.mqtt != cfg.mqtt:
            self.mqtt = self._new_mqtt(cfg) if cfg.mqtt.enabled else None
            jobs["mqtt"] = self.mqtt.run if self.mqtt else None
        elif self.mqtt and (old.buttons, old.api.allow_text, old.staff) != (cfg.buttons, cfg.api.allow_text, cfg.staff):
            self.mqtt.rediscover()
        if old is None or old.osc != cfg.osc:
            self.osc = self._new_osc(cfg) if cfg.osc.enabled else None
            jobs["osc"] = self.osc.run if self.osc else None
        return jobs

    def _new_mqtt(self, cfg: Config) -> MqttLink:
        from kiosk.fleet.mqtt import MqttLink  # imported only when configured

        return MqttLink(
            cfg.mqtt,
            control=self.control,
            snapshot=self.snapshot,
            device_info=self.device_info,
            on_event=self._app.event,
        )

    def _new_osc(self, cfg: Config) -> OscLink:
        from kiosk.fleet.osc import OscLink  # imported only when configured

        return OscLink(cfg.osc, control=self.control)

    # -- what the service hands in

    def pressed(self, button: ButtonConfig) -> None:
        """A physical button was pressed (outside its cooldown)."""
        self._count_press()
        if self.mqtt:
            self.mqtt.publish_action(f"button_{button.pin}")
            what = {"line": button.phrase} if button.action == "speak" else {"action": button.action}
            self.mqtt.publish_event(
                {"type": "press", "origin": f"button:{button.pin}", "button": button.name, **what, "time": time.time()}
            )
        self.status_changed()

    def request_changed(self, req: Request) -> None:
        """A line ended: an event. A line stopped while it played has no trace (its task was cancelled)."""
        if req.state in _FINISHED and (req.trace is not None or req.state == "stopped"):
            response_ms = press_to_audio(req)
            if response_ms is not None:
                self.last_response_ms = response_ms
            if self.mqtt:
                self.mqtt.publish_event(
                    {
                        "type": "played",
                        "origin": req.origin,
                        "line": req.phrase,
                        "source": req.trace.source if req.trace else None,
                        "response_ms": response_ms,
                        "outcome": req.state,
                        "time": time.time(),
                        # A line given a start time: how it kept it ("on time", or why not) and by how much it missed.
                        **(
                            {
                                "in_step": req.trace.in_step,
                                "late_ms": req.trace.late_ms,
                                "received_wall": req.trace.start_received_wall,
                            }
                            if req.trace and req.trace.in_step
                            else {}
                        ),
                        # When its first audio went to the device, on the wall clock: speakers compared on one clock.
                        **(
                            {"first_audio_wall": req.trace.first_audio_wall}
                            if req.trace and req.trace.first_audio_wall is not None
                            else {}
                        ),
                    }
                )
        self.status_changed()

    def status_changed(self) -> None:
        if self.mqtt:
            self.mqtt.status_changed()

    # -- what staff and the broker see

    def status(self) -> dict:
        """For the status JSON: each link's state (None where it is off)."""
        return {
            "mqtt": self.mqtt.state() if self.mqtt else {"state": "off", "broker": None, "error": None},
            "osc": self.osc.state() if self.osc else {"state": "off", "port": None, "error": None},
        }

    def problems(self) -> list[str]:
        """What staff should know, in plain words: a broker out of reach, an OSC port that cannot be opened."""
        found = [self.mqtt.problem() if self.mqtt else None, self.osc.problem() if self.osc else None]
        return [p for p in found if p]

    async def snapshot(self) -> dict:
        """The retained status on the broker: small, and only what changes when something worth knowing does."""
        s = self._app
        if self._seeding is None:
            self._seeding = asyncio.ensure_future(self._seed())
        await asyncio.shield(self._seeding)  # once, before the first status: never a count of 0 after a restart
        ready = await asyncio.to_thread(s.ready_lines)
        self._count_press(0)
        return {
            "state": "speaking" if s.speaking else "idle",
            "lines_ready": len(ready),
            "lines_configured": len(s.cfg.phrases),
            "volume": s.cfg.audio.volume,
            "muted": s.cfg.audio.volume == 0,
            "open": s.is_open(s.local_time()),
            "clock": s.clock_state(),  # "set", or "clock not set" (kiosk.clock)
            "problems": s.problems(),
            "version": __version__,
            "last_press": self.last_press,
            "presses_today": self.presses_today,
            "last_response_ms": self.last_response_ms,
            "stutters": s.underruns_total,
            "groups": list(s.cfg.mqtt.groups),  # who `kiosk fleet update --group` waits for
            "update": await asyncio.to_thread(self.updates.record),  # the last update's outcome (update.json)
        }

    def device_info(self) -> DeviceInfo:
        cfg = self._app.cfg
        return DeviceInfo(
            version=__version__,
            buttons=cfg.buttons,
            allow_text=cfg.api.allow_text,
            staff_url=staff_url(cfg, self._app.staff_port),
        )

    async def _seed(self) -> None:
        """Add what the history has from before this start: today's presses of the physical buttons (the museum's
        day, as `_count_press` counts them), the last press and the last response time. Counted as the staff
        page's charts count button presses (kiosk.history_summary): a row per press whose origin is a button."""
        try:
            rows = await self._app.history_rows(_SEED_DAYS)
        except Exception:  # the history's own problems are told on the status; the counts start from here
            log.exception("reading today's presses from the history failed")
            return
        now = self._app.local_time()
        midnight = time.time() - (now - now.replace(hour=0, minute=0, second=0, microsecond=0)).total_seconds()
        presses, last_press, last_response = 0, None, None
        for row in rows:  # oldest first
            at = datetime.fromisoformat(row["time"]).timestamp()
            if at >= self._counting_since:
                continue
            if row["origin"].startswith("button:"):
                presses, last_press = presses + (at >= midnight), at
            if row["response_ms"] is not None:
                last_response = row["response_ms"]
        self._count_press(0)
        self.presses_today += presses
        if self.last_press is None:  # one pressed since the start is newer
            self.last_press = last_press
        if self.last_response_ms is None:
            self.last_response_ms = last_response

    def _count_press(self, count: int = 1) -> None:
        today = self._app.local_time().date()
        if self._presses_on != today:
            self._presses_on, self.presses_today = today, 0
        self.presses_today += count
        if count:
            self.last_press = time.time()
