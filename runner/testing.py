"""A fake APISIX: speaks the ext-plugin protocol to a runner over a real Unix socket.

It plays APISIX's side exactly: PrepareConf on its own connection, one call in
flight per connection, ExtraInfo questions answered from what the test
supplied (an unknown variable or a missing body is answered with no result,
as APISIX does), and the response phase. Replies are decoded with the generic
FlatBuffers readers of ``a6pluginprotos`` (plus raw table reads for the fields
that package lacks), never with the runner's own decoder, so a symmetric bug
in the runner cannot hide itself.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import flatbuffers
from A6.Err.Resp import Resp as ErrResp
from A6.ExtraInfo.Req import Req as ExtraInfoReq
from A6.ExtraInfo.Var import Var as ExtraInfoVar
from A6.HTTPReqCall.Resp import Resp as ReqCallResp
from A6.HTTPReqCall.Stop import Stop as StopTable
from A6.PrepareConf.Resp import Resp as PrepareConfResp
from A6.TextEntry import TextEntry as TextEntryTable
from flatbuffers.table import Table

from . import aio, decode, frame
from .cache import ConfCache
from .dispatch import Dispatcher
from .errors import RunnerError
from .frame import HEADER_LEN, MAX_PAYLOAD
from .phases import (
    Prepared,
    run_request_phase,
    run_request_phase_async,
    run_response_phase,
    run_response_phase_async,
)
from .plugins import Plugin, PluginRegistry, plugin_name
from .protocol import (
    METHODS,
    Action,
    ExtraInfoResp,
    HTTPReqCallReq,
    HTTPRespCallReq,
    HTTPRespCallResp,
    InfoKind,
    MessageType,
    PrepareConfReq,
    Rewrite,
    Stop,
    TextEntry,
    slot_count,
    vtable_entry,
)

__all__ = [
    "ApisixClient",
    "ConfRejected",
    "ProtocolViolation",
    "ReqCallReply",
    "RespCallReply",
    "RunnerProcess",
    "encode_frame",
    "run_filter",
    "run_response_filter",
]

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


def _done(b: flatbuffers.Builder, root: int) -> bytes:
    b.Finish(root)
    return bytes(b.Output())


def prepare_conf_req(conf: Pairs | None, key: str) -> bytes:
    b = flatbuffers.Builder(256)
    cv = _entries(b, conf) if conf is not None else None
    kv = b.CreateString(key)
    b.StartObject(slot_count(PrepareConfReq))
    b.PrependUOffsetTRelativeSlot(PrepareConfReq.KEY, kv, 0)
    if cv is not None:
        b.PrependUOffsetTRelativeSlot(PrepareConfReq.CONF, cv, 0)
    return _done(b, b.EndObject())


def req_call_req(*, id: int, token: int, method: str, path: str, args: Pairs, headers: Pairs, src_ip: bytes) -> bytes:
    b = flatbuffers.Builder(512)
    ip = b.CreateByteVector(src_ip)
    p = b.CreateString(_b(path))
    av = _entries(b, args)  # APISIX always sends both vectors, empty or not
    hv = _entries(b, headers)
    b.StartObject(slot_count(HTTPReqCallReq))
    b.PrependUint32Slot(HTTPReqCallReq.CONF_TOKEN, token, 0)
    b.PrependUOffsetTRelativeSlot(HTTPReqCallReq.HEADERS, hv, 0)
    b.PrependUOffsetTRelativeSlot(HTTPReqCallReq.ARGS, av, 0)
    b.PrependUOffsetTRelativeSlot(HTTPReqCallReq.PATH, p, 0)
    b.PrependUint8Slot(HTTPReqCallReq.METHOD, METHODS.index(method), 0)
    b.PrependUOffsetTRelativeSlot(HTTPReqCallReq.SRC_IP, ip, 0)
    b.PrependUint32Slot(HTTPReqCallReq.ID, id, 0)
    return _done(b, b.EndObject())


def resp_call_req(*, id: int, token: int, status: int, headers: Pairs) -> bytes:
    b = flatbuffers.Builder(512)
    hv = _entries(b, headers)
    b.StartObject(slot_count(HTTPRespCallReq))
    b.PrependUint32Slot(HTTPRespCallReq.CONF_TOKEN, token, 0)
    b.PrependUOffsetTRelativeSlot(HTTPRespCallReq.HEADERS, hv, 0)
    b.PrependUint16Slot(HTTPRespCallReq.STATUS, status, 0)
    b.PrependUint32Slot(HTTPRespCallReq.ID, id, 0)
    return _done(b, b.EndObject())


def extra_info_resp(result: bytes | None) -> bytes:
    b = flatbuffers.Builder(64 + (len(result) if result else 0))
    rv = b.CreateByteVector(result) if result is not None else None
    b.StartObject(slot_count(ExtraInfoResp))
    if rv is not None:
        b.PrependUOffsetTRelativeSlot(ExtraInfoResp.RESULT, rv, 0)
    return _done(b, b.EndObject())


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


@dataclass
class ReqCallReply:
    """What the runner answered to an HTTPReqCall, as APISIX would read it."""

    err: int | None = None  # A6.Err.Code when the runner replied with an Err frame
    id: int = 0
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
class RespCallReply:
    """What the runner answered to an HTTPRespCall."""

    err: int | None = None
    id: int = 0
    status: int = 0
    headers: list[tuple[str, str | None]] = field(default_factory=list)
    body: bytes | None = None
    asked: list[tuple[str, str]] = field(default_factory=list)


def _err_code(payload: bytes) -> int:
    if not payload:
        raise ProtocolViolation("zero-length Err payload (APISIX answers 500)")
    return int(ErrResp.GetRootAs(payload, 0).Code())


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


# --- the client ---------------------------------------------------------------


class ApisixClient:
    """One APISIX connection to a runner. ``with ApisixClient(path) as c: ...``"""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self._next_id = 1

    def __enter__(self) -> ApisixClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    # frames
    def send_frame(self, type_: int, payload: bytes) -> None:
        self.sock.sendall(encode_frame(type_, payload))

    def recv_exactly(self, n: int) -> bytes:
        chunks, left = [], n
        while left:
            chunk = self.sock.recv(min(left, 1 << 20))
            if not chunk:
                raise EOFError(f"runner closed the connection with {left} of {n} bytes missing")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def read_frame(self) -> tuple[int, bytes]:
        type_, size = frame.decode_header(self.recv_exactly(HEADER_LEN))
        if size == 0:
            raise ProtocolViolation(f"type-{type_} frame with a zero-length payload (APISIX answers 500)")
        return type_, self.recv_exactly(size)

    # calls
    def prepare_conf(self, conf: Pairs | None = None, key: str = "route#1#ext-plugin-pre-req#1") -> int:
        """Send a PrepareConf and return the token; ``LookupError`` carries the Err code if refused."""
        self.send_frame(MessageType.PREPARE_CONF, prepare_conf_req(conf, key))
        type_, payload = self.read_frame()
        if type_ == MessageType.ERROR:
            raise LookupError(_err_code(payload))
        if type_ != MessageType.PREPARE_CONF:
            raise ProtocolViolation(f"PrepareConf answered with a type-{type_} frame")
        token = int(PrepareConfResp.GetRootAs(payload, 0).ConfToken())
        if token == 0:
            raise ProtocolViolation("conf token 0")
        return token

    def _answer_questions(
        self, call_type: int, vars: Mapping[str, str], bodies: dict[int, bytes | None], asked: list[tuple[str, str]]
    ) -> tuple[int, bytes]:
        while True:
            type_, payload = self.read_frame()
            if type_ != MessageType.EXTRA_INFO:
                if type_ not in (call_type, MessageType.ERROR):
                    raise ProtocolViolation(f"type-{call_type} call answered with a type-{type_} frame")
                return type_, payload
            self.send_frame(MessageType.EXTRA_INFO, answer_extra_info(payload, vars, bodies, asked))

    def http_req_call(
        self,
        token: int,
        *,
        id: int | None = None,
        method: str = "GET",
        path: str = "/",
        args: Pairs = (),
        headers: Pairs = (),
        src_ip: bytes = b"\x7f\x00\x00\x01",
        vars: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> ReqCallReply:
        """One HTTPReqCall, answering ExtraInfo questions from ``vars`` and ``body``."""
        if id is None:
            id, self._next_id = self._next_id, self._next_id + 1
        payload = req_call_req(id=id, token=token, method=method, path=path, args=args, headers=headers, src_ip=src_ip)
        self.send_frame(MessageType.HTTP_REQ_CALL, payload)
        asked: list[tuple[str, str]] = []
        type_, reply_payload = self._answer_questions(
            MessageType.HTTP_REQ_CALL, vars or {}, {InfoKind.REQ_BODY: body}, asked
        )
        reply = (
            ReqCallReply(err=_err_code(reply_payload))
            if type_ == MessageType.ERROR
            else decode_req_call_reply(reply_payload)
        )
        reply.asked = asked
        return reply

    def http_resp_call(
        self,
        token: int,
        *,
        id: int | None = None,
        status: int = 200,
        headers: Pairs = (),
        vars: Mapping[str, str] | None = None,
        body: bytes | None = None,
        request_body: bytes | None = None,
    ) -> RespCallReply:
        """One HTTPRespCall for an upstream response (``body`` answers RespBody questions)."""
        if id is None:
            id, self._next_id = self._next_id, self._next_id + 1
        self.send_frame(MessageType.HTTP_RESP_CALL, resp_call_req(id=id, token=token, status=status, headers=headers))
        asked: list[tuple[str, str]] = []
        bodies: dict[int, bytes | None] = {InfoKind.REQ_BODY: request_body, InfoKind.RESP_BODY: body}
        type_, payload = self._answer_questions(MessageType.HTTP_RESP_CALL, vars or {}, bodies, asked)
        reply = RespCallReply(err=_err_code(payload)) if type_ == MessageType.ERROR else decode_resp_call_reply(payload)
        reply.asked = asked
        return reply


# --- running plugins in-process (the plugin author's kit) -------------------


class ConfRejected(RunnerError):
    """The route conf could not be prepared (unknown plugin, ``configure`` raised...):
    under APISIX every call on it would get a 503."""


PluginSpec = type[Plugin] | tuple[type[Plugin], Any]
Plugins = PluginSpec | Sequence[PluginSpec]
HeaderInput = Mapping[str, str] | Sequence[tuple[str, str | None]]


def _prepare(plugins: Plugins, conf: Any) -> Prepared:
    specs: Sequence[PluginSpec] = [(plugins, conf)] if isinstance(plugins, type) else list(plugins)
    registry = PluginRegistry()
    entries = []
    for spec in specs:
        cls, value = spec if isinstance(spec, tuple) else (spec, None)
        if registry.get(plugin_name(cls)) is None:
            registry.register(cls)
        entries.append((plugin_name(cls), "" if value is None else json.dumps(value)))
    prepared = Dispatcher(registry, ConfCache[Prepared](3600)).prepare(entries)
    if prepared.error:
        raise ConfRejected(prepared.error)
    return prepared


class _KitCall:
    """The call the in-process kit runs: ExtraInfo questions are answered as APISIX would."""

    def __init__(self, vars: Mapping[str, str], bodies: dict[int, bytes | None], asked: list[tuple[str, str]]) -> None:
        self.plugin: str | None = None
        self.request_id = 0
        self.conf_token = 0
        self.deadline = time.monotonic() + 60.0  # as APISIX's default timeout
        self.given_up = False
        self._answer = (vars, bodies, asked)

    def ask(self, question: bytes) -> bytes:
        return answer_extra_info(question, *self._answer)

    async def ask_async(self, question: bytes) -> bytes:
        return self.ask(question)


def _pairs(items: HeaderInput, lower: bool = False) -> list[tuple[str, str | None]]:
    pairs = list(items.items()) if isinstance(items, Mapping) else list(items)
    return [(n.lower() if lower else n, v) for n, v in pairs]


def run_filter(
    plugins: Plugins,
    *,
    conf: Any = None,
    method: str = "GET",
    path: str = "/",
    headers: HeaderInput = (),
    args: HeaderInput = (),
    body: bytes | None = None,
    vars: Mapping[str, str] | None = None,
    src_ip: str = "127.0.0.1",
    id: int = 1,
) -> ReqCallReply:
    """Run the request phase as APISIX's ``ext-plugin-pre-req`` would, without APISIX.

    ``plugins`` is one plugin class (its route conf is ``conf``, any JSON-able
    value) or a chain ``[(PluginClass, conf), ...]``. The request goes through
    the runner's real decoder, plugins and encoder; ExtraInfo questions are
    answered from ``vars`` and ``body`` (a var not given is absent). Returns the
    reply as APISIX reads it. A plugin that raises raises ``PluginError`` here
    (its cause is the plugin's exception; APISIX would answer 503), and a conf
    the plugins reject raises ``ConfRejected``.
    """
    prepared = _prepare(plugins, conf)
    payload = req_call_req(
        id=id,
        token=1,
        method=method.upper(),
        path=path,
        args=_pairs(args),
        headers=_pairs(headers, lower=True),  # nginx lower-cases request header names
        src_ip=ipaddress.ip_address(src_ip).packed,
    )
    asked: list[tuple[str, str]] = []
    bodies: dict[int, bytes | None] = {InfoKind.REQ_BODY: body}

    req, call = decode.req_call(payload), _KitCall(vars or {}, bodies, asked)
    if prepared.async_request:
        out = aio.run(run_request_phase_async(prepared, req, call))
    else:
        out = run_request_phase(prepared, req, call)
    frame.encode(MessageType.HTTP_REQ_CALL, out)  # raises if APISIX could not receive it
    reply = decode_req_call_reply(out)
    reply.asked = asked
    return reply


def run_response_filter(
    plugins: Plugins,
    *,
    conf: Any = None,
    status: int = 200,
    headers: HeaderInput = (),
    body: bytes | None = None,
    vars: Mapping[str, str] | None = None,
    request_body: bytes | None = None,
    id: int = 1,
) -> RespCallReply:
    """Run the response phase as ``ext-plugin-post-resp`` would, on an upstream response.

    ``status``, ``headers`` and ``body`` are the upstream's. The reply's
    ``headers`` are what the client will see, ``status`` is 0 when unchanged and
    ``body`` is ``None`` when the upstream body passes through.
    """
    prepared = _prepare(plugins, conf)
    payload = resp_call_req(id=id, token=1, status=status, headers=_pairs(headers))
    asked: list[tuple[str, str]] = []
    bodies: dict[int, bytes | None] = {InfoKind.REQ_BODY: request_body, InfoKind.RESP_BODY: body}

    resp, call = decode.resp_call(payload), _KitCall(vars or {}, bodies, asked)
    if prepared.async_response:
        out = aio.run(run_response_phase_async(prepared, resp, call))
    else:
        out = run_response_phase(prepared, resp, call)
    frame.encode(MessageType.HTTP_RESP_CALL, out)
    reply = decode_resp_call_reply(out)
    reply.asked = asked
    return reply


# --- a real runner process ----------------------------------------------------


class RunnerProcess:
    """Starts ``python -m runner run`` on a fresh socket and stops it; its stderr goes to ``log``.

    ``with RunnerProcess("plugins") as runner: runner.client().prepare_conf(...)``
    """

    def __init__(
        self,
        plugins: str | os.PathLike[str],
        *,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        socket_path: str | None = None,
        log_level: str = "debug",
    ) -> None:
        # sun_path holds 107 bytes: keep the socket under a short directory.
        self._dir = tempfile.TemporaryDirectory(prefix="a6r-", dir="/tmp")
        self.socket_path = socket_path or os.path.join(self._dir.name, "runner.sock")
        self.log_path = os.path.join(self._dir.name, "runner.log")
        self.argv = [
            sys.executable, "-m", "runner", "run", "--socket", self.socket_path,
            "--plugins", os.fspath(plugins), "--log-level", log_level, *args,
        ]  # fmt: skip
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> RunnerProcess:
        """Spawn the runner and wait until it reports ready (sd_notify ``READY=1``).

        Readiness comes from the runner itself, not from a connect probe, which
        another process still serving the same path would pass.
        """
        ready: socket.socket | None = None
        env = dict(self.env)
        if "NOTIFY_SOCKET" not in env:  # else the caller listens itself: fall back to probing
            ready = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            ready.bind(os.path.join(self._dir.name, "notify"))
            ready.settimeout(0.05)
            env["NOTIFY_SOCKET"] = ready.getsockname()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"runner exited with {self.proc.returncode}:\n{self.log}")
                if self._ready(ready):
                    return self
        finally:
            if ready is not None:
                ready.close()
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"runner did not get ready on {self.socket_path} within {timeout} s:\n{self.log}")

    def _ready(self, notify: socket.socket | None) -> bool:
        if notify is not None:
            try:
                return b"READY=1" in notify.recv(4096).split(b"\n")
            except TimeoutError:
                return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.connect(self.socket_path)
            return True
        except OSError:
            time.sleep(0.02)
            return False

    def client(self, timeout: float = 30.0) -> ApisixClient:
        return ApisixClient(self.socket_path, timeout)

    @property
    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def send_signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send ``signum`` and return the exit status (SIGKILL after ``timeout``)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> RunnerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._dir.cleanup()
