"""Plain values -> the payloads the runner sends APISIX.

Rules:

* One function per message, writing the slots ``protocol`` names, including
  those a6pluginprotos 0.2.1 lacks (``Rewrite.resp_headers`` and ``body``,
  ``ExtraInfo.RespBody``, ``HTTPRespCall``).
* Fields equal to their default are left out: a zero scalar, an empty vector,
  an empty string or body (APISIX reads an empty path as present and cannot
  send an empty body), ``None``.
* The output is an ordinary FlatBuffer: the tests read every function's output
  back with the generic ``flatbuffers``/``a6pluginprotos`` readers.
* Text is encoded as UTF-8 with ``surrogateescape``, the inverse of ``decode``.
* Pure: no I/O. Layouts and bytes worth reusing are kept in ``caches``.

How a reply is written
----------------------
Front to back, without ``flatbuffers.Builder``: the root offset, the vtables,
the root table (and the table of its union member right after it), then the
children (strings and vectors), so that every uoffset points forward as the
format requires. Tables start 4-aligned and every scalar gets a 4-byte cell (a
little-endian u32 cell reads correctly as a u8 or u16 field). What precedes
the children depends only on which fields are present, so it is compiled once
per table and set of present fields into a writer that packs every cell with
one ``struct`` call (``caches.LAYOUTS``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from itertools import accumulate, compress
from operator import sub

from .caches import ENTRIES, ENTRY_MAX, LAYOUTS, QUESTION_MAX, QUESTIONS, STOP_MAX, STOPS
from .protocol import (
    Action,
    Err,
    ErrCode,
    ExtraInfoReq,
    HTTPReqCallResp,
    HTTPRespCallResp,
    InfoKind,
    PrepareConfResp,
    Rewrite,
    Stop,
    TextEntry,
    Var,
)

__all__ = ["Entries", "err", "extra_info", "no_action", "prepare_conf", "resp_call", "rewrite", "stop"]

#: ``[TextEntry]`` as ``(name, value)`` pairs; a ``None`` value leaves the value out
#: (a deletion in a Rewrite or a response's header list).
Entries = Sequence[tuple[str, str | None]]

#: Writes one compiled layout: ``write(leading root cells, scalars, children)``.
Writer = Callable[[tuple[int, ...], Iterable[int], Iterable[object]], bytes]

_pack_u32 = struct.Struct("<I").pack
_pack_i32 = struct.Struct("<i").pack
_u32 = struct.Struct("<I").unpack_from
_ZEROS = (b"\0\0\0\0", b"\0\0\0", b"\0\0", b"\0")  # a string's NUL plus padding, by length % 4
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")  # padding after a byte vector, by length % 4


def _text(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _vtable(present: tuple[int, ...]) -> bytes:
    """The vtable of a table with one 4-byte cell per present slot, in the order given."""
    slots = max(present) + 1 if present else 0  # absent trailing slots need no entry
    offsets = [0] * slots
    for i, slot in enumerate(present):
        offsets[slot] = 4 + 4 * i
    return struct.pack(f"<{2 + slots}H", 4 + 2 * slots, 4 + 4 * len(present), *offsets)


# --- [TextEntry] vectors --------------------------------------------------------
#
# Each entry is written as [vtable][table][strings], so every offset in it is
# relative and it can be placed at any 4-aligned position. Its vtable is 8
# bytes either way (the one without a value slot is 6, after 2 bytes of
# padding), so its table starts 8 bytes in.

_ENTRY_VT = _vtable((TextEntry.NAME, TextEntry.VALUE))
_ENTRY_VT_NO_VALUE = b"\0\0" + _vtable((TextEntry.NAME,))
_entry_head = struct.Struct("<iIII").pack  # soffset, name cell, value cell, the name's length
_entry_head_no_value = struct.Struct("<iII").pack  # soffset, name cell, the name's length


def _entry(name: str, value: str | None) -> bytes:
    raw = _text(name)
    n = len(raw)
    if value is None:
        # the name cell points just past the table's 8 bytes
        return b"".join((_ENTRY_VT_NO_VALUE, _entry_head_no_value(6, 4, n), raw, _ZEROS[n & 3]))
    rv = _text(value)
    # the name cell points past the table's 12 bytes, the value cell past the name string
    head = _entry_head(8, 8, 12 + n - (n & 3), n)
    return b"".join((_ENTRY_VT, head, raw, _ZEROS[n & 3], _pack_u32(len(rv)), rv, _ZEROS[len(rv) & 3]))


# The packer of a vector's count and cells, by count, made once for the usual
# sizes: formatting the struct format per vector (an int to text, a new string
# to hash) missed the instruction cache on every call (bench/cachegrind.py:
# rewrite, two vectors, about 30 I1 misses and 650 instructions per call).
_VECTOR_HEADS = tuple(struct.Struct(f"<{n + 1}I").pack for n in range(64))


def _entry_vector(pairs: Entries) -> bytes:
    """[count][cells][entry]...: each cell holds the distance to its entry's table."""
    count = len(pairs)
    cells: list[int] = []
    blobs: list[bytes] = [b""]
    at = 4 + 4 * count  # where the next entry goes
    get, put = ENTRIES.get, ENTRIES.put
    for pair in pairs:
        entry = get(pair)
        if entry is None:
            entry = _entry(*pair)
            if len(entry) <= ENTRY_MAX:  # a big per-request value is not worth keeping
                put(pair, entry)
        cells.append(at + 8 - (4 + 4 * len(cells)))
        blobs.append(entry)
        at += len(entry)
    pack = _VECTOR_HEADS[count] if count < len(_VECTOR_HEADS) else struct.Struct(f"<{count + 1}I").pack
    blobs[0] = pack(count, *cells)
    return b"".join(blobs)


