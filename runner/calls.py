"""One call on an APISIX connection: its line to APISIX for ExtraInfo, its deadline, how it ends.

Rules:

* A call ends exactly once, by its reply (``finish``), by the watchdog
  (``expire``: a thread stuck in a plugin) or by its deadline on the event
  loop (``expire_async``), under its connection's lock; the loser of that race
  sends nothing.
* ExtraInfo questions go one at a time on the call's connection, even when a
  plugin asks from several threads (the connection's lock) or tasks (an
  asyncio lock); a request object kept past its call cannot ask any more.
* ``plugin``, ``request_id`` and ``conf_token`` are filled in by the
  dispatcher as it learns them, for the log lines about the call.
* Giving a call up (``expire``) first marks it ``expiring``: an ExtraInfo wait
  gives up at its next receive timeout, releasing the connection, so the 503
  still goes out on a socket open for writing, and the call's own reply can
  no longer win. Once given up, no further plugin of its chain runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
import threading
import time
import traceback
import types
from typing import Any, Protocol

from . import aio, logs
from .errors import CallAbandoned, FrameError
from .frame import Frame, encode
from .protocol import MessageType
from .watchdog import StuckCalls

log = logging.getLogger(__name__)


class Overrun(Exception):
    """A peer would make us hold more than a bound allows: its connection is
    dropped with a (throttled) warning that names the setting."""

    setting = ""


class OverBudget(Overrun):
    """A frame would take the server past its memory budget."""

    setting = "memory_budget"


class TooSlow(Overrun):
    """A frame took longer than ``frame_timeout`` to arrive, or to be read by the peer."""

    setting = "frame_timeout"


class Host(Protocol):
    """What a call needs of its connection's server."""

    stuck: StuckCalls

    def overrun(self, conn: Any, error: Overrun) -> None: ...


class Line(Protocol):
    """What a call needs of its connection (``connection.Connection``)."""

    @property
    def server(self) -> Host: ...

    sock: socket.socket
    lock: threading.Lock
    closed: bool
    deferred: bool
    abandoned: bool

    def send(self, data: bytes) -> None: ...
    def read_frame(self, park: bool = False, waiting: bool = True) -> Any: ...
    async def send_async(self, data: bytes) -> None: ...
    async def read_frame_async(self) -> Frame | None: ...
    def close(self) -> None: ...


class CallState(enum.Enum):
    RUNNING = "running"
    DONE = "done"
    EXPIRED = "expired"


# Bound once: an enum member is an attribute lookup (about 60 ns on Python 3.11),
# and these are read on every call's path.
_RUNNING, _DONE, _EXPIRED = CallState.RUNNING, CallState.DONE, CallState.EXPIRED
_EXTRA_INFO = int(MessageType.EXTRA_INFO)


