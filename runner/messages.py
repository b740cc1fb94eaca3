"""FlatBuffers payloads <-> plain values, for the runner's side of the protocol.

Decoding (APISIX -> runner) uses a small bounds-checked table reader instead of
the generated ``a6pluginprotos`` accessors: every payload is untrusted, and the
generic runtime reads out of range, loops over forged vector lengths or raises
assorted errors on garbage. Here every offset is checked and every failure is a
``DecodeError`` (Err ``BAD_REQUEST``). Encoding (runner -> APISIX) uses the
``flatbuffers`` Builder with the schema's slot numbers (ext-plugin.fbs v0.6.1),
which also covers the fields ``a6pluginprotos`` 0.2.1 lacks: ``Rewrite.resp_headers``
(slot 3), ``Rewrite.body`` (slot 4), ``ExtraInfo.RespBody`` and ``HTTPRespCall``.

Text is decoded as UTF-8 with ``surrogateescape`` and encoded back the same way:
nginx hands over raw bytes, and they must reach the upstream unchanged.
No sockets here.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import NamedTuple

import flatbuffers

from .errors import DecodeError, ErrCode
from .http import InfoKind

#: ``[TextEntry]`` as ``(name, value)`` pairs; a ``None`` value is an absent one.
Entries = Sequence[tuple[str, str | None]]

# A6.Method, in enum order; GET (0) is the default and usually absent.
METHODS = (
    "GET", "HEAD", "POST", "PUT", "DELETE", "MKCOL", "COPY", "MOVE", "OPTIONS",
    "PROPFIND", "PROPPATCH", "LOCK", "UNLOCK", "PATCH", "TRACE",
)  # fmt: skip

_ACTION_STOP = 1
_ACTION_REWRITE = 2

_u8 = struct.Struct("<B").unpack_from
_u16 = struct.Struct("<H").unpack_from
_u32 = struct.Struct("<I").unpack_from
_i32 = struct.Struct("<i").unpack_from


class _Table:
    """A FlatBuffers table whose every read is checked against the buffer."""

    __slots__ = ("_buf", "_pos", "_vt", "_vt_len")

    def __init__(self, buf: bytes, pos: int) -> None:
        size = len(buf)
        if not 0 <= pos <= size - 4:
            raise DecodeError(f"table offset {pos} outside a {size}-byte payload")
        vt = pos - _i32(buf, pos)[0]
        if not 0 <= vt <= size - 4:
            raise DecodeError(f"vtable offset {vt} outside a {size}-byte payload")
        vt_len = _u16(buf, vt)[0]
        if vt_len < 4 or vt + vt_len > size:
            raise DecodeError(f"vtable of {vt_len} bytes does not fit the payload")
        self._buf = buf
        self._pos = pos
        self._vt = vt
        self._vt_len = vt_len

    def _field(self, slot: int) -> int:
        """Absolute position of field ``slot``, or 0 if absent."""
        entry = 4 + 2 * slot
        if entry >= self._vt_len:
            return 0
        offset: int = _u16(self._buf, self._vt + entry)[0]
        return self._pos + offset if offset else 0

    def u8(self, slot: int) -> int:
        at = self._field(slot)
        return _u8(self._buf, at)[0] if at else 0

    def u16(self, slot: int) -> int:
        at = self._field(slot)
        return _u16(self._buf, at)[0] if at else 0

    def u32(self, slot: int) -> int:
        at = self._field(slot)
        return _u32(self._buf, at)[0] if at else 0

    def _vector(self, slot: int, item_size: int) -> tuple[int, int] | None:
        at = self._field(slot)
        if not at:
            return None
        vec = at + _u32(self._buf, at)[0]
        count: int = _u32(self._buf, vec)[0]
        start = vec + 4
        if start + count * item_size > len(self._buf):
            raise DecodeError(f"vector of {count} items runs past the payload")
        return start, count

    def bytes(self, slot: int) -> bytes | None:
        """A ``[ubyte]`` or ``string`` field; ``None`` if absent (``b""`` if empty)."""
        vec = self._vector(slot, 1)
        return None if vec is None else self._buf[vec[0] : vec[0] + vec[1]]

    def text(self, slot: int) -> str | None:
        raw = self.bytes(slot)
        return None if raw is None else raw.decode("utf-8", "surrogateescape")

    def table(self, slot: int) -> _Table | None:
        at = self._field(slot)
        return _Table(self._buf, at + _u32(self._buf, at)[0]) if at else None

    def tables(self, slot: int) -> list[_Table]:
        vec = self._vector(slot, 4)
        if vec is None:
            return []
        buf = self._buf
        return [_Table(buf, p + _u32(buf, p)[0]) for p in range(vec[0], vec[0] + 4 * vec[1], 4)]

    def entries(self, slot: int) -> list[tuple[str, str | None]]:
        """A ``[TextEntry]`` field as ``(name, value)`` pairs; ``value`` is ``None`` when absent."""
        return [(e.text(0) or "", e.text(1)) for e in self.tables(slot)]


def _root(payload: bytes) -> _Table:
    if len(payload) < 12:  # root offset + smallest vtable + table
        raise DecodeError(f"a {len(payload)}-byte payload cannot hold a FlatBuffers table")
    return _Table(payload, _u32(payload, 0)[0])


# --- APISIX -> runner -------------------------------------------------------


class PrepareConf(NamedTuple):
    key: str
    conf: list[tuple[str, str]]


class ReqCall(NamedTuple):
    id: int
    conf_token: int
    method: str
    path: str
    src_ip: bytes
    args: list[tuple[str, str]]
    headers: list[tuple[str, str]]


class RespCall(NamedTuple):
    id: int
    conf_token: int
    status: int
    headers: list[tuple[str, str]]


def _present(entries: Entries) -> list[tuple[str, str]]:
    # A valueless TextEntry is a bare query arg (``?flag``); plugins read it as "".
    return [(n, "" if v is None else v) for n, v in entries]


def parse_prepare_conf(payload: bytes) -> PrepareConf:
    """``A6.PrepareConf.Req``: the route's ordered ``(plugin name, conf)`` list and its key."""
    try:
        t = _root(payload)
        return PrepareConf(t.text(1) or "", _present(t.entries(0)))
    except struct.error as e:
        raise DecodeError(f"PrepareConf.Req: {e}") from None


