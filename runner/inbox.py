"""What a connection on the event loop has received: one reader callback receives it ahead of the connection's task.

Rules:

* The reader is registered with the loop once, when the task first has to
  wait, and stays registered while the connection stays on the loop. A wait
  then costs no ``epoll_ctl`` and no failed receive each (``loop.sock_recv``
  costs two of each per call: register, unregister, and the receive that
  found nothing).
* At most ``limit`` bytes are received ahead of the task (plus an EOF or an
  error, after which nothing more is read); beyond that the reader pauses
  until the task has taken them, so a peer cannot make the loop hold more.
* Only the loop thread uses an ``Inbox``, and only one waiter at a time (the
  connection's task, or the ExtraInfo question it is in).
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque


class Inbox:
    """The receive side of one socket on the event loop (see the module docstring)."""

    __slots__ = ("_sock", "_fd", "_size", "_limit", "_loop", "_chunks", "_ahead", "_waiter", "_watching")

    def __init__(self, sock: socket.socket, size: int, limit: int) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self._size = size  # bytes per receive
        self._limit = limit
        self._loop = asyncio.get_running_loop()
        self._chunks: deque[bytes | OSError] = deque()
        self._ahead = 0  # bytes in ``_chunks``
        self._waiter: asyncio.Future[None] | None = None
        self._watching = False

    async def receive(self) -> bytes:
        """The next bytes received, ``b""`` at EOF; raises the ``OSError`` a receive met."""
        chunks = self._chunks
        if not chunks:
            if not self._watching:
                try:
                    return self._sock.recv(self._size)  # often here already: no loop iteration
                except (BlockingIOError, InterruptedError):
                    pass
                self._loop.add_reader(self._fd, self._readable)
                self._watching = True
            # (Watching: what has arrived is the reader's, on the loop's next look; a
            # receive here would mostly find nothing, one failed syscall per call.)
            self._waiter = waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        data = chunks.popleft()
        if isinstance(data, OSError):
            raise data
        self._ahead -= len(data)
        return data

    def close(self) -> list[bytes]:
        """Stop reading; returns the bytes received ahead (an EOF or an error is met again by the next reader)."""
        self._pause()
        ahead = [data for data in self._chunks if isinstance(data, bytes) and data]
        self._chunks.clear()
        self._ahead = 0
        return ahead

    def _readable(self) -> None:
        try:
            data: bytes | OSError = self._sock.recv(self._size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            data = e
        self._chunks.append(data)
        if isinstance(data, bytes) and data:
            self._ahead += len(data)
            if self._ahead >= self._limit:
                self._pause()
        else:
            self._pause()  # EOF or an error: nothing more to read
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _pause(self) -> None:
        if self._watching:
            self._loop.remove_reader(self._fd)
            self._watching = False