def _child(child: object) -> bytes:
    """A table's child: a ``[TextEntry]`` vector, a ``[ubyte]`` vector or a string."""
    if type(child) is list:  # the usual child: headers or args
        return _entry_vector(child)
    if isinstance(child, bytes):
        return b"".join((_pack_u32(len(child)), child, _PAD[len(child) & 3]))
    if isinstance(child, str):
        raw = _text(child)
        return b"".join((_pack_u32(len(raw)), raw, _ZEROS[len(raw) & 3]))
    return _entry_vector(child)  # type: ignore[arg-type]  # any other sequence of pairs


# --- layouts --------------------------------------------------------------------


def _compile(vtables: list[bytes], fixed: tuple[int, ...], lead: int, scalars: int, children: int) -> Writer:
    """The writer of ``vtables`` (the root table's first) and the tables after them: ``lead``
    cells, the ``fixed`` ones, ``scalars`` cells, then ``children`` offset cells."""
    vts = b"".join(vtables)
    pad = b"\0\0" if len(vts) & 2 else b""  # the tables must start 4-aligned
    root = 4 + len(pad) + len(vts)
    head = b"".join((_pack_u32(root), pad, vts, _pack_i32(root - 4 - len(pad))))
    cells = lead + len(fixed) + scalars + children
    pack = struct.Struct(f"<{cells}I").pack
    end = len(head) + 4 * cells  # where the first child goes
    child_cells = range(end - 4 * children, end, 4)

    if not children:

        def write(lead_cells: tuple[int, ...], values: Iterable[int], kids: Iterable[object]) -> bytes:
            return head + pack(*lead_cells, *fixed, *values)

        return write

    def write_with_children(lead_cells: tuple[int, ...], values: Iterable[int], kids: Iterable[object]) -> bytes:
        blobs = [_child(kid) for kid in kids]
        # Each child starts where the previous one ends; its cell holds the distance to it.
        offsets = map(sub, accumulate(map(len, blobs), initial=end), child_cells)
        return b"".join((head, pack(*lead_cells, *fixed, *values, *offsets), *blobs))

    return write_with_children


def _table(
    scalar_slots: tuple[int, ...], scalars: tuple[int, ...], child_slots: tuple[int, ...], children: tuple[object, ...]
) -> bytes:
    """A root table of ``scalars`` and ``children`` in the slots given."""
    key = (tuple(compress(scalar_slots, scalars)), tuple(compress(child_slots, children)))
    write = LAYOUTS.get(key)
    if write is None:
        present_scalars, present_children = key
        vtable = _vtable(present_scalars + present_children)
        write = _compile([vtable], (), 0, len(present_scalars), len(present_children))
        LAYOUTS.put(key, write)
    return write((), filter(None, scalars), filter(None, children))


def _with_member(
    root_slots: tuple[int, ...],
    lead: tuple[int, ...],
    type_: int,
    scalar_slots: tuple[int, ...],
    scalars: tuple[int, ...],
    child_slots: tuple[int, ...],
    children: tuple[object, ...],
) -> bytes:
    """A root table of the ``lead`` cells then a union's type and link (the last two
    ``root_slots``), with the union member's table (``scalars``, ``children``) right after it."""
    key = (root_slots, type_, tuple(compress(scalar_slots, scalars)), tuple(compress(child_slots, children)))
    write = LAYOUTS.get(key)
    if write is None:
        _, _, present_scalars, present_children = key
        member_vt = _vtable(present_scalars + present_children)
        # The link, the root table's last cell, points at the very next cell (4):
        # the member's soffset, which spans the root table back to the member's
        # vtable, the last one before the root table.
        fixed = (type_, 4, len(member_vt) + 4 + 4 * len(root_slots))
        vtables = [_vtable(root_slots), member_vt]
        write = _compile(vtables, fixed, len(root_slots) - 2, len(present_scalars), len(present_children))
        LAYOUTS.put(key, write)
    return write(lead, filter(None, scalars), filter(None, children))


