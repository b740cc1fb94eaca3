"""The wire's vocabulary: every number the ext-plugin protocol gives a meaning.

Frame types, error codes, ExtraInfo kinds, action types, HTTP methods and the
slot numbers (field ids) of every table of ``ext-plugin.fbs`` v0.6.1, named
once here and used by the frame codec, the decoder, the encoder, the
dispatcher and the test kit alike. docs/protocol.md says what each message
means and how APISIX uses it.

Rules: names only, no behaviour and no I/O. Frame types, error codes, info
kinds and action types are ``IntEnum`` (their names show in logs and metric
labels). A slot table is a plain class of ``int`` attributes, as ``flatc``
writes enums for Python: the decoder and encoder read slots on every call,
and a class attribute costs a fraction of an ``Enum`` member lookup.
"""

from __future__ import annotations

import enum

__all__ = [
    "METHODS",
    "Action",
    "Err",
    "ErrCode",
    "ExtraInfoReq",
    "ExtraInfoResp",
    "HTTPReqCallReq",
    "HTTPReqCallResp",
    "HTTPRespCallReq",
    "HTTPRespCallResp",
    "InfoKind",
    "MessageType",
    "PrepareConfReq",
    "PrepareConfResp",
    "Rewrite",
    "Stop",
    "TextEntry",
    "Var",
    "slot_count",
    "vtable_entry",
]


class MessageType(enum.IntEnum):
    """The frame's type byte (APISIX ``constants.lua``)."""

    ERROR = 0
    PREPARE_CONF = 1
    HTTP_REQ_CALL = 2
    EXTRA_INFO = 3
    HTTP_RESP_CALL = 4


class ErrCode(enum.IntEnum):
    """``A6.Err.Code``: what APISIX reads in an Err frame (type 0)."""

    BAD_REQUEST = 0
    SERVICE_UNAVAILABLE = 1
    CONF_TOKEN_NOT_FOUND = 2


class InfoKind(enum.IntEnum):
    """What an ExtraInfo question asks for (the ``A6.ExtraInfo.Info`` union tag)."""

    VAR = 1
    REQ_BODY = 2
    RESP_BODY = 3


class Action(enum.IntEnum):
    """``A6.HTTPReqCall.Action``: the union tag of an HTTPReqCall reply."""

    NONE = 0
    STOP = 1
    REWRITE = 2


#: ``A6.Method``, in enum order (GET = 0 is the default, so a GET carries no method field).
METHODS = (
    "GET", "HEAD", "POST", "PUT", "DELETE", "MKCOL", "COPY", "MOVE", "OPTIONS",
    "PROPFIND", "PROPPATCH", "LOCK", "UNLOCK", "PATCH", "TRACE",
)  # fmt: skip


# --- slot numbers, one class per table ----------------------------------------


class TextEntry:
    """``A6.TextEntry``: a header, arg or conf entry. An absent value is a valueless arg or a deletion."""

    NAME = 0  # string
    VALUE = 1  # string


class Err:
    """``A6.Err.Resp``."""

    CODE = 0  # ubyte ErrCode


class PrepareConfReq:
    """``A6.PrepareConf.Req``."""

    CONF = 0  # [TextEntry]: (plugin name, conf) in route order
    KEY = 1  # string


class PrepareConfResp:
    """``A6.PrepareConf.Resp``."""

    CONF_TOKEN = 0  # uint32


class HTTPReqCallReq:
    """``A6.HTTPReqCall.Req``."""

    ID = 0  # uint32
    SRC_IP = 1  # [ubyte]: 4 or 16 bytes
    METHOD = 2  # ubyte, an index into METHODS
    PATH = 3  # string
    ARGS = 4  # [TextEntry]
    HEADERS = 5  # [TextEntry]
    CONF_TOKEN = 6  # uint32


class Stop:
    """``A6.HTTPReqCall.Stop``."""

    STATUS = 0  # uint16
    HEADERS = 1  # [TextEntry]
    BODY = 2  # [ubyte]


class Rewrite:
    """``A6.HTTPReqCall.Rewrite`` (5 slots; a6pluginprotos 0.2.1 knows only the first 3)."""

    PATH = 0  # string
    HEADERS = 1  # [TextEntry]
    ARGS = 2  # [TextEntry]
    RESP_HEADERS = 3  # [TextEntry]
    BODY = 4  # [ubyte]


class HTTPReqCallResp:
    """``A6.HTTPReqCall.Resp``."""

    ID = 0  # uint32
    ACTION_TYPE = 1  # ubyte Action
    ACTION = 2  # Stop or Rewrite


class Var:
    """``A6.ExtraInfo.Var`` (ReqBody and RespBody are tables without fields)."""

    NAME = 0  # string


class ExtraInfoReq:
    """``A6.ExtraInfo.Req``."""

    INFO_TYPE = 0  # ubyte InfoKind
    INFO = 1  # Var, ReqBody or RespBody


class ExtraInfoResp:
    """``A6.ExtraInfo.Resp``."""

    RESULT = 0  # [ubyte]


class HTTPRespCallReq:
    """``A6.HTTPRespCall.Req`` (not in a6pluginprotos 0.2.1)."""

    ID = 0  # uint32
    STATUS = 1  # uint16
    HEADERS = 2  # [TextEntry]
    CONF_TOKEN = 3  # uint32


class HTTPRespCallResp:
    """``A6.HTTPRespCall.Resp`` (not in a6pluginprotos 0.2.1)."""

    ID = 0  # uint32
    STATUS = 1  # uint16, 0 = keep the upstream's
    HEADERS = 2  # [TextEntry]
    BODY = 3  # [ubyte]


def slot_count(table: type) -> int:
    """How many slots ``table`` declares: what ``flatbuffers.Builder.StartObject`` takes."""
    return sum(1 for name, value in vars(table).items() if name.isupper() and isinstance(value, int))


def vtable_entry(slot: int) -> int:
    """Where a slot's field offset sits in a vtable: what ``flatbuffers.table.Table.Offset`` takes."""
    return 4 + 2 * slot
