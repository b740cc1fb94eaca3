"""``ApisixClient``: one APISIX connection to a runner over a real Unix socket.

It plays APISIX's side exactly: PrepareConf on its own connection, one call in
flight per connection, ExtraInfo questions answered from what the test
supplied (an unknown variable or a missing body is answered with no result,
as APISIX does), and the response phase. Inputs follow ``vocab``.

A client with a ``LogTail`` (``RunnerProcess.client()``, the ``apisix``
fixture) also reads the runner's reason: an Err reply carries it, and
``prepare_conf`` raises ``ConfRejected`` when the runner says the conf fails
every call.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping

from A6.PrepareConf.Resp import Resp as PrepareConfResp

from .. import frame
from ..frame import HEADER_LEN
from ..protocol import ErrCode, InfoKind, MessageType
from . import wire
from .reasons import LogTail
from .vocab import ConfInput, PairsInput, conf_pairs, ip_bytes, pairs
from .wire import ConfRejected, ProtocolViolation, ReqCallReply, RespCallReply

Bodies = dict[int, bytes | None]


class ApisixClient:
    """One APISIX connection to a runner. ``with ApisixClient(path) as c: ...``"""

    def __init__(self, path: str, timeout: float = 30.0, log: LogTail | None = None) -> None:
        self.path = path
        self.log = log
        self._conf_reasons: dict[int, str] = {}  # tokens whose conf fails, with check=False
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
        self.sock.sendall(wire.encode_frame(type_, payload))

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
    def _send(self, type_: int, payload: bytes) -> None:
        if self.log is not None:
            self.log.mark()
        self.send_frame(type_, payload)

    def prepare_conf(
        self, conf: ConfInput | None = None, key: str = "route#1#ext-plugin-pre-req#1", check: bool = True
    ) -> int:
        """Send a PrepareConf and return the token.

        A refused PrepareConf raises ``ConfRejected``. A conf the runner cannot
        serve (unknown plugin, ``configure`` raised) still gets a token, as in
        APISIX, and its calls fail with 503; when this client reads the log,
        it raises ``ConfRejected`` with the runner's reason instead, unless
        ``check=False``.
        """
        self._send(MessageType.PREPARE_CONF, wire.prepare_conf_req(None if conf is None else conf_pairs(conf), key))
        type_, payload = self.read_frame()
        if type_ == MessageType.ERROR:
            code = wire.err_code(payload)
            raise ConfRejected(self._reason() or f"PrepareConf refused with {code.name}", code)
        if type_ != MessageType.PREPARE_CONF:
            raise ProtocolViolation(f"PrepareConf answered with a type-{type_} frame")
        token = int(PrepareConfResp.GetRootAs(payload, 0).ConfToken())
        if token == 0:
            raise ProtocolViolation("conf token 0")
        reason = self.log.conf_reason(token) if self.log is not None else None
        if reason is not None:
            if check:
                raise ConfRejected(reason)
            self._conf_reasons[token] = reason
        return token

    def _reason(self, token: int = 0) -> str | None:
        reason = self.log.call_reason() if self.log is not None else None
        return reason or self._conf_reasons.get(token)

    def _exchange(
        self, call_type: int, payload: bytes, token: int, vars: Mapping[str, str] | None, bodies: Bodies
    ) -> tuple[bytes | None, ErrCode | None, str | None, list[tuple[str, str]]]:
        """Send one call and answer its ExtraInfo questions: (reply payload | None, err, reason, asked)."""
        self._send(call_type, payload)
        asked: list[tuple[str, str]] = []
        while True:
            type_, reply = self.read_frame()
            if type_ == MessageType.EXTRA_INFO:
                self.send_frame(MessageType.EXTRA_INFO, wire.answer_extra_info(reply, vars or {}, bodies, asked))
            elif type_ == MessageType.ERROR:
                return None, wire.err_code(reply), self._reason(token), asked
            elif type_ == call_type:
                return reply, None, None, asked
            else:
                raise ProtocolViolation(f"type-{call_type} call answered with a type-{type_} frame")

    def _id(self, id: int | None) -> int:
        if id is None:
            id, self._next_id = self._next_id, self._next_id + 1
        return id

    def http_req_call(
        self,
        token: int,
        *,
        id: int | None = None,
        method: str = "GET",
        path: str = "/",
        args: PairsInput = (),
        headers: PairsInput = (),
        src_ip: str | bytes = "127.0.0.1",
        vars: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> ReqCallReply:
        """One HTTPReqCall, answering ExtraInfo questions from ``vars`` and ``body``."""
        payload = wire.req_call_req(
            id=self._id(id),
            token=token,
            method=method,
            path=path,
            args=pairs(args),
            headers=pairs(headers, lower=True),
            src_ip=ip_bytes(src_ip),
        )
        out, err, reason, asked = self._exchange(
            MessageType.HTTP_REQ_CALL, payload, token, vars, {InfoKind.REQ_BODY: body}
        )
        reply = ReqCallReply(err=err, reason=reason) if out is None else wire.decode_req_call_reply(out)
        reply.asked = asked
        return reply

    def http_resp_call(
        self,
        token: int,
        *,
        id: int | None = None,
        status: int = 200,
        headers: PairsInput = (),
        vars: Mapping[str, str] | None = None,
        body: bytes | None = None,
        request_body: bytes | None = None,
    ) -> RespCallReply:
        """One HTTPRespCall for an upstream response (``body`` answers RespBody questions)."""
        payload = wire.resp_call_req(id=self._id(id), token=token, status=status, headers=pairs(headers))
        bodies: dict[int, bytes | None] = {InfoKind.REQ_BODY: request_body, InfoKind.RESP_BODY: body}
        out, err, reason, asked = self._exchange(MessageType.HTTP_RESP_CALL, payload, token, vars, bodies)
        reply = RespCallReply(err=err, reason=reason) if out is None else wire.decode_resp_call_reply(out)
        reply.asked = asked
        return reply
