"""Connections on the event loop: their async calls, and the waits between them, hold no thread.

Rules:

* A connection whose call is async (``dispatch.Pending``) moves to the loop
  (``OnLoop.take``: its socket made non-blocking once) and is served there by
  one task: the task runs the call, sends the reply from the loop, waits for
  the next frame holding no thread, and runs that call too if its chain is
  async. Consecutive async calls on a connection cost no hand-off, no Task,
  no timer and no reader registration each (``inbox``) (a micro-timing, Python 3.11 on the 2-CPU dev host: awaiting
  a call in the connection's task costs 0.25 µs, a new Task per call 15 µs, a
  timer set and cancelled 3.3 µs).
* Anything else read there (``dispatch.OffLoop``: a PrepareConf, a sync chain,
  an unknown token, a bad frame) goes to a pool thread with the frame already
  decoded (``Connection.handover``, socket blocking again): that thread
  answers it and serves the connection on. No sync plugin code runs on the
  loop.
* The bounds are every connection's: a frame that has started must arrive
  within ``frame_timeout`` and is charged to ``memory_budget``; a reply that
  does not fit the socket at once is charged too and must be read within
  ``frame_timeout`` (``Connection.read_frame_async``/``send_async``); the
  connection counts in ``max_connections`` until it closes; EOF closes it.
* Deadlines: while calls run on the loop, one sweep per tick (a tenth of the
  shortest of ``slow_call`` and ``call_timeout``, as the watchdog's) looks at
  them: a slow one is logged once with where it awaits; one past
  ``call_timeout`` is answered 503, its socket shut down and its task
  cancelled.
* Only the connection's task closes its socket, once no ExtraInfo exchange of
  its call is under way, so the loop is never left watching a closed
  descriptor. (A plugin that swallows the cancellation keeps the descriptor,
  shut down, until it returns.)
* Drain (``drain``, on the loop): a connection waiting for its next frame with
  nothing received is shut down for reading, so its task sees EOF and closes
  it at once; one whose next frame has begun to arrive is answered first. Like
  every connection, each closes after its reply once the server is closing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time

from . import aio
from .calls import Call, Overrun, report
from .connection import Connection, Server, has_bytes
from .dispatch import OffLoop, Pending
from .errors import CallAbandoned, FrameError
from .watchdog import tick_for

log = logging.getLogger(__name__)


class OnLoop:
    """A server's connections on the event loop, and the deadlines of their calls.

    ``take`` is called on a pool thread, ``drain`` through the loop; the rest runs on the loop.
    """

    def __init__(self, server: Server) -> None:
        self.server = server
        self.tick = tick_for(server.config.slow_call, server.call_timeout)
        self.running: dict[Call, asyncio.Task[None]] = {}  # the calls on the loop, with the task running each
        self.idle: set[Connection] = set()  # connections waiting for their next frame
        self._sweeping = False

    def take(self, conn: Connection, call: Call, pending: Pending) -> None:
        """Move ``conn`` to the loop, with its call ``pending`` (read by the calling pool thread)."""
        conn.deferred = True
        conn.sock.setblocking(False)
        aio.submit(self._serve(conn, call, pending))

    async def _serve(self, conn: Connection, call: Call, pending: Pending) -> None:
        """The connection's task: its calls while they are async, and the waits between them."""
        server = self.server
        dispatch = server.dispatcher.handle
        task = asyncio.current_task()
        assert task is not None
        running, idle = self.running, self.idle
        handed = False
        try:
            while True:
                running[call] = task
                if not self._sweeping:
                    self._sweeping = True
                    asyncio.get_running_loop().call_later(self.tick, self._sweep)
                try:
                    reply = await pending.coroutine
                finally:
                    running.pop(call, None)
                del pending
                if not call.finish():
                    return  # given up at its deadline: the sweep has answered it
                conn.release_charge()
                await conn.send_async(reply)
                del reply
                if server.closing:
                    return
                idle.add(conn)
                try:
                    received = await conn.read_frame_async()
                finally:
                    idle.discard(conn)
                if received is None:
                    return
                call = Call(conn, server.call_timeout)
                result = dispatch(received.type, received.payload, call, on_loop=True)
                del received
                if isinstance(result, OffLoop):
                    self._hand_over(conn, call, result)
                    handed = True
                    return
                pending = result
        except asyncio.CancelledError:
            pass  # at its call's deadline: the sweep has answered it
        except CallAbandoned as e:
            log.debug("call abandoned: %s", e)
        except FrameError as e:
            log.debug("dropping connection: %s", e)
        except Overrun as e:
            server.overrun(conn, e)
        except OSError as e:
            log.debug("connection lost: %s", e)
        except BaseException:  # the dispatcher turns errors into replies: this is the runner's own fault
            log.exception("unexpected error on a connection served on the event loop")
        finally:
            if not handed:
                await _close(conn, call)

    def _hand_over(self, conn: Connection, call: Call, off: OffLoop) -> None:
        """Give ``conn`` to a pool thread, which answers ``off`` (its next call) first."""
        conn.leave_loop()
        conn.sock.setblocking(True)
        conn.deferred = False
        conn.handover = (call, off)
        self.server.pool.submit(conn)

    # --- deadlines --------------------------------------------------------------

    def _sweep(self) -> None:
        now = time.monotonic()
        slow_call = self.server.config.slow_call
        try:
            for call, task in list(self.running.items()):
                if now >= call.deadline:
                    del self.running[call]
                    if call.expire_async():
                        self._expire(call, task)
                elif not call.slow_logged and now - call.started >= slow_call:
                    call.slow_logged = True
                    report(call, task, logging.WARNING, "is slow", "still awaiting")
        finally:
            if self.running:
                asyncio.get_running_loop().call_later(self.tick, self._sweep)
            else:
                self._sweeping = False

    def _expire(self, call: Call, task: asyncio.Task[None]) -> None:
        report(call, task, logging.ERROR, "timed out", "replied 503 and closed the connection")
        sock = call.conn.sock
        with contextlib.suppress(OSError):
            sock.send(self.server.timeout_reply)  # an Err frame, to a peer that waits: it fits at once
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # the peer sees the end now; an ExtraInfo wait ends at EOF
        task.cancel()

    # --- shutdown ---------------------------------------------------------------

    def drain(self) -> None:
        """The server is closing: end the waits of the connections that have received nothing."""
        for conn in list(self.idle):
            if not conn.decoder.pending and not has_bytes(conn.sock):
                with contextlib.suppress(OSError):
                    # Not cancel(): a frame its task has just read is answered, not lost.
                    conn.sock.shutdown(socket.SHUT_RD)


async def _close(conn: Connection, call: Call) -> None:
    with contextlib.suppress(OSError):
        conn.sock.shutdown(socket.SHUT_RDWR)  # an ExtraInfo exchange still under way elsewhere ends now
    with contextlib.suppress(asyncio.CancelledError):
        await call.quiet()
    conn.leave_loop()
    conn.close()
