"""``ApisixClient``: one APISIX connection to a runner over a real Unix socket.

It plays APISIX's side exactly: PrepareConf on its own connection, one call in
flight per connection, ExtraInfo questions answered from what the test
supplied (an unknown variable or a missing body is answered with no result,
as APISIX does), and the response phase.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping

from A6.PrepareConf.Resp import Resp as PrepareConfResp

from .. import frame
from ..frame import HEADER_LEN
from ..protocol import InfoKind, MessageType
from .wire import (
    Pairs,
    ProtocolViolation,
    ReqCallReply,
    RespCallReply,
    answer_extra_info,
    decode_req_call_reply,
    decode_resp_call_reply,
    encode_frame,
    err_code,
    prepare_conf_req,
    req_call_req,
    resp_call_req,
)


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
            raise LookupError(err_code(payload))
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
            ReqCallReply(err=err_code(reply_payload))
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
        reply = RespCallReply(err=err_code(payload)) if type_ == MessageType.ERROR else decode_resp_call_reply(payload)
        reply.asked = asked
        return reply
