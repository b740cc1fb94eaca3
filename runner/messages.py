"""FlatBuffers payloads <-> plain values, for the runner's side of the protocol.

Decoding (APISIX -> runner) uses a small bounds-checked table reader instead of
the generated ``a6pluginprotos`` accessors: every payload is untrusted, and the
generic runtime reads out of range, loops over forged vector lengths or raises
assorted errors on garbage. Here every offset is checked and every failure is a
``DecodeError`` (Err ``BAD_REQUEST``). Encoding (runner -> APISIX) writes the
tables directly with the schema's slot numbers (ext-plugin.fbs v0.6.1; see the
note above the encoders), which also covers the fields ``a6pluginprotos`` 0.2.1
lacks: ``Rewrite.resp_headers`` (slot 3), ``Rewrite.body`` (slot 4),
``ExtraInfo.RespBody`` and ``HTTPRespCall``.

Text is decoded as UTF-8 with ``surrogateescape`` and encoded back the same way:
nginx hands over raw bytes, and they must reach the upstream unchanged.
No sockets here.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Sequence
from itertools import accumulate, compress
from operator import sub
from typing import NamedTuple, TypeVar

from .errors import DecodeError, ErrCode
from .http import InfoKind

#: A payload as received: ``bytes``, or the ``bytearray`` a big frame was read into.
Buffer = bytes | bytearray

#: ``[TextEntry]`` as ``(name, value)`` pairs; a ``None`` value is an absent one.
Entries = Sequence[tuple[str, str | None]]

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")

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
_vt_entry = struct.Struct("<4H").unpack_from


# A vtable's field offsets, read in one unpack (the schema's tables have at most 7 slots).
_MAX_SLOTS = 8
_vtable_readers = [struct.Struct(f"<{n}H").unpack_from for n in range(_MAX_SLOTS + 1)]


class _Table:
    """A FlatBuffers table whose every read is checked against the buffer."""

    __slots__ = ("_buf", "_pos", "_offsets")

    def __init__(self, buf: Buffer, pos: int) -> None:
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
        self._offsets: tuple[int, ...] = _vtable_readers[min((vt_len - 4) // 2, _MAX_SLOTS)](buf, vt + 4)

    def _field(self, slot: int) -> int:
        """Absolute position of field ``slot``, or 0 if absent."""
        offsets = self._offsets
        if slot < len(offsets) and offsets[slot]:
            return self._pos + offsets[slot]
        return 0

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
        if vec is None:
            return None
        buf = self._buf
        if type(buf) is bytes:  # a bytes slice is the one copy
            return buf[vec[0] : vec[0] + vec[1]]
        with memoryview(buf) as view:  # a bytearray slice would copy twice
            return bytes(view[vec[0] : vec[0] + vec[1]])

    def text(self, slot: int) -> str | None:
        vec = self._vector(slot, 1)
        if vec is None:
            return None
        return self._buf[vec[0] : vec[0] + vec[1]].decode("utf-8", "surrogateescape")

    def entries(self, slot: int) -> list[tuple[str, str]]:
        """A ``[TextEntry]`` field as ``(name, value)`` pairs; an absent value reads as ``""``.

        A valueless TextEntry is a bare query arg (``?flag``); plugins read it as "".
        """
        vec = self._vector(slot, 4)
        return [] if vec is None else _text_entries(self._buf, *vec)


def _text_entries(buf: Buffer, start: int, count: int) -> list[tuple[str, str]]:
    # The hot decode path (every header of every request a plugin reads): the
    # TextEntry tables are walked inline, with the same checks as ``_Table``;
    # a struct.error from a read past the end becomes a DecodeError upstream.
    size = len(buf)
    out: list[tuple[str, str]] = []
    for p in range(start, start + 4 * count, 4):
        table = p + _u32(buf, p)[0]
        vt = table - _i32(buf, table)[0]
        if vt < 0:
            raise DecodeError(f"vtable offset {vt} outside a {size}-byte payload")
        if vt + 8 <= size:  # vtable length, table length, name and value slots in one read
            vt_len, _, name_at, value_at = _vt_entry(buf, vt)
        else:  # a short vtable at the very end: no value slot to read
            vt_len, name_at, value_at = _u16(buf, vt)[0], 0, 0
            if vt_len >= 6:
                name_at = _u16(buf, vt + 4)[0]
        if vt_len < 4 or vt + vt_len > size:  # as ``_Table``: the whole vtable must be there
            raise DecodeError(f"vtable of {vt_len} bytes does not fit the payload")
        name = _string_at(buf, table + name_at, size) if vt_len >= 6 and name_at else ""
        value = _string_at(buf, table + value_at, size) if vt_len >= 8 and value_at else ""
        out.append((name, value))
    return out


def _string_at(buf: Buffer, at: int, size: int) -> str:
    """The string the uoffset at ``at`` points to."""
    start = at + _u32(buf, at)[0]
    end = start + 4 + _u32(buf, start)[0]
    if end > size:
        raise DecodeError("string runs past the payload")
    return buf[start + 4 : end].decode("utf-8", "surrogateescape")


def _root(payload: Buffer) -> _Table:
    if len(payload) < 12:  # root offset + smallest vtable + table
        raise DecodeError(f"a {len(payload)}-byte payload cannot hold a FlatBuffers table")
    return _Table(payload, _u32(payload, 0)[0])


# --- APISIX -> runner -------------------------------------------------------


class PrepareConf(NamedTuple):
    key: str
    conf: list[tuple[str, str]]


class ReqCall:
    """The id, token and method, read at once; the rest is decoded when first used
    (most plugins never read most of it, and decoding it all dominated a call)."""

    __slots__ = ("id", "conf_token", "method", "_table")

    def __init__(self, id: int, conf_token: int, method: str, table: _Table) -> None:
        self.id = id
        self.conf_token = conf_token
        self.method = method
        self._table = table

    @property
    def path(self) -> str:
        return self._decode(lambda t: t.text(3) or "/", "path")

    @property
    def src_ip(self) -> bytes:
        return self._decode(lambda t: t.bytes(1) or b"", "src_ip")

    def args(self) -> list[tuple[str, str]]:
        return self._decode(lambda t: t.entries(4), "args")

    def headers(self) -> list[tuple[str, str]]:
        return self._decode(lambda t: t.entries(5), "headers")

    def _decode(self, read: Callable[[_Table], T], what: str) -> T:
        try:
            return read(self._table)
        except struct.error as e:
            raise DecodeError(f"HTTPReqCall.Req {what}: {e}") from None


class RespCall(NamedTuple):
    id: int
    conf_token: int
    status: int
    headers: list[tuple[str, str]]


def parse_prepare_conf(payload: Buffer) -> PrepareConf:
    """``A6.PrepareConf.Req``: the route's ordered ``(plugin name, conf)`` list and its key."""
    try:
        t = _root(payload)
        return PrepareConf(t.text(1) or "", t.entries(0))
    except struct.error as e:
        raise DecodeError(f"PrepareConf.Req: {e}") from None


