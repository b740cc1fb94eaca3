"""What APISIX sends -> plain values: the bounds-checked reader of untrusted payloads.

Rules:

* Every payload is untrusted: every offset is checked against the buffer and
  every failure is a ``DecodeError`` (Err BAD_REQUEST), never another
  exception. The generic ``flatbuffers`` runtime is not used here: it reads
  out of range, loops over forged vector lengths and raises assorted errors
  on garbage.
* Decoding is linear in the payload, whatever its offsets (the decode budget
  below): a payload that would decode to more is refused.
* Text is decoded as UTF-8 with ``surrogateescape`` (and ``encode`` writes it
  back the same way): nginx hands over raw bytes, and they must reach the
  upstream unchanged.
* An HTTPReqCall's id, token and method are read at once; its path, address,
  args and headers only when first used, because most plugins read few of them.
* Pure: no I/O.

The decode budget (docs/protocol.md §4)
---------------------------------------
FlatBuffers lets any number of vector cells point at one table and any number
of tables at one string: a 16 MiB payload can list four million headers that
are all one 12-byte entry, and decoding them would build gigabytes. So each
payload may decode to at most ``BUDGET_PER_BYTE`` x its length in *budget
bytes*: every ``[TextEntry]`` decoded from it costs ``ENTRY_COST`` plus its
name's and value's bytes, every other string or byte vector its bytes, and
the parts of an HTTPReqCall decoded later share the same budget (a part read
twice is charged once). A vector whose entry count alone costs more than is
left is refused before anything is built, and each string is charged before
it is decoded.

``ENTRY_COST`` is 17 because that is the fewest payload bytes an entry takes
when nothing in it is shared: its 4-byte vector cell, its 8-byte table
(soffset and name offset) and its name string's 4-byte length and NUL (a
value takes 9 more). APISIX's Lua builder shares vtables but never tables or
strings, so everything decoded from a payload it built costs at most the
payload's own length: ``BUDGET_PER_BYTE = 1`` never refuses one. A decoded
entry (list cell, tuple, two ``str``) takes about 170 bytes of Python
objects for its 17 budget bytes, so decoded size stays within about 10 x the
payload, and decoding work is linear in it. A vector also holds at most
``MAX_ENTRIES``, which bounds one list of pairs whatever the payload size.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import NamedTuple, TypeVar

from .errors import DecodeError
from .protocol import (
    METHODS,
    ExtraInfoResp,
    HTTPReqCallReq,
    HTTPRespCallReq,
    PrepareConfReq,
    TextEntry,
)

__all__ = [
    "BUDGET_PER_BYTE",
    "ENTRY_COST",
    "MAX_ENTRIES",
    "Buffer",
    "PrepareConf",
    "ReqCall",
    "RespCall",
    "extra_info",
    "prepare_conf",
    "req_call",
    "resp_call",
]

#: A payload as received: ``bytes``, or the ``bytearray`` a big frame was read into.
Buffer = bytes | bytearray

#: Budget bytes per payload byte; see the module docstring.
BUDGET_PER_BYTE = 1
#: Budget bytes each decoded ``[TextEntry]`` costs besides its strings' bytes.
ENTRY_COST = 17
#: Entries in one ``[TextEntry]`` vector. nginx's header buffers keep what
#: APISIX sends in the hundreds; 65,536 decoded entries are about 11 MiB of
#: Python objects, which the budget alone would let a 16 MiB payload pass.
MAX_ENTRIES = 65_536

T = TypeVar("T")

_u8 = struct.Struct("<B").unpack_from
_u16 = struct.Struct("<H").unpack_from
_u32 = struct.Struct("<I").unpack_from
_i32 = struct.Struct("<i").unpack_from

# A vtable's field offsets, read in one unpack: up to 8 (the schema's largest
# table has 7 slots); the slots a vtable lacks read as absent (0).
_MAX_SLOTS = 8
_slot_readers = [struct.Struct(f"<{n}H").unpack_from for n in range(_MAX_SLOTS + 1)]
_ABSENT = tuple((0,) * (_MAX_SLOTS - n) for n in range(_MAX_SLOTS + 1))  # by slots present


def _vtable(buf: Buffer, vt: int) -> tuple[int, ...]:
    """The field offsets (0 = absent) of the vtable at ``vt``, after checking it lies in ``buf``."""
    size = len(buf)
    if not 0 <= vt <= size - 4:
        raise DecodeError(f"vtable offset {vt} outside a {size}-byte payload")
    vt_len = _u16(buf, vt)[0]
    if vt_len < 4 or vt + vt_len > size:
        raise DecodeError(f"vtable of {vt_len} bytes does not fit the payload")
    n = min((vt_len - 4) // 2, _MAX_SLOTS)
    slots: tuple[int, ...] = _slot_readers[n](buf, vt + 4)
    return slots + _ABSENT[n]


def _budget(payload: Buffer) -> int:
    return BUDGET_PER_BYTE * len(payload)


def _over_budget(what: str, need: int, left: int, payload: Buffer) -> DecodeError:
    return DecodeError(
        f"{what} would decode to more than the payload allows: it needs {need} bytes of decode budget, "
        f"{left} of the payload's {_budget(payload)} are left"
    )


class _Table:
    """A FlatBuffers table whose every read is checked against the buffer.

    The readers of strings and vectors return the value and what it cost
    against the decode budget; ``left`` is what remains of it.
    """

    __slots__ = ("_buf", "_pos", "_slots")

    def __init__(self, buf: Buffer, pos: int) -> None:
        self._buf = buf
        self._pos = pos
        # A table outside the buffer fails this read with a struct.error.
        self._slots = _vtable(buf, pos - _i32(buf, pos)[0])

    # A field is at ``_pos`` + its offset; offset 0 means absent.

    def u8(self, slot: int) -> int:
        offset = self._slots[slot]
        return _u8(self._buf, self._pos + offset)[0] if offset else 0

    def u16(self, slot: int) -> int:
        offset = self._slots[slot]
        return _u16(self._buf, self._pos + offset)[0] if offset else 0

    def u32(self, slot: int) -> int:
        offset = self._slots[slot]
        return _u32(self._buf, self._pos + offset)[0] if offset else 0

    def _vector(self, slot: int, item_size: int) -> tuple[int, int] | None:
        """``(start, count)`` of the vector or string in field ``slot``, or ``None`` if absent."""
        offset = self._slots[slot]
        if not offset:
            return None
        buf = self._buf
        at = self._pos + offset
        start = at + _u32(buf, at)[0]
        count: int = _u32(buf, start)[0]
        start += 4
        if start + count * item_size > len(buf):
            raise DecodeError(f"vector of {count} items runs past the payload")
        return start, count

    def _bytes(self, slot: int, left: int, what: str) -> tuple[int, int] | None:
        """``(start, end)`` of the string or byte vector in field ``slot``, charged to ``left``; ``None`` if absent."""
        vec = self._vector(slot, 1)
        if vec is None:
            return None
        start, count = vec
        if count > left:
            raise _over_budget(what, count, left, self._buf)
        return start, start + count

    def byte_vector(self, slot: int, left: int, what: str) -> tuple[bytes | None, int]:
        """A ``[ubyte]`` field; ``None`` if absent (``b""`` if empty)."""
        span = self._bytes(slot, left, what)
        if span is None:
            return None, 0
        start, end = span
        buf = self._buf
        if type(buf) is bytes:  # a bytes slice is the one copy
            return buf[start:end], end - start
        with memoryview(buf) as view:  # a bytearray slice would copy twice
            return bytes(view[start:end]), end - start

    def text(self, slot: int, left: int, what: str) -> tuple[str | None, int]:
        """A ``string`` field; ``None`` if absent."""
        span = self._bytes(slot, left, what)
        if span is None:
            return None, 0
        start, end = span
        return self._buf[start:end].decode("utf-8", "surrogateescape"), end - start

    def entries(self, slot: int, left: int, what: str) -> tuple[list[tuple[str, str]], int]:
        """A ``[TextEntry]`` field as ``(name, value)`` pairs (``[]`` if absent).

        An absent value reads as ``""``: a valueless TextEntry is a bare query
        arg (``?flag``), which plugins read as empty.
        """
        vec = self._vector(slot, 4)
        if vec is None:
            return [], 0
        start, count = vec
        if count > MAX_ENTRIES:
            raise DecodeError(f"{what}: {count} entries, over the limit of {MAX_ENTRIES}")
        cost = count * ENTRY_COST
        buf = self._buf
        size = len(buf)
        if cost > left:
            raise _over_budget(f"{what}: {count} entries", cost, left, buf)
        out: list[tuple[str, str]] = []
        vt = -1
        for cell in range(start, start + 4 * count, 4):
            table = cell + _u32(buf, cell)[0]
            at = table - _i32(buf, table)[0]
            if at != vt:  # entries usually share one vtable: read it once
                vt = at
                slots = _vtable(buf, vt)
                name_at, value_at = slots[TextEntry.NAME], slots[TextEntry.VALUE]
            # The strings are read as ``_vector`` reads them, inline: this loop runs
            # for every header decoded, and a call per string made the benchmark's
            # ``resp`` scenario 3-5 % slower (bench/inproc.py). An absent one is "".
            name_start = name_end = value_start = value_end = 0
            if name_at:
                name_start = table + name_at
                name_start += _u32(buf, name_start)[0] + 4
                name_end = name_start + _u32(buf, name_start - 4)[0]
            if value_at:
                value_start = table + value_at
                value_start += _u32(buf, value_start)[0] + 4
                value_end = value_start + _u32(buf, value_start - 4)[0]
            if name_end > size or value_end > size:
                raise DecodeError("string runs past the payload")
            cost += name_end - name_start + value_end - value_start
            if cost > left:
                raise _over_budget(f"{what}: {count} entries", cost, left, buf)
            out.append(
                (
                    buf[name_start:name_end].decode("utf-8", "surrogateescape"),
                    buf[value_start:value_end].decode("utf-8", "surrogateescape"),
                )
            )
        return out, cost


def _root(payload: Buffer) -> _Table:
    if len(payload) < 12:  # root offset + smallest vtable + table
        raise DecodeError(f"a {len(payload)}-byte payload cannot hold a FlatBuffers table")
    return _Table(payload, _u32(payload, 0)[0])


# --- the messages -------------------------------------------------------------


class PrepareConf(NamedTuple):
    """``A6.PrepareConf.Req``: the route's ordered ``(plugin name, conf)`` list and its key."""

    key: str
    conf: list[tuple[str, str]]


