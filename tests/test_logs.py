"""Log lines rate-limited per kind: a fault repeating in a loop costs a few lines and a count, not the journal."""

from __future__ import annotations

import asyncio
import errno
import logging

import pytest

from kiosk.logs import RateLimitFilter, install


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Lines(logging.Handler):
    """Keeps every record it emits, and its formatted text."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))
        self.records: list[logging.LogRecord] = []
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.texts.append(self.format(record))


@pytest.fixture
def logger(request):
    """A private logger that does not propagate to pytest's handlers."""
    log = logging.getLogger(f"test_logs.{request.node.name}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    yield log
    log.handlers.clear()


def limited(logger: logging.Logger, **kwargs) -> tuple[Lines, RateLimitFilter]:
    lines = Lines()
    rate_limit = RateLimitFilter(**kwargs)
    lines.addFilter(rate_limit)
    logger.addHandler(lines)
    return lines, rate_limit


def test_first_records_of_a_kind_pass_then_the_rest_are_counted(logger):
    clock = FakeClock()
    lines, _ = limited(logger, per_kind=3, clock=clock)
    for attempt in range(10):
        logger.warning("reload failed (attempt %d)", attempt)
    assert lines.texts == [f"reload failed (attempt {n})" for n in range(3)]

    clock.now += 59
    logger.warning("reload failed (attempt %d)", 10)
    assert len(lines.texts) == 3  # still the same window

    clock.now += 2
    logger.warning("reload failed (attempt %d)", 11)
    assert lines.texts[-1] == "reload failed (attempt 11) (8 similar message(s) suppressed in the last 60 s)"
    logger.warning("reload failed (attempt %d)", 12)
    assert lines.texts[-1] == "reload failed (attempt 12)"  # the count resets with the window


def test_the_note_counts_exactly_the_dropped_records(logger):
    clock = FakeClock()
    lines, _ = limited(logger, per_kind=3, clock=clock)
    for _ in range(10):
        logger.error("disk full")
    clock.now += 60
    logger.error("disk full")
    assert lines.texts == ["disk full"] * 3 + ["disk full (7 similar message(s) suppressed in the last 60 s)"]


def test_kinds_are_independent(logger):
    lines, _ = limited(logger, per_kind=1, clock=FakeClock())
    other = logger.getChild("other")
    for _ in range(3):
        logger.warning("a %s", 1)
        logger.warning("b %s", 1)
        logger.error("a %s", 1)
        other.warning("a %s", 1)
    assert [(r.name, r.levelname, r.msg) for r in lines.records] == [
        (logger.name, "WARNING", "a %s"),
        (logger.name, "WARNING", "b %s"),
        (logger.name, "ERROR", "a %s"),
        (other.name, "WARNING", "a %s"),
    ]


def test_memory_is_bounded_and_the_oldest_kind_is_forgotten_first(logger):
    lines, rate_limit = limited(logger, per_kind=1, clock=FakeClock(), max_kinds=1000)
    for n in range(1500):
        logger.info(f"kind {n}")
    assert rate_limit.tracked_kinds == 1000
    logger.info("kind 0")  # forgotten, so it passes again
    logger.info("kind 1499")  # still tracked, so it is dropped
    assert lines.texts[-1] == "kind 0"
    assert len(lines.texts) == 1501


def test_one_filter_on_several_handlers_judges_each_record_once(logger, monkeypatch):
    first, second = Lines(), Lines()
    monkeypatch.setattr(logging.getLogger(), "handlers", [first, second])
    logger.propagate = True
    rate_limit = install()
    assert first.filters == second.filters == [rate_limit]
    for _ in range(8):
        logger.warning("same")
    assert first.texts == second.texts == ["same"] * 5


async def test_accept_errors_keep_one_traceback_per_window():
    lines = Lines()
    asyncio_logger = logging.getLogger("asyncio")
    asyncio_logger.addHandler(lines)
    try:
        install(lines)
        loop = asyncio.get_running_loop()
        for _ in range(20):
            try:
                raise OSError(errno.EMFILE, "Too many open files")
            except OSError as exc:
                loop.call_exception_handler({"message": "socket.accept() out of system resource", "exception": exc})
    finally:
        asyncio_logger.removeHandler(lines)
    assert len(lines.texts) == 5
    assert all(text.startswith("socket.accept() out of system resource") for text in lines.texts)
    assert [("Traceback" in text) for text in lines.texts] == [True, False, False, False, False]
