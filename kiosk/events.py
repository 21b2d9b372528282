"""The last hundred things worth telling staff, kept in the history across restarts."""

from __future__ import annotations

import collections
import logging
import time

from kiosk.history import History

log = logging.getLogger(__name__)


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


def _dated(event: dict) -> dict:
    moment = time.localtime(event["time"])
    return {
        **event,
        "count": event.get("count", 1),
        "date": time.strftime("%Y-%m-%d", moment),
        "clock": time.strftime("%H:%M:%S", moment),
    }
