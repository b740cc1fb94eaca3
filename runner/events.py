"""The main thread's events: what signal handlers and helper threads queue, and the one wait for them.

Signal handlers and helper threads only queue an event; the main thread waits
for the next one and does the rest (gunicorn's arbiter rule). Rules:

* No thread blocks signals: a process a plugin starts inherits the signal
  mask of the thread that started it, and a child with SIGTERM blocked
  ignores ``kill``. So the kernel may deliver a signal to any thread, where
  CPython's C handler only notes it; the Python handler then runs on the main
  thread, between two of its bytecodes. The main thread must therefore never
  sleep where a signal cannot wake it: it waits in ``select`` on one pipe
  that both ``signal.set_wakeup_fd`` (the C handler, on whatever thread the
  kernel chose) and ``put`` (any thread) write a byte to.
* One ``Events`` per process, made on the main thread (``set_wakeup_fd`` and
  ``signal.signal`` work there only).
"""

from __future__ import annotations

import os
import selectors
import signal
import time
from collections import deque
from collections.abc import Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class Events(Generic[T]):
    def __init__(self, signals: Mapping[signal.Signals, T], idle: T) -> None:
        """Queue ``signals[signum]`` for each of these signals (the others keep their handling);
        ``get`` returns ``idle`` when no event came in time."""
        self.idle = idle
        self._items: deque[T] = deque()  # append and popleft are atomic: no lock
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._read, selectors.EVENT_READ)
        signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._signals = dict(signals)
        for signum in signals:
            signal.signal(signum, self._on_signal)

    def put(self, item: T) -> None:
        """Queue ``item`` and wake the main thread (from any thread, or a signal handler)."""
        self._items.append(item)
        try:
            os.write(self._write, b"\0")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.put(self._signals[signal.Signals(signum)])

    def get(self, timeout: float | None = None) -> T:
        """The next event (main thread only); ``idle`` if none came within ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._items:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return self.idle
            self._selector.select(left)
            self._drain()  # a call: a signal noted on another thread has its handler run before we look again
        return self._items.popleft()

    def _drain(self) -> None:
        try:
            while os.read(self._read, 4096):
                pass
        except BlockingIOError:
            pass
