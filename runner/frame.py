"""The frame codec: pure bytes in, frames out. No sockets here (h11's rule).

Every message in both directions is one frame::

     byte 0     bytes 1..3                  bytes 4 .. 4+len-1
    +--------+--------------------------+------------------------------+
    |  type  |  len (uint24, big end.)  |  payload: one FlatBuffer     |
    +--------+--------------------------+------------------------------+

``len`` counts the payload only, so a payload holds at most 16,777,215 bytes.
Rules:

* A zero-length payload is never sent: APISIX's FlatBuffers reader raises on it
  and the client gets a 500 that ``allow_degradation`` cannot soften.
* The decoder accepts any fragmentation (one byte at a time, several frames in
  one chunk) and never raises: a 4-byte header always parses, so garbage either
  becomes a frame (whose payload the message layer then rejects) or waits for
  more bytes. Only the caller knows whether the stream ended mid-frame
  (``FrameDecoder.pending``).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .errors import ReplyTooLarge

HEADER_LEN = 4
MAX_PAYLOAD = 0xFFFFFF

_HEADER = struct.Struct(">I")
# Frames bigger than this that end a read are handed over without a copy.
_HAND_OVER = 64 * 1024


class Frame(NamedTuple):
    type: int  # a MessageType value, or any other byte a peer sent
    payload: bytes | bytearray


def encode(type_: int, payload: bytes) -> bytes:
    """Return the frame for ``payload``; refuses payloads APISIX could not read."""
    size = len(payload)
    if size > MAX_PAYLOAD:
        raise ReplyTooLarge(f"payload of {size} bytes exceeds the {MAX_PAYLOAD}-byte frame limit")
    if size == 0:
        # Never reached through our encoders (every FlatBuffer has a root offset),
        # but an empty frame would turn a fail-closed reply into an APISIX 500.
        raise ValueError("refusing to encode a zero-length payload")
    return _HEADER.pack(type_ << 24 | size) + payload


def decode_header(header: bytes) -> tuple[int, int]:
    """Split a 4-byte header into ``(type, payload length)``."""
    word: int = _HEADER.unpack(header)[0]
    return word >> 24, word & MAX_PAYLOAD


class FrameDecoder:
    """Incremental decoder: ``feed`` bytes as they arrive, take frames with ``next_frame``.

    Memory follows the bytes received, never a length a peer announces: the
    buffer holds what was fed and nothing more, so a header announcing 16 MiB
    that is never followed costs four bytes.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def next_frame(self) -> Frame | None:
        """Return the next complete frame, or ``None`` until more bytes arrive."""
        buf = self._buf
        if len(buf) < HEADER_LEN:
            return None
        word = _HEADER.unpack_from(buf)[0]
        end = HEADER_LEN + (word & MAX_PAYLOAD)
        if len(buf) < end:
            return None
        if len(buf) == end and end > _HAND_OVER:
            # A big frame (a body) and nothing after it: the buffer itself becomes
            # the payload (deleting a bytearray's head moves no bytes).
            self._buf = bytearray()
            del buf[:HEADER_LEN]
            return Frame(word >> 24, buf)
        with memoryview(buf) as view:  # one copy out, not two (a bytearray slice copies too)
            payload = bytes(view[HEADER_LEN:end])
        del buf[:end]
        return Frame(word >> 24, payload)

    def whole_frame(self, data: bytes) -> Frame | None:
        """``data`` as a frame if the decoder is empty and ``data`` is exactly one
        whole frame (the usual read), else ``None`` (then ``feed`` it)."""
        if self._buf or len(data) < HEADER_LEN:
            return None
        word = _HEADER.unpack_from(data)[0]
        if len(data) != HEADER_LEN + (word & MAX_PAYLOAD):
            return None
        return Frame(word >> 24, data[HEADER_LEN:])

    @property
    def pending(self) -> int:
        """Bytes held that do not yet form a whole frame (non-zero at EOF = truncated)."""
        return len(self._buf)

    @property
    def wanted(self) -> int:
        """Bytes the decoder will hold once its first unfinished frame is whole
        (what it holds, while that frame's header is incomplete)."""
        buf = self._buf
        if len(buf) < HEADER_LEN:
            return len(buf)
        word: int = _HEADER.unpack_from(buf)[0]
        return max(len(buf), HEADER_LEN + (word & MAX_PAYLOAD))

    def clear(self) -> None:
        """Drop what is held (the connection is gone)."""
        self._buf = bytearray()