# --- the messages ---------------------------------------------------------------

_REPLY = (HTTPReqCallResp.ACTION_TYPE, HTTPReqCallResp.ACTION)
_REPLY_WITH_ID = (HTTPReqCallResp.ID, *_REPLY)
_STOP = int(Action.STOP)
_REWRITE = int(Action.REWRITE)
_STOP_SCALARS = (Stop.STATUS,)
_STOP_CHILDREN = (Stop.HEADERS, Stop.BODY)
_REWRITE_CHILDREN = (Rewrite.PATH, Rewrite.HEADERS, Rewrite.ARGS, Rewrite.RESP_HEADERS, Rewrite.BODY)
_RESP_CALL_SCALARS = (HTTPRespCallResp.ID, HTTPRespCallResp.STATUS)
_RESP_CALL_CHILDREN = (HTTPRespCallResp.HEADERS, HTTPRespCallResp.BODY)
_QUESTION = (ExtraInfoReq.INFO_TYPE, ExtraInfoReq.INFO)
_VAR_CHILDREN = (Var.NAME,)


def err(code: ErrCode) -> bytes:
    """``A6.Err.Resp{code}``: never empty, even for code 0 (then an empty table)."""
    return _table((Err.CODE,), (int(code),), (), ())


def prepare_conf(token: int) -> bytes:
    """``A6.PrepareConf.Resp{conf_token}``."""
    return _table((PrepareConfResp.CONF_TOKEN,), (token,), (), ())


def no_action(id: int) -> bytes:
    """``A6.HTTPReqCall.Resp{id}`` without an action: APISIX lets the request go on unchanged."""
    return _table((HTTPReqCallResp.ID,), (id,), (), ())


def stop(id: int, status: int, headers: Entries, body: bytes | None) -> bytes:
    """``A6.HTTPReqCall.Resp`` with a Stop: APISIX answers the client with ``status``, ``headers`` and ``body``."""
    cacheable = id and (body is None or len(body) < STOP_MAX)
    if cacheable:
        key = (status, tuple(headers), body)
        around = STOPS.get(key)
        if around is not None:
            return b"".join((around[0], _pack_u32(id), around[1]))
    slots, lead = (_REPLY_WITH_ID, (id,)) if id else (_REPLY, ())
    reply = _with_member(slots, lead, _STOP, _STOP_SCALARS, (status,), _STOP_CHILDREN, (headers, body))
    if cacheable and len(reply) <= STOP_MAX:
        at = _u32(reply, 0)[0] + 4  # the id: the root table's first cell
        STOPS.put(key, (reply[:at], reply[at + 4 :]))
    return reply


def rewrite(
    id: int,
    *,
    path: str | None = None,
    headers: Entries = (),
    args: Entries = (),
    resp_headers: Entries = (),
    body: bytes | None = None,
) -> bytes:
    """``A6.HTTPReqCall.Resp`` with a Rewrite: APISIX changes the request and adds ``resp_headers`` to the response."""
    slots, lead = (_REPLY_WITH_ID, (id,)) if id else (_REPLY, ())
    children = (path, headers, args, resp_headers, body)
    return _with_member(slots, lead, _REWRITE, (), (), _REWRITE_CHILDREN, children)


def resp_call(id: int, status: int, headers: Entries, body: bytes | None) -> bytes:
    """``A6.HTTPRespCall.Resp``: status 0 keeps the upstream's, no body keeps the upstream's."""
    return _table(_RESP_CALL_SCALARS, (id, status), _RESP_CALL_CHILDREN, (headers, body))


def extra_info(kind: InfoKind, name: str = "") -> bytes:
    """``A6.ExtraInfo.Req``: a Var question (with its name), or a ReqBody or RespBody one."""
    key = (kind, name)
    question = QUESTIONS.get(key)
    if question is None:
        if kind == InfoKind.VAR:
            question = _with_member(_QUESTION, (), kind, (), (), _VAR_CHILDREN, (name,))
        else:  # ReqBody and RespBody are tables without fields
            question = _with_member(_QUESTION, (), kind, (), (), (), ())
        if len(question) <= QUESTION_MAX:
            QUESTIONS.put(key, question)
    return question
