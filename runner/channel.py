"""The master <-> worker line: messages over a socketpair, and requests that wait for their answer.

A message is a JSON object framed by a 4-byte big-endian length. Both ends are
this runner, so nothing here is peer input; conf values are JSON strings
(``json`` escapes the lone surrogates that carry raw bytes, and reads them
back). Rules:

* ``send`` may be called from any thread (one lock per channel), ``recv``
  from one reader thread only.
* ``Requests`` pairs a request with its answer by ``id``: the asking thread
  waits on its own event, so many pool threads can ask at once while the
  reader thread hands the answers out.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from typing import Any

_LENGTH = struct.Struct(">I")
Message = dict[str, Any]


class ChannelClosed(Exception):
    """The other end is gone."""


class Channel:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._send_lock = threading.Lock()

    def send(self, message: Message) -> None:
        data = json.dumps(message, separators=(",", ":")).encode()
        with self._send_lock:
            try:
                self.sock.sendall(_LENGTH.pack(len(data)) + data)
            except OSError as e:
                raise ChannelClosed(str(e)) from None

    def recv(self) -> Message:
        size = _LENGTH.unpack(self._exactly(4))[0]
        result: Message = json.loads(self._exactly(size))
        return result

    def _exactly(self, size: int) -> bytes:
        chunks, left = [], size
        while left:
            try:
                chunk = self.sock.recv(min(left, 1 << 20))
            except OSError as e:
                raise ChannelClosed(str(e)) from None
            if not chunk:
                raise ChannelClosed("the other end closed the channel")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes our reader thread, which close() alone would not
        except OSError:
            pass  # not connected any more
        self.sock.close()


class _Waiter:
    __slots__ = ("done", "answer")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.answer: Message | None = None


class Requests:
    """Requests over a channel whose answers come back through ``answered``."""

    def __init__(self, channel: Channel, timeout: float) -> None:
        self.channel = channel
        self.timeout = timeout
        self._lock = threading.Lock()
        self._next = 0
        self._waiting: dict[int, _Waiter] = {}
        self.closed = False

    def ask(self, message: Message) -> Message:
        waiter = _Waiter()
        with self._lock:
            if self.closed:
                raise ChannelClosed("the channel is closed")
            self._next += 1
            rid = self._next
            self._waiting[rid] = waiter
        try:
            self.channel.send({**message, "id": rid})
            if not waiter.done.wait(self.timeout) or waiter.answer is None:
                raise ChannelClosed(f"no answer to {message.get('op')!r} within {self.timeout:g} s")
            return waiter.answer
        finally:
            with self._lock:
                self._waiting.pop(rid, None)

    def answered(self, message: Message) -> None:
        with self._lock:
            waiter = self._waiting.get(message.get("id", 0))
        if waiter is not None:
            waiter.answer = message
            waiter.done.set()

    def close(self) -> None:
        """Wake every waiting request: no answer will come."""
        with self._lock:
            self.closed = True
            waiters = list(self._waiting.values())
        for waiter in waiters:
            waiter.done.set()
