"""One APISIX connection and the calls on it: frames in, replies out, over a blocking socket.

Rules:

* A connection carries one call at a time (APISIX never pipelines): read a
  frame, answer it (asking ExtraInfo questions on the same connection in
  between), repeat. EOF on a frame boundary is a normal close; EOF inside a
  frame drops the connection.
* Between calls the serving thread parks on the connection when the pool
  allows it, or hands the connection back to the server's selector, partial
  frame and all (``Released``). The socket's receive timeout is the park
  interval: a timed-out ``recv`` is the moment to look at the pool again.
* Memory follows bytes received: the decoder's buffer grows as bytes arrive.
  The budget admits a frame whole or not at all: when its first bytes arrive
  (more than one receive buffer's worth, or split) its announced length is
  charged, and given back when the call it belongs to has been answered. A
  frame that does not fit drops its connection at once, so that the frames
  admitted complete under pressure rather than all being dropped part-way.
  A frame that arrives whole in one read is not charged: only the running
  calls can hold those.
* Time is bounded too (``frame_timeout``): a frame must arrive within it once
  it has started, and a reply must be read by the peer within it; a slower
  peer is dropped. Between frames a connection may idle for ever.
* A call's own state (its ExtraInfo line, its deadline, how it ended) is a
  ``calls.Call``.
* A call the dispatcher returns as ``Pending`` (an async plugin chain) leaves
  its thread: the connection goes to the event loop (its socket non-blocking,
  ExtraInfo through ``ask_async``), where the call's deadline cancels it and a
  slow call is logged with the stack it awaits at. Its reply comes back to a
  pool thread (``resume``), which sends it and serves the connection on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import threading
import time
from typing import Any, Final, Protocol

from . import aio
from .calls import Call, OverBudget, Overrun, TooSlow, report, report_slow
from .config import Config
from .dispatch import Dispatcher, Pending
from .errors import CallAbandoned, FrameError
from .frame import Frame, FrameDecoder
from .pool import Worker, WorkerPool
from .watchdog import StuckCalls


class Server(Protocol):
    """What a connection needs of its server (``server.RunnerServer``)."""

    pool: WorkerPool[Connection]
    dispatcher: Dispatcher
    budget: Any  # take(size) -> bool, give(size), used, limit
    stuck: StuckCalls
    config: Config
    call_timeout: float
    timeout_reply: bytes
    closing: bool

    def watch(self, conn: Connection) -> None: ...
    def forget(self, conn: Connection) -> None: ...
    def overrun(self, conn: Connection, error: Overrun) -> None: ...


log = logging.getLogger(__name__)

# Per recv; allocated per read rather than kept per connection, so idle pooled
# connections cost little memory.
RECV_SIZE = 64 * 1024


class _Released:
    """The connection went back to the selector (the pool needed its thread)."""


RELEASED: Final = _Released()


def timeval(seconds: float) -> bytes:
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1e6))


class Connection:
    """An accepted APISIX connection, served by pool threads one call at a time."""

    __slots__ = (
        "server", "sock", "decoder", "lock", "charged", "frame_started", "closed", "deferred", "resumed", "abandoned",
    )  # fmt: skip

    def __init__(self, server: Server, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.decoder = FrameDecoder()
        self.lock = threading.Lock()  # held by a call's ExtraInfo question, its end, and close
        self.charged = 0  # bytes of this connection's frames counted in the budget
        self.frame_started = 0.0  # when the unfinished frame in the decoder began to arrive
        self.closed = False
        self.deferred = False  # a call of this connection runs on the event loop
        self.resumed: tuple[bytes, bool] | None = None  # that call's reply, and whether to close after it
        self.abandoned = False  # the watchdog gave its call up: it sends the 503 and closes

    # --- serving ------------------------------------------------------------

    def serve(self, worker: Worker) -> None:
        """Answer calls until the connection closes or goes back to the selector."""
        server = self.server
        pool = server.pool
        dispatch = server.dispatcher.handle
        park = pool.may_park()  # a fresh connection may have sent nothing yet
        try:
            if self.resumed is not None:  # a call back from the event loop: its reply first
                reply, close = self.resumed
                self.resumed = None
                if self.charged:
                    self._release_charge()
                self.send(reply)
                if close or server.closing:
                    self.close()
                    return
                park = pool.may_park()
            while True:
                received = self.read_frame(park=park)
                if received is RELEASED:
                    server.watch(self)
                    return
                if received is None:
                    self.close()
                    return
                assert isinstance(received, Frame)
                call = Call(self, server.call_timeout)
                worker.call = call
                try:
                    result = dispatch(received.type, received.payload, call)
                except BaseException:
                    call.finish()
                    raise
                finally:
                    worker.call = None
                del received
                if isinstance(result, Pending):
                    self._defer(call, result)
                    return
                reply = result
                if not call.finish():
                    return  # given up: the watchdog answers it and closes
                if self.charged:  # (most frames arrive whole and are never charged)
                    self._release_charge()
                self.send(reply)
                if server.closing:
                    self.close()
                    return
                park = pool.may_park()
        except CallAbandoned as e:
            log.debug("call abandoned: %s", e)
            if self.abandoned:
                return  # the watchdog answers it and closes
        except FrameError as e:
            log.debug("dropping connection: %s", e)
        except Overrun as e:
            server.overrun(self, e)
        except OSError as e:  # ConnectionError, a socket the watchdog closed
            log.debug("connection lost: %s", e)
        except BaseException:
            self.close()  # the pool logs it: a connection in an unknown state is not served on
            raise
        self.close()

    # --- calls on the event loop ------------------------------------------------

    def _defer(self, call: Call, pending: Pending) -> None:
        self.deferred = True
        self.sock.setblocking(False)
        aio.submit(self._await(call, pending))

    async def _await(self, call: Call, pending: Pending) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        now = time.monotonic()
        expire = loop.call_later(max(0.0, call.deadline - now), self._expire, call, task)
        slow = loop.call_later(max(0.0, call.started + self.server.config.slow_call - now), report_slow, call, task)
        reply: bytes | None = None
        try:
            reply = await pending.coroutine
        except asyncio.CancelledError:
            pass  # the deadline: ``_expire`` has answered
        except CallAbandoned as e:
            log.debug("call abandoned: %s", e)
        except Overrun as e:
            self.server.overrun(self, e)
        except BaseException:  # the dispatcher turns errors into replies: this is the runner's own fault
            log.exception("unexpected error in an async call")
        finally:
            expire.cancel()
            slow.cancel()
        if call.finish():
            if reply is not None:
                self._resume(reply, close=False)
            else:
                self.close()

    def _expire(self, call: Call, task: asyncio.Task[None]) -> None:
        if call.expire_async():
            report(call, task, logging.ERROR, "timed out", "replied 503 and closed the connection")
            self._resume(self.server.timeout_reply, close=True)
            task.cancel()

    def _resume(self, reply: bytes, close: bool) -> None:
        """Hand a deferred call's reply to a pool thread, which sends it and serves the connection on."""
        with contextlib.suppress(OSError):
            self.sock.setblocking(True)
        self.deferred = False
        self.resumed = (reply, close)
        self.server.pool.submit(self)

    async def read_frame_async(self) -> Frame | None:
        """``read_frame`` inside a deferred call: the next whole frame, ``None`` at EOF.

        (The call's deadline bounds it: the task is cancelled then.)
        """
        loop = asyncio.get_running_loop()
        decoder = self.decoder
        while (received := decoder.next_frame()) is None:
            data = await loop.sock_recv(self.sock, RECV_SIZE)
            if (whole := decoder.whole_frame(data)) is not None:  # the usual read
                return whole
            if not self._held(data):
                return None
        self._frame_done()
        return received

    def read_frame(self, park: bool = False, waiting: bool = True) -> Frame | _Released | None:
        """The next whole frame; ``None`` at a clean EOF; ``FrameError`` at EOF inside a frame.

        ``waiting``: between calls, where the connection may go back to the
        selector (``RELEASED``): at once unless ``park``, else when the pool
        needs the thread (or the server is closing). A frame that has started
        is waited for only while the pool can spare the thread; otherwise it
        goes back to the selector with the bytes received so far. Inside a
        call (an ExtraInfo answer) it waits on, until the call is given up.
        """
        decoder = self.decoder
        sock = self.sock
        pool = self.server.pool
        flags = 0 if park or not waiting else socket.MSG_DONTWAIT
        while (received := decoder.next_frame()) is None:
            try:
                data = sock.recv(RECV_SIZE, flags)
            except BlockingIOError:  # the park interval passed, or (MSG_DONTWAIT) nothing is here yet
                if decoder.pending and time.monotonic() - self.frame_started > self.server.config.frame_timeout:
                    raise self.too_slow() from None
                if not waiting:
                    if self.abandoned:
                        raise CallAbandoned("the call was given up while waiting for ExtraInfo") from None
                elif flags or pool.should_release() or (self.server.closing and not decoder.pending):
                    return RELEASED
                continue
            if (whole := decoder.whole_frame(data)) is not None:  # the usual read
                return whole
            if not self._held(data):
                return None
            if waiting:
                flags = 0 if pool.may_park() else socket.MSG_DONTWAIT
            elif self.abandoned:
                raise CallAbandoned("the call was given up while waiting for ExtraInfo")
        self._frame_done()
        return received

    def _held(self, data: bytes) -> bool:
        """Hold ``data``, part of a frame; ``False`` at EOF (``b""``) between frames, ``FrameError`` inside one."""
        decoder = self.decoder
        if not data:
            if decoder.pending:
                raise FrameError(f"connection closed inside a frame ({decoder.pending} bytes buffered)")
            return False
        if not decoder.pending:
            self.frame_started = time.monotonic()
        decoder.feed(data)
        wanted = decoder.wanted
        if wanted > self.charged:
            budget = self.server.budget
            if not budget.take(wanted - self.charged):
                raise OverBudget(
                    f"a frame of {wanted} bytes would take the bytes held for frames past memory_budget = "
                    f"{budget.limit} ({budget.used} in use)"
                )
            self.charged = wanted
        if time.monotonic() - self.frame_started > self.server.config.frame_timeout:
            raise self.too_slow()
        return True

    def _frame_done(self) -> None:
        if self.decoder.pending:
            self.frame_started = time.monotonic()  # the next frame began in the same read

    def too_slow(self) -> TooSlow:
        return TooSlow(
            f"a frame took more than frame_timeout = {self.server.config.frame_timeout:g} s to arrive "
            f"({self.decoder.pending} of {self.decoder.wanted} bytes received)"
        )

    def send(self, data: bytes) -> None:
        """Send all of ``data``; a peer that has not read it within ``frame_timeout`` is dropped.

        A reply that does not fit the socket's buffer at once is charged to the
        budget while it waits for the peer.
        """
        sock = self.sock
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return
        budget = self.server.budget
        left = len(data) - sent
        if not budget.take(left):
            raise OverBudget(
                f"a reply of {len(data)} bytes waiting for the peer would take the bytes held for frames past "
                f"memory_budget = {budget.limit} ({budget.used} in use)"
            )
        timeout = self.server.config.frame_timeout
        deadline = time.monotonic() + timeout
        try:
            with memoryview(data) as view:
                while sent < len(data):
                    if time.monotonic() > deadline:
                        raise TooSlow(
                            f"the peer did not read a reply of {len(data)} bytes within frame_timeout = {timeout:g} s "
                            f"({sent} bytes read)"
                        )
                    try:
                        sent += sock.send(view[sent:])  # waits up to the socket's send timeout
                    except BlockingIOError:
                        pass
        finally:
            budget.give(left)

    # --- the budget -----------------------------------------------------------

    def _release_charge(self) -> None:
        done = self.charged - self.decoder.wanted
        if done > 0:
            self.charged -= done
            self.server.budget.give(done)

    # --- ending -------------------------------------------------------------

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            with contextlib.suppress(OSError):
                self.sock.close()
            if self.charged:
                self.server.budget.give(self.charged)
                self.charged = 0
            self.decoder.clear()  # whoever still refers to the connection, its bytes go now
        self.server.forget(self)

    def fileno(self) -> int:
        return self.sock.fileno()