class RespCall(NamedTuple):
    """``A6.HTTPRespCall.Req``: an upstream response (headers with the upstream's case)."""

    id: int
    conf_token: int
    status: int
    headers: list[tuple[str, str]]


class ReqCall:
    """``A6.HTTPReqCall.Req`` (from ``req_call``): id, token and method read at once, the rest when first used.

    Thread-safe: two threads reading one part at once each decode it, and it
    is charged once. (Two threads reading two different parts at once may each
    miss the other's charge; each part still stays within the whole budget.)
    """

    __slots__ = ("id", "conf_token", "method", "_table", "_spent")

    def __init__(self, payload: Buffer) -> None:
        try:
            table = _root(payload)
            method = table.u8(HTTPReqCallReq.METHOD)
            self.id = table.u32(HTTPReqCallReq.ID)
            self.conf_token = table.u32(HTTPReqCallReq.CONF_TOKEN)
        except struct.error as e:
            raise DecodeError(f"HTTPReqCall.Req: {e}") from None
        self.method = METHODS[method] if method < len(METHODS) else f"METHOD_{method}"
        self._table = table
        self._spent: dict[int, int] | None = None  # slot -> what decoding it cost (most calls read nothing)

    def path(self) -> str:
        return self._part(HTTPReqCallReq.PATH, "HTTPReqCall.Req path", _Table.text) or "/"

    def src_ip(self) -> bytes:
        return self._part(HTTPReqCallReq.SRC_IP, "HTTPReqCall.Req src_ip", _Table.byte_vector) or b""

    def args(self) -> list[tuple[str, str]]:
        return self._part(HTTPReqCallReq.ARGS, "HTTPReqCall.Req args", _Table.entries)

    def headers(self) -> list[tuple[str, str]]:
        return self._part(HTTPReqCallReq.HEADERS, "HTTPReqCall.Req headers", _Table.entries)

    def _part(self, slot: int, what: str, read: Callable[[_Table, int, int, str], tuple[T, int]]) -> T:
        spent = self._spent
        left = _budget(self._table._buf)
        if spent is None:  # the first part read (most calls read one, or none)
            spent = self._spent = {}
        else:
            left += spent.get(slot, 0) - sum(spent.values())
        try:
            value, spent[slot] = read(self._table, slot, left, what)
        except struct.error as e:
            raise DecodeError(f"{what}: {e}") from None
        return value


