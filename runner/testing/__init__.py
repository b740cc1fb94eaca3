"""The test kit: a fake APISIX over a real socket, the in-process kit, and a real runner process.

* ``vocab``: what a test supplies (confs, headers, args, addresses), one way for both halves.
* ``wire``: APISIX's requests and the replies as APISIX reads them.
* ``reasons``: why a call failed, read back from a runner process's log.
* ``client``: ``ApisixClient``, one APISIX connection.
* ``kit``: ``run_filter`` and ``run_response_filter``, without APISIX or a socket.
* ``process``: ``RunnerProcess``, ``python -m runner run`` for a test.

Both halves return the same reply objects (``ReqCallReply``, ``RespCallReply``), read
as APISIX reads them, failures included (``err`` and the runner's ``reason``),
and raise the same ``ConfRejected`` for a conf the runner cannot serve.
"""

from .client import ApisixClient
from .kit import run_filter, run_response_filter
from .process import RunnerProcess
from .wire import (
    CallFailed,
    ConfRejected,
    ProtocolViolation,
    ReqCallReply,
    RespCallReply,
    answer_extra_info,
    decode_req_call_reply,
    decode_resp_call_reply,
    encode_frame,
    extra_info_resp,
    prepare_conf_req,
    req_call_req,
    resp_call_req,
)

__all__ = [
    "ApisixClient",
    "CallFailed",
    "ConfRejected",
    "ProtocolViolation",
    "ReqCallReply",
    "RespCallReply",
    "RunnerProcess",
    "answer_extra_info",
    "decode_req_call_reply",
    "decode_resp_call_reply",
    "encode_frame",
    "extra_info_resp",
    "prepare_conf_req",
    "req_call_req",
    "resp_call_req",
    "run_filter",
    "run_response_filter",
]
