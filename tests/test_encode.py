"""Encoding what the runner sends, read back with the generic readers.

Every reply is read with ``a6pluginprotos``'s ``A6.*`` classes or the test
kit's raw table reads (``runner.testing``: for the fields a6pluginprotos
lacks), never with the runner's own decoder, and compared field by field:
builders lay bytes out differently, so payload bytes are never compared.
"""

from __future__ import annotations

import flatbuffers
import pytest
import vectors
from A6.Err.Resp import Resp as ErrResp
from A6.ExtraInfo.Req import Req as ExtraInfoReqTable
from A6.ExtraInfo.Var import Var as VarTable
from A6.HTTPReqCall.Resp import Resp as ReqCallResp
from A6.HTTPReqCall.Rewrite import Rewrite as RewriteTable
from A6.HTTPReqCall.Stop import Stop as StopTable
from A6.PrepareConf.Resp import Resp as PrepareConfResp
from A6.TextEntry import TextEntry as TextEntryTable
from flatbuffers.table import Table

from runner import decode, encode, frame
from runner.protocol import Action, ErrCode, HTTPRespCallResp, InfoKind, MessageType, vtable_entry
from runner.testing import decode_req_call_reply, decode_resp_call_reply, req_call_req


def _has_field(payload: bytes, slot: int) -> bool:
    root = flatbuffers.encode.Get(flatbuffers.packer.uoffset, payload, 0)
    return Table(bytearray(payload), root).Offset(vtable_entry(slot)) != 0


def _raw_entries(table: StopTable | RewriteTable, what: str) -> list[tuple[bytes, bytes | None]]:
    """A ``[TextEntry]`` through a generated accessor (``Headers`` / ``Args``), as raw bytes."""
    out = []
    for j in range(getattr(table, f"{what}Length")()):
        entry: TextEntryTable = getattr(table, what)(j)
        out.append((bytes(entry.Name()), None if entry.Value() is None else bytes(entry.Value())))
    return out


def _action(payload: bytes, cls: type[StopTable] | type[RewriteTable]) -> StopTable | RewriteTable:
    action = ReqCallResp.GetRootAs(payload, 0).Action()
    table = cls()
    table.Init(action.Bytes, action.Pos)
    return table


# --- Err --------------------------------------------------------------------------


@pytest.mark.parametrize("code", list(ErrCode), ids=[c.name for c in ErrCode])
def test_err_reply_carries_its_code_and_is_never_empty(code: ErrCode) -> None:
    payload = encode.err(code)
    assert len(payload) >= 12  # a zero-length payload makes APISIX answer 500
    assert ErrResp.GetRootAs(payload, 0).Code() == code
    assert frame.encode(MessageType.ERROR, payload)


def test_err_replies_decode_like_the_examples() -> None:
    for code, example in [
        (ErrCode.CONF_TOKEN_NOT_FOUND, "err_conf_token_not_found"),
        (ErrCode.BAD_REQUEST, "err_bad_request"),
    ]:
        assert ErrResp.GetRootAs(encode.err(code), 0).Code() == ErrResp.GetRootAs(vectors.payload(example), 0).Code()


# --- PrepareConf.Resp -------------------------------------------------------------


@pytest.mark.parametrize("token", [1, 233, 0x80000000, 0xFFFFFFFF])
def test_prepare_conf_reply_carries_the_token(token: int) -> None:
    assert PrepareConfResp.GetRootAs(encode.prepare_conf(token), 0).ConfToken() == token


def test_prepare_conf_reply_decodes_like_the_example() -> None:
    example = vectors.payload("prepare_conf_resp")
    assert PrepareConfResp.GetRootAs(encode.prepare_conf(1), 0).ConfToken() == 1
    assert PrepareConfResp.GetRootAs(example, 0).ConfToken() == 1


# --- HTTPReqCall.Resp: no action ----------------------------------------------------