def parse_req_call(payload: Buffer) -> ReqCall:
    """``A6.HTTPReqCall.Req``: id 0, src_ip 1, method 2, path 3, args 4, headers 5, conf_token 6."""
    try:
        t = _root(payload)
        method = t.u8(2)
        return ReqCall(t.u32(0), t.u32(6), METHODS[method] if method < len(METHODS) else f"METHOD_{method}", t)
    except struct.error as e:
        raise DecodeError(f"HTTPReqCall.Req: {e}") from None


def parse_resp_call(payload: Buffer) -> RespCall:
    """``A6.HTTPRespCall.Req`` (not in a6pluginprotos 0.2.1): id 0, status 1, headers 2, token 3."""
    try:
        t = _root(payload)
        return RespCall(id=t.u32(0), conf_token=t.u32(3), status=t.u16(1), headers=t.entries(2))
    except struct.error as e:
        raise DecodeError(f"HTTPRespCall.Req: {e}") from None


def parse_extra_info_resp(payload: Buffer) -> bytes | None:
    """``A6.ExtraInfo.Resp``: the result, ``None`` when APISIX sent none (``b""`` if empty)."""
    try:
        return _root(payload).bytes(0)
    except struct.error as e:
        raise DecodeError(f"ExtraInfo.Resp: {e}") from None