def parse_req_call(payload: bytes) -> ReqCall:
    """``A6.HTTPReqCall.Req``."""
    try:
        t = _root(payload)
        method = t.u8(2)
        return ReqCall(
            id=t.u32(0),
            conf_token=t.u32(6),
            method=METHODS[method] if method < len(METHODS) else f"METHOD_{method}",
            path=t.text(3) or "/",
            src_ip=t.bytes(1) or b"",
            args=_present(t.entries(4)),
            headers=_present(t.entries(5)),
        )
    except struct.error as e:
        raise DecodeError(f"HTTPReqCall.Req: {e}") from None


def parse_resp_call(payload: bytes) -> RespCall:
    """``A6.HTTPRespCall.Req`` (not in a6pluginprotos 0.2.1): id 0, status 1, headers 2, token 3."""
    try:
        t = _root(payload)
        return RespCall(id=t.u32(0), conf_token=t.u32(3), status=t.u16(1), headers=_present(t.entries(2)))
    except struct.error as e:
        raise DecodeError(f"HTTPRespCall.Req: {e}") from None


def parse_extra_info_resp(payload: bytes) -> bytes | None:
    """``A6.ExtraInfo.Resp``: the result, ``None`` when APISIX sent none (``b""`` if empty)."""
    try:
        return _root(payload).bytes(0)
    except struct.error as e:
        raise DecodeError(f"ExtraInfo.Resp: {e}") from None


# --- runner -> APISIX -------------------------------------------------------


def _text_entries(b: flatbuffers.Builder, pairs: Entries) -> int:
    offsets = []
    for name, value in pairs:
        n = b.CreateString(name.encode("utf-8", "surrogateescape"))
        v = None if value is None else b.CreateString(value.encode("utf-8", "surrogateescape"))
        b.StartObject(2)
        if v is not None:
            b.PrependUOffsetTRelativeSlot(1, v, 0)
        b.PrependUOffsetTRelativeSlot(0, n, 0)
        offsets.append(b.EndObject())
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return int(b.EndVector())


def _finish(b: flatbuffers.Builder, root: int) -> bytes:
    b.Finish(root)
    return bytes(b.Output())


