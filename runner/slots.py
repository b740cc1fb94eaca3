"""The master's worker processes: starting one, its channel, reaping it, the back-off between starts.

Rules:

* A worker is ``python -m runner`` with the master's arguments; ``WORKER_ENV``
  names the descriptors it inherits (the listening socket, its end of a
  socketpair, the shares table). systemd's variables stay with the master.
* One reader thread per worker turns its messages into events for the
  master's main thread; answers to the master's own questions (metrics
  snapshots) go straight to the thread waiting for them.
* A worker that exits is started again after 0.5 s, doubling to 10 s while it
  keeps dying within 10 s of its start or before it was ready.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from .channel import Channel, ChannelClosed, Message, Requests
from .worker import WORKER_ENV

_BACKOFF_MIN, _BACKOFF_MAX, _STABLE_AFTER = 0.5, 10.0, 10.0
_MASTER_ONLY = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")

#: ``(event, slot, value)``: ``("message", slot, message)`` or ``("closed", slot, channel)``.
OnEvent = Callable[[tuple[str, Any, Any]], None]


class Slot:
    """One worker position: the process in it now, and how its starts went."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: Channel | None = None
        self.requests: Requests | None = None
        self.ready = False
        self.served = False  # its process has been given the committed plugin files
        self.started = 0.0
        self.failures = 0  # consecutive deaths soon after a start
        self.respawn_at = 0.0
        self.reason = ""

    def spawn(self, argv: Sequence[str], spec: Sequence[int], fds: Sequence[int], on_event: OnEvent) -> None:
        """Start a worker; ``spec`` and ``fds`` go into ``WORKER_ENV`` before its channel's descriptor."""
        ours, theirs = socket.socketpair()
        fds = (*fds, theirs.fileno())
        env = {k: v for k, v in os.environ.items() if k not in _MASTER_ONLY}
        env[WORKER_ENV] = ",".join(map(str, (*spec, *fds)))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runner", *argv], env=env, stdin=subprocess.DEVNULL, pass_fds=fds
        )
        theirs.close()
        self.channel = Channel(ours)
        self.requests = Requests(self.channel, 2.0)
        self.ready, self.served, self.started = False, False, time.monotonic()
        reader = threading.Thread(target=self._read, args=(self.channel, on_event), name=f"worker-{self.index}")
        reader.daemon = True
        reader.start()

    def _read(self, channel: Channel, on_event: OnEvent) -> None:
        try:
            while True:
                message = channel.recv()
                if message.get("op") == "answer" and self.requests is not None:
                    self.requests.answered(message)
                else:
                    on_event(("message", self, message))
        except ChannelClosed:
            on_event(("closed", self, channel))

    def send(self, message: Message) -> None:
        if self.channel is not None:
            try:
                self.channel.send(message)
            except ChannelClosed:
                pass  # its reader reports it gone

    def reap(self, channel: Channel) -> int | None:
        """The worker behind ``channel`` is gone: its exit status (``None``: an earlier process of this slot)."""
        if self.channel is not channel or self.proc is None:
            return None
        try:
            status: int = self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            status = self.proc.wait()
        if self.requests is not None:
            self.requests.close()
        self.channel.close()
        self.proc = self.channel = self.requests = None
        self.ready = self.served = False
        return status

    def died(self, was_ready: bool, status: int) -> float:
        """Count a death; the seconds until the worker is started again."""
        quick = time.monotonic() - self.started < _STABLE_AFTER
        self.failures = self.failures + 1 if quick or not was_ready else 0
        self.reason = self.reason if not was_ready and self.reason else f"exited with status {status}"
        delay = min(_BACKOFF_MAX, _BACKOFF_MIN * 2.0 ** max(0, self.failures - 1))
        self.respawn_at = time.monotonic() + delay
        return delay