# --- runner -> APISIX -------------------------------------------------------
#
# Replies are written front to back, without a Builder: the root offset, the
# vtables, the root table (and the table of its union member right after it),
# then the children (strings, vectors), so every uoffset points forward as the
# format requires. Tables start 4-aligned; every scalar gets a 4-byte cell (a
# little-endian u32 cell reads correctly as a u8 or u16 field). The output is
# an ordinary FlatBuffer: the tests read every encoder's output back with the
# generic ``flatbuffers``/``a6pluginprotos`` readers. It is several times
# faster than ``flatbuffers.Builder``, whose per-byte Python work dominated a call.

_pack_u32 = struct.Struct("<I").pack
_pack_i32 = struct.Struct("<i").pack
_ZEROS = (b"\0\0\0\0", b"\0\0\0", b"\0\0", b"\0")  # a string's NUL plus padding, by len % 4
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")  # padding after a byte vector, by len % 4


def _b(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


# TextEntry tables have two shapes (with and without a value); their vtables
# and the offsets from cells to the strings that follow are fixed.
_ENTRY_VT = struct.pack("<4H", 8, 12, 4, 8)  # name at +4, value at +8
_ENTRY_VT_NO_VALUE = b"\0\0" + struct.pack("<3H", 6, 8, 4)
# soffset, name cell -> the string right after the table, the name's length
_ENTRY_NO_VALUE_HEAD = struct.Struct("<iII").pack
# soffset, name cell, value cell, the name's length
_ENTRY_HEAD = struct.Struct("<iIII").pack
_vector_heads: dict[int, struct.Struct] = {}


def _keep(cache: dict[K, V], key: K, value: V, limit: int) -> None:
    """Remember ``value``, emptying ``cache`` first when it is full: values made per
    request (ids, timestamps) must not grow it without bound."""
    if len(cache) >= limit:
        cache.clear()
    cache[key] = value


def _entry(name: str, value: str | None) -> bytes:
    """One TextEntry: its vtable, its table, then its strings (every offset relative)."""
    raw = name.encode("utf-8", "surrogateescape")
    n = len(raw)
    if value is None:
        return b"".join((_ENTRY_VT_NO_VALUE, _ENTRY_NO_VALUE_HEAD(6, 4, n), raw, _ZEROS[n & 3]))
    rv = value.encode("utf-8", "surrogateescape")
    # value cell -> past the name string: 4 (rest of the table) + the string's size
    head = _ENTRY_HEAD(8, 8, 12 + n - (n & 3), n)
    return b"".join((_ENTRY_VT, head, raw, _ZEROS[n & 3], _pack_u32(len(rv)), rv, _ZEROS[len(rv) & 3]))


# Plugins mostly send the same few headers; their (small) entries are kept ready-made.
_entries: dict[tuple[str, str | None], bytes] = {}
_ENTRIES_MAX = 4096
_ENTRY_CACHED_MAX = 256  # bytes: a big per-request value is not worth keeping


def _entry_vector(pairs: Entries) -> bytes:
    """A ``[TextEntry]`` vector; an entry whose value is ``None`` has no value field.

    Every offset in it is relative, so it is built on its own and placed at any
    4-aligned position: [count][cells][entry: vtable, table, strings]...
    """
    count = len(pairs)
    cells: list[int] = []
    blobs: list[bytes] = [b""]
    pos = 4 + 4 * count  # where the next entry's vtable goes; its table follows 8 bytes later
    for pair in pairs:
        entry = _entries.get(pair)
        if entry is None:
            entry = _entry(*pair)
            if len(entry) <= _ENTRY_CACHED_MAX:
                _keep(_entries, pair, entry, _ENTRIES_MAX)
        cells.append(pos + 4 - 4 * len(cells))
        blobs.append(entry)
        pos += len(entry)
    packer = _vector_heads.get(count)
    if packer is None:
        packer = struct.Struct(f"<{count + 1}I")
        if count < 64:  # the usual sizes; not one per size a plugin may produce
            _vector_heads[count] = packer
    blobs[0] = packer.pack(count, *cells)
    return b"".join(blobs)


def encode_err(code: ErrCode) -> bytes:
    """``A6.Err.Resp{code}``: never empty, even for code 0 (an empty table)."""
    return _encode((int(code),), ())


def encode_prepare_conf_resp(token: int) -> bytes:
    return _encode((token,), ())


def encode_no_action(id: int) -> bytes:
    """``HTTPReqCall.Resp{id}`` without an action: APISIX lets the request go on unchanged."""
    return _encode((id,), ())


def _child(child: object) -> bytes:
    """A table's child as bytes: a ``[ubyte]`` vector, a string or a ``[TextEntry]`` vector."""
    if type(child) is list:  # the usual child: headers or args
        return _entry_vector(child)
    if isinstance(child, bytes):
        return b"".join((_pack_u32(len(child)), child, _PAD[len(child) & 3]))
    if isinstance(child, str):
        raw = _b(child)
        return b"".join((_pack_u32(len(raw)), raw, _ZEROS[len(raw) & 3]))
    return _entry_vector(child)  # type: ignore[arg-type]


# A reply's fixed part (root offset, vtables, the cells of the root table and
# of the action table) depends only on which fields are present, so its layout
# is computed once per shape: the vtables come first, then the tables, so that
# every cell (the scalars, the fixed action links, the offsets to the children)
# sits in one run packed by a single ``struct`` call. The children follow.


class _Shape(NamedTuple):
    head: bytes  # root offset and vtables: everything before the first cell
    pack: Callable[..., bytes]  # every cell, in order: [id], consts, scalars, child offsets
    consts: tuple[int, ...]  # the fixed cells between the id and the action table's own cells
    size: int  # where the first child goes
    child_cells: tuple[int, ...]  # positions of the child offset cells


def _vt(present: tuple[int, ...]) -> bytes:
    """The vtable of a table with one 4-byte cell per present slot, in slot order."""
    slots = max(present) + 1 if present else 0  # absent trailing slots need no entry
    offsets = [0] * slots
    for i, slot in enumerate(present):
        offsets[slot] = 4 + 4 * i
    return struct.pack(f"<{2 + slots}H", 4 + 2 * slots, 4 + 4 * len(present), *offsets)


def _shape(vtables: list[bytes], consts: tuple[int, ...], lead: int, scalars: int, children: int) -> _Shape:
    """The shape of ``vtables`` (the root table's first), then the root table, then
    (for a reply with an action) the action table: ``lead`` + ``consts`` +
    ``scalars`` + ``children`` cells after the root table's soffset."""
    vts = b"".join(vtables)
    pad = b"\0\0" if len(vts) & 2 else b""  # the tables must start 4-aligned
    root = 4 + len(pad) + len(vts)
    head = b"".join((_pack_u32(root), pad, vts, _pack_i32(root - 4 - len(pad))))
    cells = lead + len(consts) + scalars + children
    first_child_cell = root + 4 + 4 * (cells - children)
    child_cells = tuple(first_child_cell + 4 * i for i in range(children))
    return _Shape(head, struct.Struct(f"<{cells}I").pack, consts, len(head) + 4 * cells, child_cells)


@functools.cache
def _root_shape(scalar_slots: tuple[int, ...], child_slots: tuple[int, ...]) -> _Shape:
    return _shape([_vt(scalar_slots + child_slots)], (), 0, len(scalar_slots), len(child_slots))


@functools.cache
def _union_shape(
    root_slots: tuple[int, ...], lead: int, type_: int, scalar_slots: tuple[int, ...], child_slots: tuple[int, ...]
) -> _Shape:
    """A root table of ``lead`` scalars then a union's type and link (its last two
    ``root_slots``), with the union's table right after it."""
    member_vt = _vt(scalar_slots + child_slots)
    # The link, the root table's last cell, points at the very next cell
    # (4); the member's soffset spans the root table back to its vtable,
    # which sits just before the root table.
    consts = (type_, 4, len(member_vt) + 4 + 4 * len(root_slots))
    return _shape([_vt(root_slots), member_vt], consts, lead, len(scalar_slots), len(child_slots))


def _reply(shape: _Shape, lead: tuple[int, ...], scalars: Sequence[int], children: Sequence[object]) -> bytes:
    if not children:
        return shape.head + shape.pack(*lead, *shape.consts, *scalars)
    blobs = [_child(child) for child in children]
    # Each child starts where the previous one ends; a cell holds the distance to it.
    offsets = map(sub, accumulate(map(len, blobs), initial=shape.size), shape.child_cells)
    return b"".join((shape.head, shape.pack(*lead, *shape.consts, *scalars, *offsets), *blobs))


def _encode(scalars: tuple[int, ...], children: tuple[object, ...], action_type: int = 0, id: int = 0) -> bytes:
    """A table of leading ``scalars`` then offset ``children`` (zeros and empties left out),
    as the root, or with ``action_type`` as the action of an ``HTTPReqCall.Resp{id}``."""
    scalar_slots = tuple(compress(range(len(scalars)), scalars))
    child_slots = tuple(compress(range(len(scalars), len(scalars) + len(children)), children))
    values = list(filter(None, scalars))
    kids = list(filter(None, children))
    if not action_type:
        return _reply(_root_shape(scalar_slots, child_slots), (), values, kids)
    # HTTPReqCall.Resp{[id 0], action_type 1, action 2}
    if id:
        return _reply(_union_shape((0, 1, 2), 1, action_type, scalar_slots, child_slots), (id,), values, kids)
    return _reply(_union_shape((1, 2), 0, action_type, scalar_slots, child_slots), (), values, kids)


# Stop replies mostly repeat (the same denial on every call): each small one is
# kept as the bytes around its id cell.
_stops: dict[tuple[int, tuple[tuple[str, str | None], ...], bytes | None], tuple[bytes, bytes]] = {}
_STOPS_MAX = 1024
_STOP_CACHED_MAX = 2048  # bytes of reply: bigger ones are not worth keeping


def encode_stop(id: int, status: int, headers: Entries, body: bytes | None) -> bytes:
    """``HTTPReqCall.Resp`` with a Stop: APISIX answers the client with it (an empty body cannot be sent)."""
    cacheable = id and (body is None or len(body) < _STOP_CACHED_MAX)
    if cacheable:
        key = (status, tuple(headers), body)
        around = _stops.get(key)
        if around is not None:
            return b"".join((around[0], _pack_u32(id), around[1]))
    reply = _encode((status,), (headers, body), _ACTION_STOP, id)
    if cacheable and len(reply) <= _STOP_CACHED_MAX:
        at = _u32(reply, 0)[0] + 4  # the id: the root table's first cell
        _keep(_stops, key, (reply[:at], reply[at + 4 :]), _STOPS_MAX)
    return reply


def encode_rewrite(
    id: int,
    *,
    path: str | None = None,
    headers: Entries = (),
    args: Entries = (),
    resp_headers: Entries = (),
    body: bytes | None = None,
) -> bytes:
    """``HTTPReqCall.Resp`` with a Rewrite (5 slots; a6pluginprotos' ``RewriteStart`` has 3).

    Empty values are left out: APISIX treats an empty path as present and cannot set an empty body.
    """
    return _encode((), (path, headers, args, resp_headers, body), _ACTION_REWRITE, id)


def encode_resp_call_resp(id: int, status: int, headers: Entries, body: bytes | None) -> bytes:
    """``A6.HTTPRespCall.Resp``: id 0, status 1 (0 = keep upstream's), headers 2, body 3."""
    return _encode((id, status), (headers, body))


# Var names come from plugin code, so a handful of questions repeat on every call.
_questions: dict[tuple[InfoKind, str], bytes] = {}
_QUESTIONS_MAX = 1024


def encode_extra_info_req(kind: InfoKind, name: str = "") -> bytes:
    """``A6.ExtraInfo.Req{info_type 0, info 1}``: a Var (with its name), ReqBody or RespBody question."""
    key = (kind, name if kind is InfoKind.VAR else "")
    question = _questions.get(key)
    if question is None:
        if kind is InfoKind.VAR:
            question = _reply(_union_shape((0, 1), 0, kind, (), (0,)), (), (), [name])
        else:  # ReqBody and RespBody are empty tables
            question = _reply(_union_shape((0, 1), 0, kind, (), ()), (), (), [])
        _keep(_questions, key, question, _QUESTIONS_MAX)
    return question
