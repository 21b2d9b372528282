"""Log lines rate-limited per kind, with a count of what was dropped, so a fault repeating in a loop cannot flood
the journal (asyncio alone logged 75 MB of `socket.accept()` tracebacks in a minute when file descriptors ran out).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

# Messages whose traceback is the same every time: only the first of each window keeps it.
_SAME_TRACEBACK_EVERY_TIME = ("socket.accept() out of system resource",)


@dataclass
class _Window:
    started: float
    passed: int = 1
    suppressed: int = 0


class RateLimitFilter(logging.Filter):
    """Lets the first `per_kind` records of a kind through per `window_s`; drops and counts the rest.

    A kind is (logger name, level, first line of the unformatted message): asyncio appends per-event context
    to its message's later lines, the first line is its template. The first record of a kind after its window
    ends carries " (N similar message(s) suppressed in the last 60 s)". At most `max_kinds` kinds are tracked;
    the oldest window is forgotten first. One instance may be shared by several handlers: each record is
    judged once.
    """

    def __init__(
        self,
        per_kind: int = 5,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_kinds: int = 1000,
    ):
        super().__init__()
        self.per_kind = per_kind
        self.window_s = window_s
        self.max_kinds = max_kinds
        self._clock = clock
        self._windows: OrderedDict[tuple[str, int, str], _Window] = OrderedDict()
        self._lock = threading.Lock()  # handlers call filters outside their own lock
        self._last_record: logging.LogRecord | None = None
        self._last_verdict = True

    @property
    def tracked_kinds(self) -> int:
        """How many kinds are remembered now (never more than `max_kinds`)."""
        return len(self._windows)

    def filter(self, record: logging.LogRecord) -> bool:
        """True when `record` should be emitted (possibly with a suppressed-count note or without traceback)."""
        with self._lock:
            if record is not self._last_record:  # the same record reaches every handler sharing this filter
                self._last_record = record
                self._last_verdict = self._judge(record)
            return self._last_verdict

    def _judge(self, record: logging.LogRecord) -> bool:
        kind = (record.name, record.levelno, str(record.msg).partition("\n")[0])
        now = self._clock()
        window = self._windows.get(kind)
        if window is None or now - window.started >= self.window_s:
            self._start_window(kind, now)
            if window is not None and window.suppressed:
                self._note_suppressed(record, window.suppressed)
            return True
        if window.passed >= self.per_kind:
            window.suppressed += 1
            return False
        window.passed += 1
        if kind[2].startswith(_SAME_TRACEBACK_EVERY_TIME):
            record.exc_info = None
            record.exc_text = None  # a cached rendering would still be printed
        return True

    def _start_window(self, kind: tuple[str, int, str], now: float) -> None:
        self._windows.pop(kind, None)
        self._windows[kind] = _Window(started=now)
        while len(self._windows) > self.max_kinds:
            self._windows.popitem(last=False)

    def _note_suppressed(self, record: logging.LogRecord, count: int) -> None:
        # Appended to the template (the note holds no '%'), so the record's %-style args still format.
        record.msg = f"{record.msg} ({count} similar message(s) suppressed in the last {self.window_s:g} s)"


def install(handler: logging.Handler | None = None) -> RateLimitFilter:
    """Add one `RateLimitFilter` to `handler` (default: every handler of the root logger) and return it.

    It also keeps asyncio's "socket.accept() out of system resource" error, logged with a traceback for every
    failed accept, to one traceback per window.
    """
    rate_limit = RateLimitFilter()
    for target in [handler] if handler is not None else logging.getLogger().handlers:
        target.addFilter(rate_limit)
    return rate_limit