@pytest.mark.parametrize("id_", [0, 1, 42, 0xFFFFFFFF])
def test_no_action_reply_echoes_the_id_and_carries_no_action(id_: int) -> None:
    payload = encode.no_action(id_)
    resp = ReqCallResp.GetRootAs(payload, 0)
    assert (resp.Id(), resp.ActionType(), resp.Action()) == (id_, Action.NONE, None)


def test_no_action_reply_for_id_zero_decodes_like_the_example() -> None:
    example = vectors.payload("req_call_resp_no_action")
    assert decode_req_call_reply(encode.no_action(0)) == decode_req_call_reply(example)


# --- HTTPReqCall.Resp: Stop -----------------------------------------------------------


def test_stop_reply_carries_status_repeated_headers_in_order_valueless_entry_and_body() -> None:
    headers = [("X-Same", "one"), ("Content-Type", "application/json"), ("X-Same", "two"), ("X-Gone", None)]
    payload = encode.stop(17, 405, headers, b'{"error":"denied"}')

    resp = ReqCallResp.GetRootAs(payload, 0)
    assert (resp.Id(), resp.ActionType()) == (17, Action.STOP)
    stop = _action(payload, StopTable)
    assert stop.Status() == 405
    assert _raw_entries(stop, "Headers") == [
        (b"X-Same", b"one"),
        (b"Content-Type", b"application/json"),
        (b"X-Same", b"two"),
        (b"X-Gone", None),
    ]
    assert bytes(stop.Body(j) for j in range(stop.BodyLength())) == b'{"error":"denied"}'
    reply = decode_req_call_reply(payload)
    assert (reply.action, reply.id, reply.status) == ("stop", 17, 405)
    assert (reply.headers, reply.body) == (headers, b'{"error":"denied"}')


def test_stop_reply_decodes_like_the_example() -> None:
    ours = decode_req_call_reply(encode.stop(0, 403, [("X-Resp", "foo")], b"denied"))
    assert ours == decode_req_call_reply(vectors.payload("req_call_resp_stop"))


def test_stop_reply_without_body_or_headers_leaves_those_fields_out() -> None:
    for body in (None, b""):  # APISIX cannot send an empty body: no body at all instead
        stop = _action(encode.stop(3, 200, [], body), StopTable)
        assert stop.Status() == 200
        assert stop.HeadersIsNone()
        assert stop.BodyIsNone()


def test_repeated_stop_replies_each_carry_their_own_id_and_fields() -> None:
    for id_ in (1, 0xFFFFFFFF, 0, 42, 1):
        for status, headers, body in [(403, [("X-A", "1")], b"no"), (401, [("X-A", "1")], b"no"), (403, [], None)]:
            reply = decode_req_call_reply(encode.stop(id_, status, headers, body))
            assert (reply.id, reply.status, reply.headers, reply.body) == (id_, status, headers, body)


def test_stop_reply_with_a_big_body_and_header_is_whole_every_time() -> None:
    body = b"x" * 5000
    for id_ in (7, 8):
        reply = decode_req_call_reply(encode.stop(id_, 403, [("X-Big", "y" * 3000)], body))
        assert (reply.id, reply.headers, reply.body) == (id_, [("X-Big", "y" * 3000)], body)


def test_replies_stay_whole_across_thousands_of_distinct_headers_and_stops() -> None:
    # More distinct entries and replies than any reuse of earlier bytes keeps.
    for i in range(6000):
        headers = [("X-Request-Id", f"id-{i}"), ("X-Same", "1")]
        reply = decode_req_call_reply(encode.stop(i + 1, 400 + i % 100, headers, f"body {i}".encode()))
        assert (reply.id, reply.status, reply.headers, reply.body) == (
            i + 1,
            400 + i % 100,
            headers,
            f"body {i}".encode(),
        )
        rewritten = decode_req_call_reply(encode.rewrite(i, headers=headers))
        assert (rewritten.id, rewritten.headers) == (i, headers)


