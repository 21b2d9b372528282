"""A small supervisor for the service's long-lived tasks, after Erlang/OTP's one-for-one strategy.

Each child is a named coroutine factory. A child that raises is logged once with its traceback and started again
after a pause that doubles with each crash in a row (1 s up to a minute), so one bad moment never ends the service
and a child that keeps failing does not spin. A child that stays up for a while is forgiven its earlier crashes.
Children that beat (`beat(name)`) are also watched for liveness: a heartbeat older than its limit means the child is
wedged, which `/healthz` and the systemd watchdog report, so that systemd restarts the whole process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

Factory = Callable[[], Coroutine[Any, Any, None]]

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0
#: A child that ran this long before crashing starts again from the first pause.
STABLE_AFTER_S = 60.0


@dataclass
class Child:
    name: str
    factory: Factory
    restart: bool  # False: a child that ends normally is done (warming); True: it must run forever
    stale_after_s: float | None  # None: not watched for a heartbeat
    task: asyncio.Task | None = None
    state: str = "starting"  # running | restarting | done | stopped
    crashes: int = 0
    restarts: int = 0
    last_error: str | None = None
    last_beat: float = 0.0
    backoff_s: float = field(default=FIRST_BACKOFF_S)


class Supervisor:
    """Starts, watches and restarts named tasks; `problems()` says in plain words what is wrong."""

    def __init__(
        self,
        *,
        on_event: Callable[[str], None] = lambda text: None,
        clock: Callable[[], float] = time.monotonic,
        first_backoff_s: float = FIRST_BACKOFF_S,
        max_backoff_s: float = MAX_BACKOFF_S,
    ):
        self._on_event = on_event
        self._clock = clock
        self._first_backoff_s = first_backoff_s
        self._max_backoff_s = max_backoff_s
        self._children: dict[str, Child] = {}

    def start(self, name: str, factory: Factory, *, restart: bool = True, stale_after_s: float | None = None) -> None:
        """Run `factory()` as child `name`, replacing (cancelling) a child of that name already running."""
        self.cancel(name)
        child = Child(name, factory, restart, stale_after_s, last_beat=self._clock(), backoff_s=self._first_backoff_s)
        self._children[name] = child
        child.task = asyncio.create_task(self._keep(child), name=name)

    def beat(self, name: str) -> None:
        """Child `name` made progress (its loop went round)."""
        child = self._children.get(name)
        if child is not None:
            child.last_beat = self._clock()

    def cancel(self, name: str) -> None:
        child = self._children.pop(name, None)
        if child is not None and child.task is not None:
            child.task.cancel()

    async def stop(self, timeout: float) -> None:
        """Cancel every child and wait for them, at most `timeout` seconds."""
        tasks = [c.task for c in self._children.values() if c.task is not None]
        for child in self._children.values():
            child.state = "stopped"
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    def running(self, name: str) -> bool:
        child = self._children.get(name)
        return child is not None and child.state == "running"

    def stale(self) -> list[str]:
        """Why a watched child is not alive: crashed and waiting to restart, or silent longer than its limit."""
        now = self._clock()
        reasons = []
        for child in self._children.values():
            if child.stale_after_s is None or child.state in ("done", "stopped"):
                continue
            silent = now - child.last_beat
            if silent > child.stale_after_s:
                reasons.append(f"{child.name} has shown no progress for {silent:.0f} s ({child.state})")
        return reasons

    def problems(self) -> list[str]:
        """Children that crashed lately, for staff."""
        return [
            f"Background task '{c.name}' failed {c.crashes} time(s) ({c.last_error}); "
            + ("restarting it." if c.state == "restarting" else "it was restarted.")
            for c in self._children.values()
            if c.crashes and c.state in ("restarting", "running")
        ]

    def state(self) -> list[dict]:
        now = self._clock()
        return [
            {
                "name": c.name,
                "state": c.state,
                "restarts": c.restarts,
                "last_error": c.last_error,
                "last_beat_s": round(now - c.last_beat, 1) if c.stale_after_s is not None else None,
            }
            for c in self._children.values()
        ]

    async def _keep(self, child: Child) -> None:
        while True:
            child.state = "running"
            child.last_beat = started = self._clock()
            try:
                await child.factory()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._crashed(child, exc, self._clock() - started)
            else:
                if not child.restart:
                    child.state = "done"
                    return
                self._crashed(child, None, self._clock() - started)
            child.state = "restarting"
            await asyncio.sleep(child.backoff_s)
            child.restarts += 1
            child.backoff_s = min(self._max_backoff_s, child.backoff_s * 2)

    def _crashed(self, child: Child, exc: BaseException | None, ran_s: float) -> None:
        if ran_s >= STABLE_AFTER_S:
            child.backoff_s = self._first_backoff_s
        child.crashes += 1
        child.last_error = f"{type(exc).__name__}: {exc}" if exc is not None else "ended unexpectedly"
        log.error(
            "%s failed (%s); restarting it in %.0f s",
            child.name,
            child.last_error,
            child.backoff_s,
            exc_info=exc,
        )
        with contextlib.suppress(Exception):  # the event log must not take the supervisor down with it
            self._on_event(f"{child.name} failed ({child.last_error}); restarting it")


async def all_within(timeout: float, *steps) -> None:
    """Run `steps` at the same time for at most `timeout` seconds; what is not done by then is abandoned."""
    tasks = [asyncio.ensure_future(step) for step in steps]
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            log.warning("while stopping: %s", task.exception())