class Call:
    """One call on a connection: its ExtraInfo line to APISIX, its deadline, what runs in it."""

    __slots__ = (
        "conn", "started", "deadline", "plugin", "request_id", "conf_token", "state", "slow_logged", "stuck",
        "returned", "_alock",
    )  # fmt: skip

    def __init__(self, conn: Line, timeout: float) -> None:
        self.conn = conn
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.plugin: str | None = None
        self.request_id = 0
        self.conf_token = 0
        self.state = _RUNNING
        self.slow_logged = False
        self.stuck: str | None = None  # the name it counts under in StuckCalls (its thread was given up on)
        self.returned = False  # its thread is back from the plugins
        self._alock: asyncio.Lock | None = None

    @property
    def given_up(self) -> bool:
        """Whether the call has been given up at its deadline: nothing more may run for it."""
        return self.state is _EXPIRED or self.conn.abandoned

    def ask(self, question: bytes) -> bytes | bytearray:
        """Ask APISIX one ExtraInfo question on the call's connection; return its answer's payload.

        Questions go one at a time (a plugin may ask from several threads).
        """
        conn = self.conn
        if conn.deferred:  # a sync plugin of an async chain, off the loop: the loop owns the socket
            return aio.run(self.ask_async(question))
        with conn.lock:
            if self.state is _DONE:
                raise RuntimeError("this call has ended: ExtraInfo can only be asked while it is handled")
            if self.given_up or conn.closed:
                raise CallAbandoned("the call was given up")
            try:
                conn.send(encode(_EXTRA_INFO, question))
                answer = conn.read_frame(waiting=False)
            except (OSError, FrameError) as e:
                raise CallAbandoned(f"connection lost while waiting for ExtraInfo: {e}") from None
            except Overrun as e:
                conn.server.overrun(conn, e)
                raise CallAbandoned(f"ExtraInfo exchange dropped: {e}") from None
            if not isinstance(answer, Frame) or answer.type != _EXTRA_INFO:
                got = "EOF" if answer is None else f"a type-{answer.type} frame"
                raise CallAbandoned(f"APISIX answered an ExtraInfo question with {got}")
            return answer.payload

    async def ask_async(self, question: bytes) -> bytes | bytearray:
        """``ask`` on the event loop (a connection served there, ``loopside``)."""
        conn = self.conn
        if self._alock is None:
            self._alock = asyncio.Lock()
        async with self._alock:  # one question at a time, whichever task asks
            if self.state is _DONE:
                raise RuntimeError("this call has ended: ExtraInfo can only be asked while it is handled")
            if self.given_up or conn.closed:
                raise CallAbandoned("the call was given up")
            try:
                await conn.send_async(encode(_EXTRA_INFO, question))
                answer = await conn.read_frame_async()
            except (OSError, FrameError) as e:
                raise CallAbandoned(f"connection lost while waiting for ExtraInfo: {e}") from None
            except Overrun as e:
                conn.server.overrun(conn, e)
                raise CallAbandoned(f"ExtraInfo exchange dropped: {e}") from None
            if answer is None or answer.type != _EXTRA_INFO:
                got = "EOF" if answer is None else f"a type-{answer.type} frame"
                raise CallAbandoned(f"APISIX answered an ExtraInfo question with {got}")
            return answer.payload

    async def quiet(self) -> None:
        """Wait until no ExtraInfo exchange of this call is under way on the loop (before its socket closes:
        the loop must not be left watching a closed descriptor)."""
        lock = self._alock
        if lock is not None and lock.locked():
            async with lock:
                pass

    def finish(self) -> bool:
        """End the call by its reply; ``False`` if it has been given up (then send nothing)."""
        with self.conn.lock:
            self.returned = True
            if self.state is _RUNNING and not self.conn.abandoned:
                self.state = _DONE
                return True
        if self.stuck is not None:
            self.conn.server.stuck.leave(self.stuck)  # our thread is back from the plugin it was stuck in
            self.stuck = None
        return False

    def expire_async(self) -> bool:
        """End a call on the event loop at its deadline (its task is cancelled, no thread is stuck)."""
        with self.conn.lock:
            if self.state is not _RUNNING:
                return False
            self.state = _EXPIRED
            return True

    def expire(self, reply: bytes) -> bool:
        """Give the call up at its deadline: send ``reply`` (an Err frame) if the
        socket takes it at once, close the connection; ``False`` if it had ended."""
        conn = self.conn
        conn.abandoned = True  # an ExtraInfo wait holding the lock lets go at its next receive timeout
        with conn.lock:
            if self.state is not _RUNNING:
                return False
            self.state = _EXPIRED
            if not self.returned:
                self.stuck = conn.server.stuck.enter(self.plugin)
            if not conn.closed:
                with contextlib.suppress(OSError):
                    conn.sock.send(reply, socket.MSG_DONTWAIT)
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()  # releases the descriptor now, not when the plugin returns
        return True


def _awaiting(task: asyncio.Task[None]) -> list[types.FrameType]:
    """The frames of the coroutine chain ``task`` is suspended in, outermost first
    (``Task.get_stack`` gives only the outermost one)."""
    frames = []
    awaited: Any = task.get_coro()
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is not None:
            frames.append(frame)
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return frames


def report(call: Call, task: asyncio.Task[None], level: int, what: str, outcome: str) -> None:
    """Log the timeout or slowness of a call on the event loop, with the stack it awaits at."""
    where = f"plugin {call.plugin!r}" if call.plugin else "the runner (no plugin running)"
    stack = "".join(traceback.format_list(traceback.StackSummary.extract((f, f.f_lineno) for f in _awaiting(task))))
    logs.log_with_stack(
        log,
        level,
        "async call %s after %.1f s in %s: %s; where it awaits:",
        (what, time.monotonic() - call.started, where, outcome),
        stack or "(not started)",
        {"plugin": call.plugin, "request_id": call.request_id, "conf_token": call.conf_token},
    )
