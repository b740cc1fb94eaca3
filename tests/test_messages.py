"""FlatBuffers payloads: decoding what APISIX sends, encoding what the runner replies.

Inputs are built with ``runner.testing``'s encoders (or taken from protocol.md
§12). Replies are read back with the generic readers (``a6pluginprotos``'s
``A6.*`` classes and ``runner.testing``'s raw table reads), never with the
runner's own decoder, and compared field by field: builders may lay bytes out
differently, so payload bytes are never compared.
"""

from __future__ import annotations

import struct

import flatbuffers
import pytest
import vectors
from A6.Err.Resp import Resp as ErrResp
from A6.ExtraInfo.Req import Req as ExtraInfoReq
from A6.ExtraInfo.Var import Var as ExtraInfoVar
from A6.HTTPReqCall.Resp import Resp as ReqCallResp
from A6.HTTPReqCall.Rewrite import Rewrite
from A6.HTTPReqCall.Stop import Stop
from A6.PrepareConf.Resp import Resp as PrepareConfResp
from A6.TextEntry import TextEntry
from flatbuffers.table import Table
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner import messages
from runner.errors import DecodeError, ErrCode
from runner.http import InfoKind
from runner.testing import (
    decode_req_call_reply,
    decode_resp_call_reply,
    extra_info_resp,
    prepare_conf_req,
    req_call_req,
    resp_call_req,
)

# --- protocol.md §12 payloads (frame headers stripped) -------------------------

PREPARE_CONF_REQ = vectors.payload("prepare_conf_req")
REQ_CALL_REQ = vectors.payload("req_call_req")
PREPARE_CONF_RESP_TOKEN_1 = vectors.payload("prepare_conf_resp")
ERR_CONF_TOKEN_NOT_FOUND = vectors.payload("err_conf_token_not_found")
ERR_BAD_REQUEST = vectors.payload("err_bad_request")
NO_ACTION = vectors.payload("req_call_resp_no_action")
STOP_403 = vectors.payload("req_call_resp_stop")
EXTRA_INFO_VAR_REMOTE_ADDR = vectors.payload("extra_info_req_var")
EXTRA_INFO_RESULT_127 = vectors.payload("extra_info_resp_result")
EXTRA_INFO_NO_RESULT = vectors.payload("extra_info_resp_absent")
EXTRA_INFO_RESP_BODY = vectors.payload("extra_info_req_resp_body")
RESP_CALL_RESP_201_CAT = vectors.payload("resp_call_resp")


def _req(**overrides: object) -> bytes:
    fields: dict[str, object] = dict(
        id=5, token=77, method="GET", path="/hello", args=[], headers=[], src_ip=b"\x7f\x00\x00\x01"
    )
    fields.update(overrides)
    return req_call_req(**fields)  # type: ignore[arg-type]


def _vtable_has(payload: bytes, vt: int) -> bool:
    """Whether the root table of ``payload`` has the field at vtable offset ``vt``."""
    root = flatbuffers.encode.Get(flatbuffers.packer.uoffset, payload, 0)
    return Table(bytearray(payload), root).Offset(vt) != 0


def _raw_entries(obj: Stop | Rewrite, what: str) -> list[tuple[bytes, bytes | None]]:
    """``[TextEntry]`` through a generated accessor (``Headers`` / ``Args``), as raw bytes."""
    get = getattr(obj, what)
    n = getattr(obj, f"{what}Length")()
    out = []
    for j in range(n):
        entry: TextEntry = get(j)
        out.append((bytes(entry.Name()), None if entry.Value() is None else bytes(entry.Value())))
    return out


# =============================================================================
# Decoding what APISIX sends
# =============================================================================

# --- PrepareConf ----------------------------------------------------------------


def test_prepare_conf_example_from_the_protocol_decodes_key_and_conf() -> None:
    conf = messages.parse_prepare_conf(PREPARE_CONF_REQ)
    assert conf.key == "route#1#ext-plugin-pre-req#42"
    assert conf.conf == [("say", '{"body":"hi"}')]


