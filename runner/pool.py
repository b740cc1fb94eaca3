"""The worker threads that run calls: a bounded pool in the shape of gunicorn's ``gthread`` worker.

Rules:

* At most ``size`` threads serve connections. A connection with bytes waiting
  is a task; ``submit`` queues it and a free thread takes it. Nothing else
  starts threads, so a flood of connections costs queue entries, not threads.
  Sleeping threads are woken one at a time: a thread that takes a task
  wakes the next if more are queued (``_wake_one``).
* A thread that has answered a call may keep its connection, blocked in
  ``recv`` for the next frame ("parked"), only while ``spare`` threads would
  still be free once the queued tasks are taken: a busy connection then pays
  no hand-off per call (the cost the benchmark measures), and the threads
  that are needed elsewhere are never parked. A queued task alone is no
  reason to give a connection back while free threads can take it at once:
  releasing then queued the connection's next frame in turn, and busy
  connections cascaded through the selector (pinned, 64 connections:
  0.76x the calls/s of thread-per-connection, 0.89x without; bench/README.md). A parked thread wakes every
  ``park_interval`` (the socket's receive timeout) and gives its connection
  back to the selector as soon as ``should_release`` says the pool needs it.
* A thread whose call is past its deadline is *retired* (``retire``): another
  thread starts in its place, so a plugin that never returns costs one thread
  and never a pool slot. The retired thread ends when its plugin returns.
* ``stop`` lets every thread finish its task and exit; queued tasks are still
  served first.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Worker:
    """One pool thread, as the watchdog and the connection it serves see it."""

    __slots__ = ("thread", "call", "retired", "parked")

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.call: object | None = None  # the call this thread is running (a connection's ``Call``)
        self.retired = False
        self.parked = False


class WorkerPool(Generic[T]):
    def __init__(self, size: int, serve: Callable[[T, Worker], None], spare: int | None = None) -> None:
        if size < 1:
            raise ValueError("the pool needs at least one thread")
        self.size = size
        # Threads kept free for new work while the others park: enough that a
        # burst of new connections never waits for a parked thread's timeout.
        self.spare = min(size - 1, max(1, size // 16)) if spare is None else spare
        self._serve = serve
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._tasks: deque[T] = deque()
        self._workers: list[Worker] = []
        self._free = 0  # threads waiting for a task
        self._sleeping = 0  # of those, the ones asleep on ``_ready``
        self._woken = 0  # of those, the ones notified that have not yet woken
        self._stopping = False

    # --- what the connections ask -------------------------------------------

    def may_park(self) -> bool:
        """Whether a thread that has just answered may keep its connection."""
        return self._free - len(self._tasks) > self.spare and not self._stopping

    def should_release(self) -> bool:
        """Whether a parked thread must give its connection back now."""
        return self._free - len(self._tasks) < self.spare or self._stopping

    # --- tasks ----------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            for _ in range(self.size):
                self._spawn()

    def submit(self, task: T) -> None:
        with self._lock:
            self._tasks.append(task)
            self._wake_one()

    def _wake_one(self) -> None:
        """Wake a sleeping thread for the queue, unless one is already on its way (lock held).

        Waking one per task sent the threads of a burst of connections to the
        GIL all at once: 8-10 context switches per connection against 1.4-2.7,
        and 2,000 fresh connections answered within 575-603 ms against 429-480
        (bench/README.md).
        """
        if not self._woken and self._sleeping > self._woken:
            self._woken += 1
            self._ready.notify()

    def retire(self, worker: Worker) -> None:
        """``worker`` is stuck in a plugin: start a thread in its place."""
        with self._lock:
            if worker.retired:
                return
            worker.retired = True
            self._workers.remove(worker)
            if not self._stopping:
                self._spawn()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._woken = self._sleeping
            self._ready.notify_all()

    def join(self, timeout: float) -> None:
        for worker in self.workers():
            if worker.thread is not None:
                worker.thread.join(timeout)

    # --- observation (metrics, watchdog, drain) -------------------------------

    def workers(self) -> list[Worker]:
        with self._lock:
            return list(self._workers)

    @property
    def queued(self) -> int:
        return len(self._tasks)

    @property
    def free(self) -> int:
        return self._free

    # --- the threads ----------------------------------------------------------

    def _spawn(self) -> None:
        worker = Worker()
        worker.thread = threading.Thread(target=self._run, args=(worker,), name="worker", daemon=True)
        self._workers.append(worker)
        worker.thread.start()

    def _take(self) -> T | None:
        with self._lock:
            self._free += 1
            try:
                while not self._tasks:
                    if self._stopping:
                        return None
                    self._sleeping += 1
                    self._ready.wait()  # (no timeout: it returns only when notified)
                    self._sleeping -= 1
                    self._woken -= 1
                task = self._tasks.popleft()
                if self._tasks:
                    self._wake_one()
                return task
            finally:
                self._free -= 1

    def _run(self, worker: Worker) -> None:
        while not worker.retired:
            task = self._take()
            if task is None:
                return
            try:
                self._serve(task, worker)
            except BaseException:  # a connection's failure must not cost the pool a thread
                log.exception("unexpected error while serving a connection")
            finally:
                worker.call = None
                worker.parked = False