def encode_err(code: ErrCode) -> bytes:
    """``A6.Err.Resp``; code 0 is left out by the builder, which still yields a 12-byte table."""
    b = flatbuffers.Builder(16)
    b.StartObject(1)
    b.PrependUint8Slot(0, int(code), 0)
    return _finish(b, b.EndObject())


def encode_prepare_conf_resp(token: int) -> bytes:
    b = flatbuffers.Builder(16)
    b.StartObject(1)
    b.PrependUint32Slot(0, token, 0)
    return _finish(b, b.EndObject())


def _req_call_resp(b: flatbuffers.Builder, id: int, action_type: int, action: int | None) -> bytes:
    b.StartObject(3)
    if action is not None:
        b.PrependUOffsetTRelativeSlot(2, action, 0)
    b.PrependUint8Slot(1, action_type, 0)
    b.PrependUint32Slot(0, id, 0)
    return _finish(b, b.EndObject())


def encode_no_action(id: int) -> bytes:
    """``HTTPReqCall.Resp{id}`` without an action: APISIX lets the request go on unchanged."""
    return _req_call_resp(flatbuffers.Builder(16), id, 0, None)


def encode_stop(id: int, status: int, headers: Entries, body: bytes | None) -> bytes:
    """``HTTPReqCall.Resp`` with a Stop: APISIX answers the client with it."""
    b = flatbuffers.Builder(64 + (len(body) if body else 0))
    hv = _text_entries(b, headers) if headers else None
    bv = b.CreateByteVector(body) if body else None  # an empty body cannot be sent
    b.StartObject(3)
    if bv is not None:
        b.PrependUOffsetTRelativeSlot(2, bv, 0)
    if hv is not None:
        b.PrependUOffsetTRelativeSlot(1, hv, 0)
    b.PrependUint16Slot(0, status, 0)
    return _req_call_resp(b, id, _ACTION_STOP, b.EndObject())


def encode_rewrite(
    id: int,
    *,
    path: str | None = None,
    headers: Entries = (),
    args: Entries = (),
    resp_headers: Entries = (),
    body: bytes | None = None,
) -> bytes:
    """``HTTPReqCall.Resp`` with a Rewrite (5 slots; a6pluginprotos' ``RewriteStart`` has 3)."""
    b = flatbuffers.Builder(64 + (len(body) if body else 0))
    p = b.CreateString(path.encode("utf-8", "surrogateescape")) if path is not None else None
    hv = _text_entries(b, headers) if headers else None
    av = _text_entries(b, args) if args else None
    rv = _text_entries(b, resp_headers) if resp_headers else None
    bv = b.CreateByteVector(body) if body else None
    b.StartObject(5)
    for slot, offset in ((4, bv), (3, rv), (2, av), (1, hv), (0, p)):
        if offset is not None:
            b.PrependUOffsetTRelativeSlot(slot, offset, 0)
    return _req_call_resp(b, id, _ACTION_REWRITE, b.EndObject())


def encode_resp_call_resp(id: int, status: int, headers: Entries, body: bytes | None) -> bytes:
    """``A6.HTTPRespCall.Resp``: id 0, status 1 (0 = keep upstream's), headers 2, body 3."""
    b = flatbuffers.Builder(64 + (len(body) if body else 0))
    hv = _text_entries(b, headers) if headers else None
    bv = b.CreateByteVector(body) if body else None
    b.StartObject(4)
    if bv is not None:
        b.PrependUOffsetTRelativeSlot(3, bv, 0)
    if hv is not None:
        b.PrependUOffsetTRelativeSlot(2, hv, 0)
    b.PrependUint16Slot(1, status, 0)
    b.PrependUint32Slot(0, id, 0)
    return _finish(b, b.EndObject())


def encode_extra_info_req(kind: InfoKind, name: str = "") -> bytes:
    """``A6.ExtraInfo.Req``: a Var (with its name), ReqBody or RespBody question."""
    b = flatbuffers.Builder(32 + len(name))
    if kind is InfoKind.VAR:
        n = b.CreateString(name.encode("utf-8", "surrogateescape"))
        b.StartObject(1)
        b.PrependUOffsetTRelativeSlot(0, n, 0)
    else:
        b.StartObject(0)  # ReqBody and RespBody are empty tables
    info = b.EndObject()
    b.StartObject(2)
    b.PrependUOffsetTRelativeSlot(1, info, 0)
    b.PrependUint8Slot(0, int(kind), 0)
    return _finish(b, b.EndObject())
