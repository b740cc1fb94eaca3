"""The test kit: a fake APISIX over a real socket, the in-process kit, and a real runner process.

* ``wire``: APISIX's requests and the replies as APISIX reads them.
* ``client``: ``ApisixClient``, one APISIX connection.
* ``kit``: ``run_filter`` and ``run_response_filter``, without APISIX or a socket.
* ``process``: ``RunnerProcess``, ``python -m runner run`` for a test.

Both halves return the same reply objects (``ReqCallReply``, ``RespCallReply``), read
as APISIX reads them.
"""

from .client import ApisixClient
from .kit import ConfRejected, run_filter, run_response_filter
from .process import RunnerProcess
from .wire import (
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