def test_prepare_conf_keeps_order_and_duplicate_plugin_names() -> None:
    entries = [("b", "1"), ("a", "2"), ("b", "3")]
    conf = messages.parse_prepare_conf(prepare_conf_req(entries, "route#1#ext-plugin-pre-req#1"))
    assert conf.conf == entries


def test_prepare_conf_without_conf_field_decodes_as_empty_list() -> None:
    payload = prepare_conf_req(None, "route#1#ext-plugin-pre-req#1")
    assert not _vtable_has(payload, 4)
    conf = messages.parse_prepare_conf(payload)
    assert conf.conf == []
    assert conf.key == "route#1#ext-plugin-pre-req#1"


def test_prepare_conf_with_empty_conf_vector_decodes_as_empty_list() -> None:
    assert messages.parse_prepare_conf(prepare_conf_req([], "k")).conf == []


# --- HTTPReqCall.Req ---------------------------------------------------------------


def test_req_call_example_from_the_protocol_decodes_every_field() -> None:
    call = messages.parse_req_call(REQ_CALL_REQ)
    assert call.id == 0
    assert call.conf_token == 1
    assert call.method == "GET"
    assert call.path == "/hello"
    assert call.src_ip == b"\x7f\x00\x00\x01"
    assert sorted(call.args()) == [("flag", ""), ("x", "1")]
    assert call.headers() == [("host", "localhost")]


def test_req_call_valueless_arg_reads_as_empty_string_next_to_empty_and_repeated_args() -> None:
    # ?xx=y&xx=z&y=&z as APISIX sends it (protocol.md §5.2): z has no value field.
    args = [("xx", "y"), ("xx", "z"), ("y", ""), ("z", None)]
    call = messages.parse_req_call(_req(method="PUT", args=args))
    assert call.args() == [("xx", "y"), ("xx", "z"), ("y", ""), ("z", "")]


def test_req_call_repeated_headers_are_kept_in_order() -> None:
    headers = [("connection", "close"), ("host", "localhost"), ("x-req", "foo"), ("x-req", "bar"), ("x-resp", "cat")]
    call = messages.parse_req_call(_req(headers=headers))
    assert call.headers() == headers


def test_req_call_non_utf8_bytes_round_trip_losslessly() -> None:
    raw_path = b"/caf\xe9/\xff"
    raw_value = b"\x80\xfe latin-1 \xe9"
    raw_arg = b"\xc3\x28"  # an invalid UTF-8 sequence
    payload = _req(path=raw_path, headers=[("x-raw", raw_value)], args=[(raw_arg, raw_arg)])
    call = messages.parse_req_call(payload)
    assert call.path.encode("utf-8", "surrogateescape") == raw_path
    assert call.headers()[0][1].encode("utf-8", "surrogateescape") == raw_value
    assert call.args()[0][0].encode("utf-8", "surrogateescape") == raw_arg

    # ... and the same bytes go back out in a Rewrite.
    reply = messages.encode_rewrite(
        1, path=call.path, headers=[call.headers()[0]], args=[call.args()[0]], resp_headers=[call.headers()[0]]
    )
    action = ReqCallResp.GetRootAs(reply, 0).Action()
    rewrite = Rewrite()
    rewrite.Init(action.Bytes, action.Pos)
    assert bytes(rewrite.Path()) == raw_path
    assert _raw_entries(rewrite, "Headers") == [(b"x-raw", raw_value)]
    assert _raw_entries(rewrite, "Args") == [(raw_arg, raw_arg)]
    assert decode_req_call_reply(reply).resp_headers[0][1].encode("utf-8", "surrogateescape") == raw_value


@pytest.mark.parametrize(
    "src_ip",
    [b"\x7f\x00\x00\x01", b"\xc0\xa8\x01\xfe", bytes(15) + b"\x01", bytes.fromhex("20010db8000000000000000000000001")],
    ids=["ipv4-loopback", "ipv4", "ipv6-loopback", "ipv6"],
)
def test_req_call_src_ip_bytes_pass_through_unchanged(src_ip: bytes) -> None:
    assert messages.parse_req_call(_req(src_ip=src_ip)).src_ip == src_ip


