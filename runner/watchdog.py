"""Call deadlines: a call still running at ``call_timeout`` gets a 503, and a plugin that hangs is contained.

Rules:

* One thread looks at the running calls every ``tick``. A call past its
  deadline is answered with Err SERVICE_UNAVAILABLE and its connection closed
  (APISIX has given up by then anyway); the log line names the plugin the call
  is in and shows that thread's stack. Its thread cannot be stopped (Python
  threads cannot be killed), so it is retired from the pool and a fresh thread
  takes its place; the call counts as stuck, per plugin, until the plugin
  returns (``StuckCalls``, also a metric).
* When a plugin has ``max_stuck_calls`` stuck calls, its new calls (and its
  ``configure``) fail fast with a 503 (the phases ask ``StuckCalls.over``)
  instead of feeding it more threads. Calls already inside a plugin when it
  reaches the bound may still get stuck, at most one per pool thread, so the
  threads stay at most 2 x ``threads`` + plugins x ``max_stuck_calls``.
* The stack and the plugin are taken before the call is given up: an
  ExtraInfo wait that is woken unwinds at once and would hide where it was.
* A call running longer than ``slow_call`` is logged once as a warning with
  its stack, so a slow plugin is found before it times out.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Generic, Protocol, TypeVar, cast

from . import logs

log = logging.getLogger(__name__)

RUNNER = "(runner)"  # what a call is stuck in when no plugin is running


class StuckCalls:
    """Calls whose thread is still inside a plugin after their deadline, per plugin."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def enter(self, plugin: str | None) -> str:
        """Count one stuck call in ``plugin``; returns the name to ``leave`` with."""
        name = plugin or RUNNER
        with self._lock:
            self.counts[name] += 1
        return name

    def leave(self, name: str) -> None:
        with self._lock:
            self.counts[name] -= 1
            if self.counts[name] <= 0:
                del self.counts[name]

    def over(self, plugin: str) -> bool:
        return self.counts.get(plugin, 0) >= self.limit

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


def tick_for(slow_call: float, call_timeout: float) -> float:
    """Seconds between looks at the running calls: often enough that a deadline is kept to a
    tenth of the shortest threshold (the watchdog's, and the event loop's in ``loopside``)."""
    return max(0.01, min(1.0, slow_call / 10, call_timeout / 10))


class RunningCall(Protocol):
    started: float
    deadline: float
    plugin: str | None
    request_id: int
    conf_token: int
    slow_logged: bool

    def expire(self, reply: bytes) -> bool: ...


class Busy(Protocol):
    """A pool thread as the watchdog sees it."""

    thread: threading.Thread | None
    call: object | None


B = TypeVar("B", bound=Busy)


class Watchdog(Generic[B]):
    def __init__(
        self,
        busy: Callable[[], Iterable[B]],
        retire: Callable[[B], None],
        timeout_reply: bytes,
        slow_call: float,
        call_timeout: float,
    ) -> None:
        self._busy = busy
        self._retire = retire
        self._reply = timeout_reply
        self.slow_call = slow_call
        self.tick = tick_for(slow_call, call_timeout)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.tick):
            try:
                self.check(time.monotonic())
            except Exception:
                log.exception("watchdog check failed")

    def check(self, now: float) -> None:
        for worker in self._busy():
            if worker.call is None:
                continue
            call = cast(RunningCall, worker.call)
            if now >= call.deadline:
                plugin, stack = call.plugin, _stack(worker)
                if call.expire(self._reply):
                    self._retire(worker)
                    outcome = "replied 503 and closed the connection; the thread stays stuck until the plugin returns"
                    _report(call, plugin, stack, logging.ERROR, "timed out", outcome, now)
            elif not call.slow_logged and now - call.started >= self.slow_call:
                call.slow_logged = True
                _report(call, call.plugin, _stack(worker), logging.WARNING, "is slow", "still running", now)


def _stack(worker: Busy) -> str:
    frame = sys._current_frames().get(worker.thread.ident) if worker.thread and worker.thread.ident else None
    return "".join(traceback.format_stack(frame)) if frame is not None else "(stack unavailable)"


def _report(call: RunningCall, plugin: str | None, stack: str, level: int, what: str, outcome: str, now: float) -> None:
    where = f"plugin {plugin!r}" if plugin else "the runner (no plugin running)"
    logs.log_with_stack(
        log,
        level,
        "call %s after %.1f s in %s: %s; its stack:",
        (what, now - call.started, where, outcome),
        stack,
        {"plugin": plugin, "request_id": call.request_id, "conf_token": call.conf_token},
    )