@pytest.mark.parametrize("count", [0, 1, 2, 63, 64, 65, 300])
def test_header_lists_of_any_length_read_back_whole(count: int) -> None:
    headers = [(f"X-H{i}", f"v{i}") for i in range(count)]
    reply = decode_req_call_reply(encode.rewrite(5, headers=headers, args=headers))
    assert (reply.headers, reply.args) == (headers, headers)


# --- HTTPReqCall.Resp: Rewrite --------------------------------------------------------


def test_rewrite_reply_carries_all_five_slots() -> None:
    payload = encode.rewrite(
        23,
        path="/new path",
        headers=[("X-Change", "bar"), ("X-Delete", None), ("host", "example.com")],
        args=[("a", "foo"), ("d", None), ("a", "bar")],
        resp_headers=[("X-Same", "one"), ("X-Same", "two")],
        body=b"abc\n",
    )
    resp = ReqCallResp.GetRootAs(payload, 0)
    assert (resp.Id(), resp.ActionType()) == (23, Action.REWRITE)
    # The first three slots through the generated Rewrite class...
    rewrite = _action(payload, RewriteTable)
    assert rewrite.Path() == b"/new path"
    assert _raw_entries(rewrite, "Headers") == [(b"X-Change", b"bar"), (b"X-Delete", None), (b"host", b"example.com")]
    assert _raw_entries(rewrite, "Args") == [(b"a", b"foo"), (b"d", None), (b"a", b"bar")]
    # ... and all five (a6pluginprotos 0.2.1 lacks resp_headers and body) by slot.
    reply = decode_req_call_reply(payload)
    assert (reply.action, reply.path) == ("rewrite", "/new path")
    assert reply.headers == [("X-Change", "bar"), ("X-Delete", None), ("host", "example.com")]
    assert reply.args == [("a", "foo"), ("d", None), ("a", "bar")]
    assert reply.resp_headers == [("X-Same", "one"), ("X-Same", "two")]
    assert reply.body == b"abc\n"


def test_rewrite_reply_with_only_args_leaves_the_other_slots_out() -> None:
    reply = decode_req_call_reply(encode.rewrite(4, args=[("x", "z")]))
    assert (reply.action, reply.id, reply.path, reply.body) == ("rewrite", 4, None, None)
    assert reply.args == [("x", "z")]
    assert reply.headers == reply.resp_headers == []


def test_rewrite_reply_with_only_path_and_body_leaves_the_other_slots_out() -> None:
    reply = decode_req_call_reply(encode.rewrite(5, path="/uri", body=b"\x00\xff"))
    assert (reply.path, reply.body) == ("/uri", b"\x00\xff")
    assert reply.headers == reply.args == reply.resp_headers == []


def test_rewrite_reply_with_only_resp_headers_keeps_path_absent() -> None:
    payload = encode.rewrite(6, resp_headers=[("X-Resp", "foo")])
    rewrite = _action(payload, RewriteTable)
    assert rewrite.Path() is None  # "" would count as present for APISIX
    assert rewrite.HeadersIsNone()
    assert rewrite.ArgsIsNone()
    assert decode_req_call_reply(payload).resp_headers == [("X-Resp", "foo")]


def test_rewrite_reply_leaves_an_empty_path_and_body_out() -> None:
    reply = decode_req_call_reply(encode.rewrite(7, path="", headers=[("a", "b")], body=b""))
    assert (reply.path, reply.body, reply.headers) == (None, None, [("a", "b")])


def test_rewrite_reply_takes_any_sequence_of_pairs() -> None:
    reply = decode_req_call_reply(encode.rewrite(8, headers=(("a", "1"), ("b", None)), args=[("c", "2")]))
    assert (reply.headers, reply.args) == ([("a", "1"), ("b", None)], [("c", "2")])