def prepare_conf(payload: Buffer) -> PrepareConf:
    """Decode an ``A6.PrepareConf.Req``; an absent conf reads as ``[]``, an absent key as ``""``."""
    try:
        table = _root(payload)
        left = _budget(payload)
        conf, cost = table.entries(PrepareConfReq.CONF, left, "PrepareConf.Req conf")
        key, _ = table.text(PrepareConfReq.KEY, left - cost, "PrepareConf.Req key")
        return PrepareConf(key or "", conf)
    except struct.error as e:
        raise DecodeError(f"PrepareConf.Req: {e}") from None


#: Decode an ``A6.HTTPReqCall.Req`` (its path, address, args and headers on first use).
req_call = ReqCall


def resp_call(payload: Buffer) -> RespCall:
    """Decode an ``A6.HTTPRespCall.Req``."""
    try:
        table = _root(payload)
        headers, _ = table.entries(HTTPRespCallReq.HEADERS, _budget(payload), "HTTPRespCall.Req headers")
        return RespCall(
            id=table.u32(HTTPRespCallReq.ID),
            conf_token=table.u32(HTTPRespCallReq.CONF_TOKEN),
            status=table.u16(HTTPRespCallReq.STATUS),
            headers=headers,
        )
    except struct.error as e:
        raise DecodeError(f"HTTPRespCall.Req: {e}") from None


def extra_info(payload: Buffer) -> bytes | None:
    """Decode an ``A6.ExtraInfo.Resp``: the result, ``None`` when APISIX sent none (``b""`` if empty)."""
    try:
        return _root(payload).byte_vector(ExtraInfoResp.RESULT, _budget(payload), "ExtraInfo.Resp result")[0]
    except struct.error as e:
        raise DecodeError(f"ExtraInfo.Resp: {e}") from None
