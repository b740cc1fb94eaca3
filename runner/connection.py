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
  its thread: the connection moves to the event loop (``loopside``: its socket
  non-blocking, ExtraInfo through ``ask_async``, frames and replies through
  ``read_frame_async``/``send_async`` under the same bounds, what arrives
  received by the loop's reader, ``inbox``) and stays there while its calls
  are async. A frame read there that needs a thread comes back with the
  connection (``handover``): ``serve`` answers it first, socket blocking
  again, then goes on as above.
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

from .calls import Call, OverBudget, Overrun, TooSlow
from .config import Config
from .dispatch import Dispatcher, OffLoop, Pending
from .errors import CallAbandoned, FrameError
from .frame import Frame, FrameDecoder
from .inbox import Inbox
from .pool import Worker, WorkerPool
from .watchdog import StuckCalls


class LoopSide(Protocol):
    """Where a connection goes for its async calls (``loopside.OnLoop``)."""

    def take(self, conn: Connection, call: Call, pending: Pending) -> None: ...


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

    @property
    def on_loop(self) -> LoopSide: ...

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
    """An accepted APISIX connection, served one call at a time by pool threads or on the event loop."""

    __slots__ = (
        "server", "sock", "decoder", "lock", "charged", "frame_started", "closed", "deferred", "handover", "abandoned",
        "inbox",
    )  # fmt: skip

    def __init__(self, server: Server, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.decoder = FrameDecoder()
        self.lock = threading.Lock()  # held by a call's ExtraInfo question, its end, and close
        self.charged = 0  # bytes of this connection's frames counted in the budget
        self.frame_started = 0.0  # when the unfinished frame in the decoder began to arrive
        self.closed = False
        self.deferred = False  # served on the event loop (``loopside``): the loop owns the socket
        self.handover: tuple[Call, OffLoop] | None = None  # a call the loop read, for the next pool thread
        self.abandoned = False  # the watchdog gave its call up: it sends the 503 and closes
        self.inbox: Inbox | None = None  # on the event loop: what the loop's reader has received

    # --- serving ------------------------------------------------------------

    def serve(self, worker: Worker) -> None:
        """Answer calls until the connection closes, goes back to the selector or moves to the event loop."""
        server = self.server
        pool = server.pool
        dispatch = server.dispatcher.handle
        timeout = server.call_timeout
        park = pool.may_park()  # a fresh connection may have sent nothing yet
        handed, self.handover = self.handover, None
        try:
            while True:
                if handed is None:
                    received = self.read_frame(park=park)
                    if type(received) is not Frame:
                        if received is RELEASED:
                            server.watch(self)
                        else:  # EOF
                            self.close()
                        return
                    got: Frame | None = received
                    call = Call(self, timeout)
                else:  # a frame the event loop read and decoded: answered first
                    got, (call, off) = None, handed
                worker.call = call
                try:
                    if got is not None:
                        result = dispatch(got.type, got.payload, call)
                    else:
                        handed, result = None, off.run(*off.args)
                except BaseException:
                    call.finish()
                    raise
                finally:
                    worker.call = None
                got = received = None  # (a body's payload goes before the reply does)
                if isinstance(result, Pending):
                    server.on_loop.take(self, call, result)
                    return
                if not call.finish():
                    return  # given up: the watchdog answers it and closes
                if self.charged:  # (most frames arrive whole and are never charged)
                    self.release_charge()
                self.send(result)
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

    # --- on the event loop (``loopside``) --------------------------------------

    async def read_frame_async(self) -> Frame | None:
        """``read_frame`` on the event loop: the next whole frame, ``None`` at a clean EOF.

        A frame that has started must arrive within ``frame_timeout`` (``TooSlow``).
        """
        decoder = self.decoder
        inbox = self.inbox
        if inbox is None:
            inbox = self.inbox = Inbox(self.sock, RECV_SIZE, 2 * RECV_SIZE)
        while (received := decoder.next_frame()) is None:
            if decoder.pending:
                try:
                    async with asyncio.timeout_at(self.frame_started + self.server.config.frame_timeout):
                        data = await inbox.receive()
                except TimeoutError:
                    raise self.too_slow() from None
            else:
                data = await inbox.receive()
            if (whole := decoder.whole_frame(data)) is not None:  # the usual read
                return whole
            if not self._held(data):
                return None
        self._frame_done()
        return received

    def leave_loop(self) -> None:
        """On the loop, before the connection goes to a thread or closes: the loop stops reading it.

        Bytes its reader received ahead (a peer that sent before its reply:
        APISIX never does) go to the decoder, uncharged: at most the inbox's limit.
        """
        inbox, self.inbox = self.inbox, None
        if inbox is not None:
            for data in inbox.close():
                self.decoder.feed(data)

    async def send_async(self, data: bytes) -> None:
        """``send`` on the event loop, under the same bounds."""
        sent = 0
        with contextlib.suppress(BlockingIOError):
            sent = self.sock.send(data)
        if sent < len(data):
            await self._send_rest_async(data, sent)

    async def _send_rest_async(self, data: bytes, sent: int) -> None:
        left = self._charge_reply(len(data), len(data) - sent)
        timeout = self.server.config.frame_timeout
        try:
            async with asyncio.timeout(timeout):
                await asyncio.get_running_loop().sock_sendall(self.sock, memoryview(data)[sent:])
        except TimeoutError:
            raise TooSlow(
                f"the peer did not read a reply of {len(data)} bytes within frame_timeout = {timeout:g} s"
            ) from None
        finally:
            self.server.budget.give(left)

    # --- reading and sending ----------------------------------------------------

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
        left = self._charge_reply(len(data), len(data) - sent)
        budget = self.server.budget
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

    def _charge_reply(self, size: int, left: int) -> int:
        """Charge the ``left`` bytes of a ``size``-byte reply that wait for the peer (``OverBudget``: no room)."""
        budget = self.server.budget
        if not budget.take(left):
            raise OverBudget(
                f"a reply of {size} bytes waiting for the peer would take the bytes held for frames past "
                f"memory_budget = {budget.limit} ({budget.used} in use)"
            )
        return left

    def release_charge(self) -> None:
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


def has_bytes(sock: socket.socket) -> bool:
    """Whether ``sock`` has bytes waiting (a call that reached us), without taking them."""
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # BlockingIOError (nothing), or a socket gone bad
        return False