def test_bytes_apisix_sent_go_back_out_unchanged_whatever_their_encoding() -> None:
    raw_path, raw_value, raw_arg = b"/caf\xe9/\xff", b"\x80\xfe latin-1 \xe9", b"\xc3\x28"
    request = req_call_req(
        id=1,
        token=1,
        method="GET",
        path=raw_path,
        args=[(raw_arg, raw_arg)],
        headers=[("x-raw", raw_value)],
        src_ip=b"",
    )
    call = decode.req_call(request)
    payload = encode.rewrite(1, path=call.path(), headers=call.headers(), args=call.args(), resp_headers=call.headers())
    rewrite = _action(payload, RewriteTable)
    assert bytes(rewrite.Path()) == raw_path
    assert _raw_entries(rewrite, "Headers") == [(b"x-raw", raw_value)]
    assert _raw_entries(rewrite, "Args") == [(raw_arg, raw_arg)]
    assert decode_req_call_reply(payload).resp_headers[0][1].encode("utf-8", "surrogateescape") == raw_value


# --- HTTPRespCall.Resp ----------------------------------------------------------------


def test_resp_call_reply_carries_id_status_headers_and_body() -> None:
    headers = [("Content-Type", "application/json"), ("X-Same", "one"), ("X-Same", "two"), ("X-Gone", None)]
    reply = decode_resp_call_reply(encode.resp_call(11, 304, headers, b"{}"))
    assert (reply.id, reply.status, reply.headers, reply.body) == (11, 304, headers, b"{}")


def test_resp_call_reply_with_status_zero_and_no_body_leaves_them_out() -> None:
    payload = encode.resp_call(0, 0, [("Server", "x")], None)
    assert not _has_field(payload, HTTPRespCallResp.STATUS)
    assert not _has_field(payload, HTTPRespCallResp.BODY)
    reply = decode_resp_call_reply(payload)
    assert (reply.status, reply.body, reply.headers) == (0, None, [("Server", "x")])


def test_resp_call_reply_decodes_like_the_example() -> None:
    ours = decode_resp_call_reply(encode.resp_call(7, 201, [], b"cat"))
    assert ours == decode_resp_call_reply(vectors.payload("resp_call_resp"))


# --- ExtraInfo.Req ----------------------------------------------------------------------


def _question(payload: bytes) -> tuple[int, Table | None]:
    req = ExtraInfoReqTable.GetRootAs(payload, 0)
    return req.InfoType(), req.Info()


@pytest.mark.parametrize("name", ["remote_addr", "http_x_\xe9", "a" * 300])
def test_var_question_names_the_variable(name: str) -> None:
    for _ in range(2):  # asked again, the question is the same
        info_type, info = _question(encode.extra_info(InfoKind.VAR, name))
        assert info_type == InfoKind.VAR and info is not None
        var = VarTable()
        var.Init(info.Bytes, info.Pos)
        assert var.Name().decode("utf-8", "surrogateescape") == name


def test_var_question_decodes_like_the_example() -> None:
    ours, theirs = encode.extra_info(InfoKind.VAR, "remote_addr"), vectors.payload("extra_info_req_var")
    for payload in (ours, theirs):
        info_type, info = _question(payload)
        var = VarTable()
        assert info is not None
        var.Init(info.Bytes, info.Pos)
        assert (info_type, var.Name()) == (InfoKind.VAR, b"remote_addr")


@pytest.mark.parametrize("kind", [InfoKind.REQ_BODY, InfoKind.RESP_BODY])
def test_body_questions_carry_an_empty_table_like_the_example(kind: InfoKind) -> None:
    info_type, info = _question(encode.extra_info(kind))
    assert info_type == kind and info is not None
    assert info.Offset(4) == 0  # no fields: the vtable holds only its own and the table's size
    theirs_type, theirs = _question(vectors.payload("extra_info_req_resp_body"))
    assert theirs_type == InfoKind.RESP_BODY and theirs is not None and theirs.Offset(4) == 0
