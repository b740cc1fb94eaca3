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
* Memory follows bytes received: bytes a frame is assembled from are charged
  to the server's budget as they arrive and given back when the call they
  belong to has been answered. A frame that would exceed the budget drops the
  connection. A frame that arrives whole in one read (at most one receive
  buffer) is not charged: only the running calls can hold those.
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
from .calls import Call, OverBudget, report, report_slow
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
    def over_budget(self, conn: Connection) -> None: ...


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

    __slots__ = ("server", "sock", "decoder", "lock", "charged", "closed", "deferred", "resumed")

    def __init__(self, server: Server, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.decoder = FrameDecoder()
        self.lock = threading.Lock()  # held by a call's ExtraInfo question, its end, and close
        self.charged = 0  # bytes of this connection's frames counted in the budget
        self.closed = False
        self.deferred = False  # a call of this connection runs on the event loop
        self.resumed: tuple[bytes, bool] | None = None  # that call's reply, and whether to close after it

    # --- serving ------------------------------------------------------------

    def serve(self, worker: Worker) -> None:
        """Answer calls until the connection closes or goes back to the selector."""
        server = self.server
        pool = server.pool
        dispatch = server.dispatcher.handle
        park = True
        try:
            if self.resumed is not None:  # a call back from the event loop: its reply first
                reply, close = self.resumed
                self.resumed = None
                self._release_charge()
                self.sock.sendall(reply)
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
                    self.close()  # the watchdog answered it (or APISIX left): nothing more to send
                    return
                self._release_charge()
                self.sock.sendall(reply)
                if server.closing:
                    self.close()
                    return
                park = pool.may_park()
        except CallAbandoned as e:
            log.debug("call abandoned: %s", e)
        except FrameError as e:
            log.debug("dropping connection: %s", e)
        except OverBudget:
            server.over_budget(self)
        except OSError as e:  # ConnectionError, a send timeout, a socket the watchdog closed
            log.debug("connection lost: %s", e)
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
        except OverBudget:
            self.server.over_budget(self)
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
        """``read_frame`` inside a deferred call: the next whole frame, ``None`` at EOF."""
        loop = asyncio.get_running_loop()
        decoder = self.decoder
        while (received := decoder.next_frame()) is None:
            data = await loop.sock_recv(self.sock, RECV_SIZE)
            if not data:
                if decoder.pending:
                    raise FrameError(f"connection closed inside a frame ({decoder.pending} bytes buffered)")
                return None
            if not decoder.pending and (whole := decoder.whole_frame(data)) is not None:
                return whole
            self._charge(len(data))
            decoder.feed(data)
        return received

    def read_frame(self, park: bool = False, waiting: bool = True) -> Frame | _Released | None:
        """The next whole frame; ``None`` at a clean EOF; ``FrameError`` at EOF inside a frame.

        ``waiting``: between calls, where the connection may go back to the
        selector (``RELEASED``): at once unless ``park``, else when the pool
        needs the thread. Inside a call (an ExtraInfo answer) it waits on.
        """
        decoder = self.decoder
        sock = self.sock
        flags = 0 if park or not waiting else socket.MSG_DONTWAIT
        while (received := decoder.next_frame()) is None:
            try:
                data = sock.recv(RECV_SIZE, flags)
            except BlockingIOError:  # the park interval passed, or (MSG_DONTWAIT) nothing is here yet
                if waiting and (flags or self.server.pool.should_release()):
                    return RELEASED
                continue
            if not data:
                if decoder.pending:
                    raise FrameError(f"connection closed inside a frame ({decoder.pending} bytes buffered)")
                return None
            if not decoder.pending and (whole := decoder.whole_frame(data)) is not None:
                return whole
            flags = 0  # a frame has started: wait for the rest of it
            self._charge(len(data))
            decoder.feed(data)
        return received

    # --- the budget -----------------------------------------------------------

    def _charge(self, size: int) -> None:
        if not self.server.budget.take(size):
            raise OverBudget
        self.charged += size

    def _release_charge(self) -> None:
        done = self.charged - self.decoder.pending
        if done:
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
        self.server.forget(self)

    def wake(self) -> None:
        """Wake a thread parked on this connection (for the drain): bytes already
        received are still read, then the parked ``recv`` sees EOF."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RD)

    def fileno(self) -> int:
        return self.sock.fileno()