def test_req_call_get_is_sent_without_method_field_and_reads_as_get() -> None:
    payload = _req(method="GET")
    assert not _vtable_has(payload, 8)
    assert messages.parse_req_call(payload).method == "GET"


@pytest.mark.parametrize("method", list(messages.METHODS))
def test_req_call_every_a6_method_is_decoded_by_name(method: str) -> None:
    assert messages.parse_req_call(_req(method=method)).method == method


def test_req_call_id_zero_is_absent_and_reads_as_zero() -> None:
    payload = _req(id=0)
    assert not _vtable_has(payload, 4)
    assert messages.parse_req_call(payload).id == 0


def test_req_call_carries_id_and_token_up_to_uint32_max() -> None:
    call = messages.parse_req_call(_req(id=0xFFFFFFFF, token=0xFFFFFFFE))
    assert (call.id, call.conf_token) == (0xFFFFFFFF, 0xFFFFFFFE)


def test_req_call_empty_args_and_headers_decode_as_empty_lists() -> None:
    call = messages.parse_req_call(_req(args=[], headers=[]))
    assert call.args() == []
    assert call.headers() == []


# --- HTTPRespCall.Req -------------------------------------------------------------


def test_resp_call_keeps_the_upstream_header_case_and_repeats() -> None:
    headers = [
        ("Content-Type", "text/plain"),
        ("Server", "openresty"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("X-Empty", ""),
    ]
    call = messages.parse_resp_call(resp_call_req(id=9, token=3, status=502, headers=headers))
    assert call.id == 9
    assert call.conf_token == 3
    assert call.status == 502
    assert call.headers == headers


def test_resp_call_id_zero_reads_as_zero() -> None:
    call = messages.parse_resp_call(resp_call_req(id=0, token=3, status=200, headers=[]))
    assert call.id == 0
    assert call.headers == []


# --- ExtraInfo.Resp ---------------------------------------------------------------


def test_extra_info_absent_result_reads_as_none() -> None:
    assert messages.parse_extra_info_resp(extra_info_resp(None)) is None
    assert messages.parse_extra_info_resp(EXTRA_INFO_NO_RESULT) is None


def test_extra_info_empty_result_reads_as_empty_bytes_not_none() -> None:
    assert messages.parse_extra_info_resp(extra_info_resp(b"")) == b""


def test_extra_info_result_bytes_are_returned_unchanged() -> None:
    body = bytes(range(256)) * 4
    assert messages.parse_extra_info_resp(extra_info_resp(body)) == body
    assert messages.parse_extra_info_resp(EXTRA_INFO_RESULT_127) == b"127.0.0.1"


# =============================================================================
# Encoding what the runner sends (read back with generic readers)
# =============================================================================

# --- Err --------------------------------------------------------------------------


@pytest.mark.parametrize("code", list(ErrCode), ids=[c.name for c in ErrCode])
def test_err_reply_carries_its_code(code: ErrCode) -> None:
    payload = messages.encode_err(code)
    assert len(payload) >= 12
    assert ErrResp.GetRootAs(payload, 0).Code() == code


def test_err_bad_request_is_still_a_twelve_byte_table() -> None:
    payload = messages.encode_err(ErrCode.BAD_REQUEST)
    assert len(payload) == 12
    assert ErrResp.GetRootAs(payload, 0).Code() == 0


def test_err_replies_decode_like_the_protocol_examples() -> None:
    assert ErrResp.GetRootAs(messages.encode_err(ErrCode.CONF_TOKEN_NOT_FOUND), 0).Code() == (
        ErrResp.GetRootAs(ERR_CONF_TOKEN_NOT_FOUND, 0).Code()
    )
    assert (
        ErrResp.GetRootAs(ERR_BAD_REQUEST, 0).Code()
        == ErrResp.GetRootAs(messages.encode_err(ErrCode.BAD_REQUEST), 0).Code()
    )


# --- PrepareConf.Resp -------------------------------------------------------------


@pytest.mark.parametrize("token", [1, 233, 0x80000000, 0xFFFFFFFF])
def test_prepare_conf_reply_carries_the_token(token: int) -> None:
    assert PrepareConfResp.GetRootAs(messages.encode_prepare_conf_resp(token), 0).ConfToken() == token


def test_prepare_conf_reply_decodes_like_the_protocol_example() -> None:
    assert PrepareConfResp.GetRootAs(PREPARE_CONF_RESP_TOKEN_1, 0).ConfToken() == 1
    assert PrepareConfResp.GetRootAs(messages.encode_prepare_conf_resp(1), 0).ConfToken() == 1


# --- HTTPReqCall.Resp: no action --------------------------------------------------


@pytest.mark.parametrize("id_", [0, 1, 42, 0xFFFFFFFF])
def test_no_action_reply_echoes_the_id_and_carries_no_action(id_: int) -> None:
    payload = messages.encode_no_action(id_)
    resp = ReqCallResp.GetRootAs(payload, 0)
    assert resp.Id() == id_
    assert resp.ActionType() == 0
    assert resp.Action() is None
    reply = decode_req_call_reply(payload)
    assert (reply.id, reply.action) == (id_, "none")


def test_no_action_reply_for_id_zero_decodes_like_the_protocol_example() -> None:
    assert decode_req_call_reply(messages.encode_no_action(0)) == decode_req_call_reply(NO_ACTION)


# --- HTTPReqCall.Resp: Stop --------------------------------------------------------


def test_stop_reply_carries_status_repeated_headers_in_order_valueless_entry_and_body() -> None:
    headers = [("X-Same", "one"), ("Content-Type", "application/json"), ("X-Same", "two"), ("X-Gone", None)]
    payload = messages.encode_stop(17, 405, headers, b'{"error":"denied"}')

    resp = ReqCallResp.GetRootAs(payload, 0)
    assert resp.Id() == 17
    assert resp.ActionType() == 1
    stop = Stop()
    action = resp.Action()
    stop.Init(action.Bytes, action.Pos)
    assert stop.Status() == 405
    assert _raw_entries(stop, "Headers") == [
        (b"X-Same", b"one"),
        (b"Content-Type", b"application/json"),
        (b"X-Same", b"two"),
        (b"X-Gone", None),
    ]
    assert bytes(stop.Body(j) for j in range(stop.BodyLength())) == b'{"error":"denied"}'

    reply = decode_req_call_reply(payload)
    assert reply.action == "stop"
    assert reply.id == 17
    assert reply.status == 405
    assert reply.headers == headers
    assert reply.body == b'{"error":"denied"}'


def test_stop_reply_decodes_like_the_protocol_example() -> None:
    ours = decode_req_call_reply(messages.encode_stop(0, 403, [("X-Resp", "foo")], b"denied"))
    assert ours == decode_req_call_reply(STOP_403)


def test_stop_reply_without_body_or_headers_leaves_those_fields_out() -> None:
    for body in (None, b""):
        payload = messages.encode_stop(3, 200, [], body)
        stop = Stop()
        action = ReqCallResp.GetRootAs(payload, 0).Action()
        stop.Init(action.Bytes, action.Pos)
        assert stop.Status() == 200
        assert stop.HeadersIsNone()
        assert stop.BodyIsNone()  # an empty body cannot be sent (protocol.md §5.3)


def test_repeated_stop_replies_each_carry_their_own_id_and_fields() -> None:
    # Small stops are served from ready-made bytes: each must still be whole and its own.
    for id_ in (1, 0xFFFFFFFF, 42, 1):
        for status, headers, body in [(403, [("X-A", "1")], b"no"), (401, [("X-A", "1")], b"no"), (403, [], None)]:
            reply = decode_req_call_reply(messages.encode_stop(id_, status, headers, body))
            assert (reply.id, reply.status, reply.headers, reply.body) == (id_, status, headers, body)


def test_stop_reply_with_a_body_too_big_to_keep_is_whole_every_time() -> None:
    body = b"x" * 5000
    for id_ in (7, 8):
        reply = decode_req_call_reply(messages.encode_stop(id_, 403, [("X-Big", "y" * 3000)], body))
        assert (reply.id, reply.headers, reply.body) == (id_, [("X-Big", "y" * 3000)], body)


# --- HTTPReqCall.Resp: Rewrite -----------------------------------------------------


def test_rewrite_reply_carries_all_five_slots() -> None:
    payload = messages.encode_rewrite(
        23,
        path="/new path",
        headers=[("X-Change", "bar"), ("X-Delete", None), ("host", "example.com")],
        args=[("a", "foo"), ("d", None), ("a", "bar")],
        resp_headers=[("X-Same", "one"), ("X-Same", "two")],
        body=b"abc\n",
    )
    resp = ReqCallResp.GetRootAs(payload, 0)
    assert resp.Id() == 23
    assert resp.ActionType() == 2

    # Slots 0-2 through the generated Rewrite class...
    rewrite = Rewrite()
    action = resp.Action()
    rewrite.Init(action.Bytes, action.Pos)
    assert rewrite.Path() == b"/new path"
    assert _raw_entries(rewrite, "Headers") == [(b"X-Change", b"bar"), (b"X-Delete", None), (b"host", b"example.com")]
    assert _raw_entries(rewrite, "Args") == [(b"a", b"foo"), (b"d", None), (b"a", b"bar")]

    # ... and slots 3-4 (missing from a6pluginprotos 0.2.1) by vtable offset.
    reply = decode_req_call_reply(payload)
    assert reply.action == "rewrite"
    assert reply.path == "/new path"
    assert reply.headers == [("X-Change", "bar"), ("X-Delete", None), ("host", "example.com")]
    assert reply.args == [("a", "foo"), ("d", None), ("a", "bar")]
    assert reply.resp_headers == [("X-Same", "one"), ("X-Same", "two")]
    assert reply.body == b"abc\n"


def test_rewrite_reply_with_only_args_leaves_the_other_slots_out() -> None:
    reply = decode_req_call_reply(messages.encode_rewrite(4, args=[("x", "z")]))
    assert reply.action == "rewrite"
    assert reply.id == 4
    assert reply.path is None
    assert reply.headers == []
    assert reply.args == [("x", "z")]
    assert reply.resp_headers == []
    assert reply.body is None


def test_rewrite_reply_with_only_path_and_body_leaves_the_other_slots_out() -> None:
    reply = decode_req_call_reply(messages.encode_rewrite(5, path="/uri", body=b"\x00\xff"))
    assert (reply.path, reply.body) == ("/uri", b"\x00\xff")
    assert reply.headers == reply.args == reply.resp_headers == []


def test_rewrite_reply_with_only_resp_headers_keeps_path_absent() -> None:
    payload = messages.encode_rewrite(6, resp_headers=[("X-Resp", "foo")])
    action = ReqCallResp.GetRootAs(payload, 0).Action()
    rewrite = Rewrite()
    rewrite.Init(action.Bytes, action.Pos)
    assert rewrite.Path() is None  # "" would count as present for APISIX
    assert rewrite.HeadersIsNone()
    assert rewrite.ArgsIsNone()
    assert decode_req_call_reply(payload).resp_headers == [("X-Resp", "foo")]


def test_rewrite_reply_with_empty_body_leaves_body_out() -> None:
    assert decode_req_call_reply(messages.encode_rewrite(7, path="/a", body=b"")).body is None


# --- HTTPRespCall.Resp -------------------------------------------------------------


def test_resp_call_reply_carries_id_status_headers_and_body() -> None:
    headers = [("Content-Type", "application/json"), ("X-Same", "one"), ("X-Same", "two"), ("X-Gone", None)]
    reply = decode_resp_call_reply(messages.encode_resp_call_resp(11, 304, headers, b"{}"))
    assert reply.id == 11
    assert reply.status == 304
    assert reply.headers == headers
    assert reply.body == b"{}"


def test_resp_call_reply_with_status_zero_and_no_body_leaves_them_out() -> None:
    payload = messages.encode_resp_call_resp(0, 0, [("Server", "x")], None)
    assert not _vtable_has(payload, 6)
    assert not _vtable_has(payload, 10)
    reply = decode_resp_call_reply(payload)
    assert (reply.status, reply.body, reply.headers) == (0, None, [("Server", "x")])


def test_resp_call_reply_decodes_like_the_protocol_example() -> None:
    ours = decode_resp_call_reply(messages.encode_resp_call_resp(7, 201, [], b"cat"))
    assert ours == decode_resp_call_reply(RESP_CALL_RESP_201_CAT)


# --- ExtraInfo.Req ------------------------------------------------------------------


def _extra_info(payload: bytes) -> tuple[int, Table | None]:
    req = ExtraInfoReq.GetRootAs(payload, 0)
    return req.InfoType(), req.Info()


def test_extra_info_var_question_names_the_variable() -> None:
    for payload in (messages.encode_extra_info_req(InfoKind.VAR, "remote_addr"), EXTRA_INFO_VAR_REMOTE_ADDR):
        info_type, info = _extra_info(payload)
        assert info_type == 1
        assert info is not None
        var = ExtraInfoVar()
        var.Init(info.Bytes, info.Pos)
        assert var.Name() == b"remote_addr"


def test_extra_info_req_body_question_carries_an_empty_table() -> None:
    info_type, info = _extra_info(messages.encode_extra_info_req(InfoKind.REQ_BODY))
    assert info_type == 2
    assert info is not None


def test_extra_info_resp_body_question_decodes_like_the_protocol_example() -> None:
    ours = _extra_info(messages.encode_extra_info_req(InfoKind.RESP_BODY))
    theirs = _extra_info(EXTRA_INFO_RESP_BODY)
    assert ours[0] == theirs[0] == 3
    assert ours[1] is not None and theirs[1] is not None
    # RespBody has no fields: its vtable holds just its own and the table's size.
    for info in (ours[1], theirs[1]):
        assert info.Offset(4) == 0


# =============================================================================
# Garbage and truncation: DecodeError (Err BAD_REQUEST) or a parse, nothing else
# =============================================================================


def _parse_req_call_fully(payload: bytes) -> messages.ReqCall:
    """All but the id, token and method is decoded on first use: force it."""
    call = messages.parse_req_call(payload)
    call.headers(), call.args(), call.path, call.src_ip
    return call


PARSERS = {
    "prepare_conf": messages.parse_prepare_conf,
    "req_call": _parse_req_call_fully,
    "resp_call": messages.parse_resp_call,
    "extra_info_resp": messages.parse_extra_info_resp,
}

VALID = {
    "prepare_conf": [PREPARE_CONF_REQ, prepare_conf_req([("a", "1"), ("b", None)], "route#1#x#2")],
    "req_call": [REQ_CALL_REQ, _req(args=[("z", None), ("a", "1")], headers=[("x-req", "foo"), ("x-req", "bar")])],
    "resp_call": [resp_call_req(id=3, token=4, status=200, headers=[("Content-Type", "text/plain")])],
    "extra_info_resp": [EXTRA_INFO_RESULT_127, EXTRA_INFO_NO_RESULT, extra_info_resp(b"")],
}


def _parse_or_decode_error(parse: object, payload: bytes) -> None:
    try:
        parse(payload)  # type: ignore[operator]
    except DecodeError as e:
        assert e.code == ErrCode.BAD_REQUEST


@pytest.mark.parametrize("name", list(PARSERS))
def test_zero_length_payload_is_a_decode_error(name: str) -> None:
    with pytest.raises(DecodeError):
        PARSERS[name](b"")


@pytest.mark.parametrize("name", list(PARSERS))
def test_truncation_at_every_offset_parses_or_is_a_decode_error(name: str) -> None:
    for payload in VALID[name]:
        for cut in range(len(payload)):
            _parse_or_decode_error(PARSERS[name], payload[:cut])


@pytest.mark.parametrize("name", list(PARSERS))
def test_valid_payloads_parse(name: str) -> None:
    for payload in VALID[name]:
        PARSERS[name](payload)


def _vector_length_position(payload: bytes, vt_entry: int) -> int:
    """Where the length word of the root table's vector/string field at ``vt_entry`` sits."""
    root = struct.unpack_from("<I", payload, 0)[0]
    vt = root - struct.unpack_from("<i", payload, root)[0]
    field = root + struct.unpack_from("<H", payload, vt + vt_entry)[0]
    return field + struct.unpack_from("<I", payload, field)[0]


# (parser, payload, vtable offsets of its vector and string fields)
_FORGEABLE = [
    (_parse_req_call_fully, _req(args=[("a", "1")], headers=[("h", "v")], path="/p"), (6, 10, 12, 14)),
    (messages.parse_prepare_conf, prepare_conf_req([("a", "1")], "key"), (4, 6)),
    (messages.parse_resp_call, resp_call_req(id=1, token=2, status=200, headers=[("A", "b")]), (8,)),
    (messages.parse_extra_info_resp, extra_info_resp(b"body"), (4,)),
]


@pytest.mark.parametrize("forged", [0x7FFFFFFF, 0xFFFFFFFF, 0x40000000, 0x01000000])
def test_forged_huge_vector_lengths_are_rejected(forged: int) -> None:
    for parse, payload, vt_entries in _FORGEABLE:
        for vt_entry in vt_entries:
            forged_payload = bytearray(payload)
            struct.pack_into("<I", forged_payload, _vector_length_position(payload, vt_entry), forged)
            with pytest.raises(DecodeError):
                parse(bytes(forged_payload))


def test_text_entry_vtable_cut_off_by_the_end_of_the_payload_is_rejected() -> None:
    # PrepareConf.Req{conf: [TextEntry]} whose one entry's vtable sits last and
    # claims 8 bytes (a value slot) where only 6 remain.
    payload = b"".join(
        (
            struct.pack("<I", 12),  # root table at 12
            struct.pack("<3H", 6, 8, 4) + b"\0\0",  # root vtable: conf at +4
            struct.pack("<iI", 8, 4),  # root table: soffset, conf -> vector at 20
            struct.pack("<II", 1, 4),  # vector of 1: entry table at 28
            struct.pack("<i", -4),  # entry table, its vtable right after it
            struct.pack("<3H", 8, 4, 0),  # entry vtable: 8 bytes claimed, 6 present
        )
    )
    with pytest.raises(DecodeError, match="does not fit"):
        messages.parse_prepare_conf(payload)


def test_forged_vector_length_inside_a_text_entry_is_rejected() -> None:
    payload = bytearray(prepare_conf_req([("plugin", "value")], "k"))
    # Forge every 4-byte word that currently reads as a string length of 6 ("plugin") or 5 ("value").
    hits = 0
    for pos in range(0, len(payload) - 4, 4):
        length = struct.unpack_from("<I", payload, pos)[0]
        if length in (5, 6) and payload[pos + 4 : pos + 4 + length] in (b"plugin", b"value"):
            forged = bytearray(payload)
            struct.pack_into("<I", forged, pos, 0xFFFFFFF0)
            with pytest.raises(DecodeError):
                messages.parse_prepare_conf(bytes(forged))
            hits += 1
    assert hits == 2


_garbage = st.one_of(
    st.binary(max_size=200),
    # Valid payloads with a few bytes overwritten: reaches deeper than pure noise.
    st.builds(
        lambda base, edits: _mutate(base, edits),
        st.sampled_from([p for ps in VALID.values() for p in ps]),
        st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=6),
    ),
)


def _mutate(base: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(base)
    for pos, value in edits:
        out[pos % len(out)] = value
    return bytes(out)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_garbage)
def test_any_bytes_either_parse_or_raise_decode_error(payload: bytes) -> None:
    for parse in PARSERS.values():
        _parse_or_decode_error(parse, payload)
