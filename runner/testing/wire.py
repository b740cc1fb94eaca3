"""The fake APISIX's frames: what APISIX sends, and the runner's replies as APISIX reads them.

Requests are built with the generic FlatBuffers builder, replies read with the
generic ``a6pluginprotos`` readers (plus raw table reads for the fields that
package lacks), never with the runner's own codec, so a symmetric bug in the
runner cannot hide itself. Slot numbers come from ``runner.protocol``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import flatbuffers
from A6.Err.Resp import Resp as ErrResp
from A6.ExtraInfo.Req import Req as ExtraInfoReq
from A6.ExtraInfo.Var import Var as ExtraInfoVar
from A6.HTTPReqCall.Resp import Resp as ReqCallResp
from A6.HTTPReqCall.Stop import Stop as StopTable
from A6.TextEntry import TextEntry as TextEntryTable
from flatbuffers.table import Table

from ..frame import MAX_PAYLOAD
from ..protocol import (
    METHODS,
    Action,
    ErrCode,
    ExtraInfoResp,
    HTTPReqCallReq,
    HTTPRespCallReq,
    HTTPRespCallResp,
    InfoKind,
    PrepareConfReq,
    Rewrite,
    Stop,
    TextEntry,
    slot_count,
    vtable_entry,
)

Pairs = Sequence[tuple[str, str | None]]


class ProtocolViolation(AssertionError):
    """The runner sent something APISIX would reject (wrong type, empty payload...)."""


def encode_frame(type_: int, payload: bytes) -> bytes:
    if not 0 < len(payload) <= MAX_PAYLOAD:
        raise ValueError(f"payload length {len(payload)} cannot be framed")
    return struct.pack(">I", type_ << 24 | len(payload)) + payload


# --- request encoders (what APISIX sends) -----------------------------------


def _b(text: str | bytes) -> bytes:
    return text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text


def _entries(b: flatbuffers.Builder, pairs: Pairs) -> int:
    offsets = []
    for name, value in pairs:
        n = b.CreateString(_b(name))
        v = None if value is None else b.CreateString(_b(value))
        b.StartObject(slot_count(TextEntry))
        b.PrependUOffsetTRelativeSlot(TextEntry.NAME, n, 0)
        if v is not None:
            b.PrependUOffsetTRelativeSlot(TextEntry.VALUE, v, 0)
        offsets.append(b.EndObject())
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return int(b.EndVector())


Field = tuple[Callable[..., None], int, int | None]


def _root_table(b: flatbuffers.Builder, table: type, fields: list[Field]) -> bytes:
    """The finished buffer of one root ``table``: each field is (the builder's Prepend*Slot, slot, value);
    a ``None`` value is left out, as APISIX leaves out what it has not got."""
    b.StartObject(slot_count(table))
    for prepend, slot, value in fields:
        if value is not None:
            prepend(slot, value, 0)
    b.Finish(b.EndObject())
    return bytes(b.Output())


def prepare_conf_req(conf: Pairs | None, key: str) -> bytes:
    b = flatbuffers.Builder(256)
    cv = _entries(b, conf) if conf is not None else None
    kv = b.CreateString(key)
    offset = b.PrependUOffsetTRelativeSlot
    return _root_table(b, PrepareConfReq, [(offset, PrepareConfReq.KEY, kv), (offset, PrepareConfReq.CONF, cv)])


def req_call_req(*, id: int, token: int, method: str, path: str, args: Pairs, headers: Pairs, src_ip: bytes) -> bytes:
    b = flatbuffers.Builder(512)
    ip = b.CreateByteVector(src_ip)
    p = b.CreateString(_b(path))
    av = _entries(b, args)  # APISIX always sends both vectors, empty or not
    hv = _entries(b, headers)
    offset, u32 = b.PrependUOffsetTRelativeSlot, b.PrependUint32Slot
    return _root_table(
        b,
        HTTPReqCallReq,
        [
            (u32, HTTPReqCallReq.CONF_TOKEN, token),
            (offset, HTTPReqCallReq.HEADERS, hv),
            (offset, HTTPReqCallReq.ARGS, av),
            (offset, HTTPReqCallReq.PATH, p),
            (b.PrependUint8Slot, HTTPReqCallReq.METHOD, METHODS.index(method)),
            (offset, HTTPReqCallReq.SRC_IP, ip),
            (u32, HTTPReqCallReq.ID, id),
        ],
    )


def resp_call_req(*, id: int, token: int, status: int, headers: Pairs) -> bytes:
    b = flatbuffers.Builder(512)
    hv = _entries(b, headers)
    u32 = b.PrependUint32Slot
    return _root_table(
        b,
        HTTPRespCallReq,
        [
            (u32, HTTPRespCallReq.CONF_TOKEN, token),
            (b.PrependUOffsetTRelativeSlot, HTTPRespCallReq.HEADERS, hv),
            (b.PrependUint16Slot, HTTPRespCallReq.STATUS, status),
            (u32, HTTPRespCallReq.ID, id),
        ],
    )


def extra_info_resp(result: bytes | None) -> bytes:
    b = flatbuffers.Builder(64 + (len(result) if result else 0))
    rv = b.CreateByteVector(result) if result is not None else None
    return _root_table(b, ExtraInfoResp, [(b.PrependUOffsetTRelativeSlot, ExtraInfoResp.RESULT, rv)])


# --- reply decoders (generic readers) ---------------------------------------


def _root(buf: bytes) -> Table:
    return Table(buf, flatbuffers.encode.Get(flatbuffers.packer.uoffset, buf, 0))


def _text_pairs(tab: Table, slot: int) -> list[tuple[str, str | None]]:
    o = tab.Offset(vtable_entry(slot))
    if not o:
        return []
    start, out = tab.Vector(o), []
    for j in range(tab.VectorLen(o)):
        e = TextEntryTable()
        e.Init(tab.Bytes, tab.Indirect(start + 4 * j))
        value = e.Value()
        out.append(
            (
                e.Name().decode("utf-8", "surrogateescape"),
                None if value is None else value.decode("utf-8", "surrogateescape"),
            )
        )
    return out


def _byte_vector(tab: Table, slot: int) -> bytes | None:
    o = tab.Offset(vtable_entry(slot))
    if not o:
        return None
    start = tab.Vector(o)
    return bytes(tab.Bytes[start : start + tab.VectorLen(o)])


def _u(tab: Table, slot: int, flags: type) -> int:
    o = tab.Offset(vtable_entry(slot))
    return int(tab.Get(flags, o + tab.Pos)) if o else 0


class CallFailed(AssertionError):
    """The runner answered a call with an Err frame: ``code`` (``ErrCode``) and ``reason``.

    Raised by ``raise_for_err()``. In-process, its ``__cause__`` is what the
    plugin raised.
    """

    def __init__(self, code: ErrCode, reason: str | None) -> None:
        super().__init__(f"{code.name}: {reason or 'the runner logged no reason'}")
        self.code, self.reason = code, reason


class ConfRejected(AssertionError):
    """The route conf cannot serve calls (unknown plugin, ``configure`` raised...): under
    APISIX every call on it gets a 503. ``reason`` is the runner's."""

    def __init__(self, reason: str, code: ErrCode = ErrCode.SERVICE_UNAVAILABLE) -> None:
        super().__init__(reason)
        self.reason, self.code = reason, code


@dataclass
class _Outcome:
    err: ErrCode | None = None  # set when the runner replied with an Err frame
    reason: str | None = None  # why, in the runner's words (in-process, or a RunnerProcess client)
    id: int = 0
    cause: BaseException | None = field(default=None, repr=False, compare=False)  # in-process only

    def raise_for_err(self) -> None:
        """Raise ``CallFailed`` if the runner answered with an Err frame."""
        if self.err is not None:
            raise CallFailed(self.err, self.reason) from self.cause


@dataclass
class ReqCallReply(_Outcome):
    """What the runner answered to an HTTPReqCall, as APISIX would read it."""

    action: str = "none"  # "none", "stop" or "rewrite"
    status: int = 0  # Stop
    headers: list[tuple[str, str | None]] = field(default_factory=list)  # Stop / Rewrite headers
    body: bytes | None = None  # Stop / Rewrite body
    path: str | None = None  # Rewrite
    args: list[tuple[str, str | None]] = field(default_factory=list)  # Rewrite
    resp_headers: list[tuple[str, str | None]] = field(default_factory=list)  # Rewrite
    asked: list[tuple[str, str]] = field(default_factory=list)  # ExtraInfo questions, in order

    @property
    def stopped(self) -> bool:
        """APISIX answers the client itself with ``status``, ``headers`` and ``body``."""
        return self.action == "stop"

    @property
    def rewritten(self) -> bool:
        """The request goes upstream with ``path``/``headers``/``args``/``body`` changes and ``resp_headers``."""
        return self.action == "rewrite"


@dataclass
class RespCallReply(_Outcome):
    """What the runner answered to an HTTPRespCall."""

    status: int = 0
    headers: list[tuple[str, str | None]] = field(default_factory=list)
    body: bytes | None = None
    asked: list[tuple[str, str]] = field(default_factory=list)


def err_code(payload: bytes) -> ErrCode:
    if not payload:
        raise ProtocolViolation("zero-length Err payload (APISIX answers 500)")
    code = ErrResp.GetRootAs(payload, 0).Code()
    if code not in ErrCode._value2member_map_:
        raise ProtocolViolation(f"unknown Err code {code}")
    return ErrCode(code)


def decode_req_call_reply(payload: bytes) -> ReqCallReply:
    resp = ReqCallResp.GetRootAs(payload, 0)
    reply = ReqCallReply(id=resp.Id())
    action = resp.Action()
    if resp.ActionType() == Action.STOP:
        stop = StopTable()
        stop.Init(action.Bytes, action.Pos)
        reply.action, reply.status = "stop", stop.Status()
        reply.headers = _text_pairs(action, Stop.HEADERS)
        reply.body = _byte_vector(action, Stop.BODY)
    elif resp.ActionType() == Action.REWRITE:
        # Rewrite read by slot: a6pluginprotos 0.2.1 lacks resp_headers and body.
        path = action.Offset(vtable_entry(Rewrite.PATH))
        reply.action = "rewrite"
        reply.path = action.String(path + action.Pos).decode("utf-8", "surrogateescape") if path else None
        reply.headers = _text_pairs(action, Rewrite.HEADERS)
        reply.args = _text_pairs(action, Rewrite.ARGS)
        reply.resp_headers = _text_pairs(action, Rewrite.RESP_HEADERS)
        reply.body = _byte_vector(action, Rewrite.BODY)
    elif resp.ActionType() != Action.NONE:
        raise ProtocolViolation(f"unknown action type {resp.ActionType()}")
    return reply


def decode_resp_call_reply(payload: bytes) -> RespCallReply:
    t = _root(payload)
    return RespCallReply(
        id=_u(t, HTTPRespCallResp.ID, flatbuffers.number_types.Uint32Flags),
        status=_u(t, HTTPRespCallResp.STATUS, flatbuffers.number_types.Uint16Flags),
        headers=_text_pairs(t, HTTPRespCallResp.HEADERS),
        body=_byte_vector(t, HTTPRespCallResp.BODY),
    )


def answer_extra_info(
    question: bytes, vars: Mapping[str, str], bodies: dict[int, bytes | None], asked: list[tuple[str, str]]
) -> bytes:
    """APISIX's answer (an ExtraInfo.Resp payload) to an ExtraInfo.Req, recording it in ``asked``.

    ``bodies`` maps ``InfoKind.REQ_BODY`` and ``InfoKind.RESP_BODY`` (the upstream's) to bytes or ``None``.
    Like APISIX, an unknown variable or a missing body gets no result, and the
    upstream body can be read only once per call.
    """
    req = ExtraInfoReq.GetRootAs(question, 0)
    info = req.Info()
    if req.InfoType() == InfoKind.VAR:
        var = ExtraInfoVar()
        var.Init(info.Bytes, info.Pos)
        name = (var.Name() or b"").decode("utf-8", "surrogateescape")
        asked.append(("var", name))
        value = vars.get(name)
        return extra_info_resp(None if value is None else _b(value))
    if req.InfoType() == InfoKind.REQ_BODY:
        asked.append(("req_body", ""))
        return extra_info_resp(bodies.get(InfoKind.REQ_BODY))
    if req.InfoType() == InfoKind.RESP_BODY:
        asked.append(("resp_body", ""))
        return extra_info_resp(bodies.pop(InfoKind.RESP_BODY, None))
    raise ProtocolViolation(f"unknown ExtraInfo type {req.InfoType()}")
