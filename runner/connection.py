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
* ``Call`` is the state of one call: its ExtraInfo line (``ask``), its
  deadline, the plugin it is in. It ends exactly once, by its reply
  (``finish``) or by the watchdog (``expire``), under the connection's lock;
  the loser of that race sends nothing.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import socket
import struct
import threading
import time
from typing import TYPE_CHECKING, Final

from .errors import CallAbandoned, FrameError
from .frame import Frame, FrameDecoder, encode
from .protocol import MessageType

if TYPE_CHECKING:
    from .pool import Worker
    from .server import RunnerServer

log = logging.getLogger(__name__)

# Per recv; allocated per read rather than kept per connection, so idle pooled
# connections cost little memory.
RECV_SIZE = 64 * 1024


class _Released:
    """The connection went back to the selector (the pool needed its thread)."""


RELEASED: Final = _Released()


class OverBudget(Exception):
    """A frame would take the server past its memory budget."""


def timeval(seconds: float) -> bytes:
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1e6))


class CallState(enum.Enum):
    RUNNING = "running"
    DONE = "done"
    EXPIRED = "expired"


class Connection:
    """An accepted APISIX connection, served by pool threads one call at a time."""

    __slots__ = ("server", "sock", "decoder", "lock", "charged", "closed")

    def __init__(self, server: RunnerServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.decoder = FrameDecoder()
        self.lock = threading.Lock()  # held by a call's ExtraInfo question, its end, and close
        self.charged = 0  # bytes of this connection's frames counted in the budget
        self.closed = False

    # --- serving ------------------------------------------------------------

    def serve(self, worker: Worker) -> None:
        """Answer calls until the connection closes or goes back to the selector."""
        server = self.server
        pool = server.pool
        dispatch = server.dispatcher.handle
        park = True
        try:
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
                    reply = dispatch(received.type, received.payload, call)
                except BaseException:
                    call.finish()
                    raise
                finally:
                    worker.call = None
                del received
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


class Call:
    """One call on a connection: its ExtraInfo line to APISIX, its deadline, what runs in it.

    ``plugin``, ``request_id`` and ``conf_token`` are filled in by the
    dispatcher as it learns them, for the watchdog's log lines.
    """

    __slots__ = ("conn", "started", "deadline", "plugin", "request_id", "conf_token", "state", "slow_logged")

    def __init__(self, conn: Connection, timeout: float) -> None:
        self.conn = conn
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.plugin: str | None = None
        self.request_id = 0
        self.conf_token = 0
        self.state = CallState.RUNNING
        self.slow_logged = False

    def ask(self, question: bytes) -> bytes | bytearray:
        """Ask APISIX one ExtraInfo question on the call's connection; return its answer's payload.

        Questions go one at a time (a plugin may ask from several threads).
        """
        conn = self.conn
        with conn.lock:
            if self.state is CallState.DONE:
                raise RuntimeError("this call has ended: ExtraInfo can only be asked while it is handled")
            if self.state is CallState.EXPIRED or conn.closed:
                raise CallAbandoned("the call was given up")
            try:
                conn.sock.sendall(encode(MessageType.EXTRA_INFO, question))
                answer = conn.read_frame(waiting=False)
            except (OSError, FrameError) as e:
                raise CallAbandoned(f"connection lost while waiting for ExtraInfo: {e}") from None
            except OverBudget:
                conn.server.over_budget(conn)
                raise CallAbandoned("the ExtraInfo answer would exceed the memory budget") from None
            if not isinstance(answer, Frame) or answer.type != MessageType.EXTRA_INFO:
                got = "EOF" if answer is None else f"a type-{answer.type} frame"  # type: ignore[union-attr]
                raise CallAbandoned(f"APISIX answered an ExtraInfo question with {got}")
            return answer.payload

    def finish(self) -> bool:
        """End the call by its reply; ``False`` if it had already ended (expired)."""
        with self.conn.lock:
            if self.state is CallState.RUNNING:
                self.state = CallState.DONE
                return True
        self.conn.server.stuck.leave(self.plugin)  # our thread is back from the plugin it was stuck in
        return False

    def expire(self, reply: bytes) -> bool:
        """End the call at its deadline: send ``reply`` (an Err frame) if the socket
        takes it at once, close the connection; ``False`` if it had ended already."""
        conn = self.conn
        if not conn.lock.acquire(timeout=0.05):
            # An ExtraInfo question waits for APISIX: wake it, its answer is no longer wanted.
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
            conn.lock.acquire()
        try:
            if self.state is not CallState.RUNNING:
                return False
            self.state = CallState.EXPIRED
            conn.server.stuck.enter(self.plugin)
            if not conn.closed:
                with contextlib.suppress(OSError):
                    conn.sock.send(reply, socket.MSG_DONTWAIT)
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_RDWR)
        finally:
            conn.lock.release()
        conn.close()  # releases the descriptor now, not when the plugin returns
        return True
