"""Decoding what APISIX sends: every field, and garbage or truncation refused.

Inputs are built with ``flatbuffers.Builder`` (``runner.testing``'s encoders,
which write what APISIX's Lua builder writes), taken from the byte-level
examples in ``vectors``, or hand-built (``payloads``) where a test needs bytes
no builder writes. The decode budget has its own tests (test_decode_budget).
"""

from __future__ import annotations

import struct

import flatbuffers
import pytest
import vectors
from flatbuffers.table import Table
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from payloads import shared_entries

from runner import decode
from runner.errors import DecodeError
from runner.protocol import (
    METHODS,
    ErrCode,
    HTTPReqCallReq,
    PrepareConfReq,
    vtable_entry,
)
from runner.testing import extra_info_resp, prepare_conf_req, req_call_req, resp_call_req

PREPARE_CONF_REQ = vectors.payload("prepare_conf_req")
REQ_CALL_REQ = vectors.payload("req_call_req")
EXTRA_INFO_RESULT_127 = vectors.payload("extra_info_resp_result")
EXTRA_INFO_NO_RESULT = vectors.payload("extra_info_resp_absent")


def _req(**overrides: object) -> bytes:
    fields: dict[str, object] = dict(
        id=5, token=77, method="GET", path="/hello", args=[], headers=[], src_ip=b"\x7f\x00\x00\x01"
    )
    fields.update(overrides)
    return req_call_req(**fields)  # type: ignore[arg-type]


def _has_field(payload: bytes, slot: int) -> bool:
    """Whether the root table of ``payload`` has field ``slot`` (read with the generic reader)."""
    root = flatbuffers.encode.Get(flatbuffers.packer.uoffset, payload, 0)
    return Table(bytearray(payload), root).Offset(vtable_entry(slot)) != 0


def _req_call_fully(payload: bytes) -> decode.ReqCall:
    """An HTTPReqCall with every part decoded (all but the id, token and method wait for first use)."""
    call = decode.req_call(payload)
    call.headers(), call.args(), call.path(), call.src_ip()
    return call


# --- PrepareConf ----------------------------------------------------------------


def test_prepare_conf_example_decodes_key_and_conf() -> None:
    conf = decode.prepare_conf(PREPARE_CONF_REQ)
    assert conf.key == "route#1#ext-plugin-pre-req#42"
    assert conf.conf == [("say", '{"body":"hi"}')]


def test_prepare_conf_keeps_order_and_duplicate_plugin_names() -> None:
    entries = [("b", "1"), ("a", "2"), ("b", "3")]
    assert decode.prepare_conf(prepare_conf_req(entries, "route#1#ext-plugin-pre-req#1")).conf == entries


def test_prepare_conf_without_conf_field_decodes_as_empty_list() -> None:
    payload = prepare_conf_req(None, "route#1#ext-plugin-pre-req#1")
    assert not _has_field(payload, PrepareConfReq.CONF)
    conf = decode.prepare_conf(payload)
    assert conf == decode.PrepareConf("route#1#ext-plugin-pre-req#1", [])


def test_prepare_conf_with_empty_conf_vector_decodes_as_empty_list() -> None:
    assert decode.prepare_conf(prepare_conf_req([], "k")).conf == []


# --- HTTPReqCall ----------------------------------------------------------------


def test_req_call_example_decodes_every_field() -> None:
    call = decode.req_call(REQ_CALL_REQ)
    assert (call.id, call.conf_token, call.method) == (0, 1, "GET")
    assert call.path() == "/hello"
    assert call.src_ip() == b"\x7f\x00\x00\x01"
    assert sorted(call.args()) == [("flag", ""), ("x", "1")]
    assert call.headers() == [("host", "localhost")]


def test_req_call_valueless_arg_reads_as_empty_string_next_to_empty_and_repeated_args() -> None:
    # ?xx=y&xx=z&y=&z as APISIX sends it: z has no value field.
    args = [("xx", "y"), ("xx", "z"), ("y", ""), ("z", None)]
    call = decode.req_call(_req(method="PUT", args=args))
    assert call.args() == [("xx", "y"), ("xx", "z"), ("y", ""), ("z", "")]


def test_req_call_repeated_headers_are_kept_in_order() -> None:
    headers = [("connection", "close"), ("host", "localhost"), ("x-req", "foo"), ("x-req", "bar"), ("x-resp", "cat")]
    assert decode.req_call(_req(headers=headers)).headers() == headers


def test_req_call_non_utf8_bytes_decode_losslessly() -> None:
    raw_path, raw_value, raw_arg = b"/caf\xe9/\xff", b"\x80\xfe latin-1 \xe9", b"\xc3\x28"
    call = decode.req_call(_req(path=raw_path, headers=[("x-raw", raw_value)], args=[(raw_arg, raw_arg)]))
    assert call.path().encode("utf-8", "surrogateescape") == raw_path
    assert call.headers()[0][1].encode("utf-8", "surrogateescape") == raw_value
    assert call.args()[0][0].encode("utf-8", "surrogateescape") == raw_arg


@pytest.mark.parametrize(
    "src_ip",
    [b"\x7f\x00\x00\x01", b"\xc0\xa8\x01\xfe", bytes(15) + b"\x01", bytes.fromhex("20010db8000000000000000000000001")],
    ids=["ipv4-loopback", "ipv4", "ipv6-loopback", "ipv6"],
)
def test_req_call_src_ip_bytes_pass_through_unchanged(src_ip: bytes) -> None:
    assert decode.req_call(_req(src_ip=src_ip)).src_ip() == src_ip


def test_req_call_get_is_sent_without_method_field_and_reads_as_get() -> None:
    payload = _req(method="GET")
    assert not _has_field(payload, HTTPReqCallReq.METHOD)
    assert decode.req_call(payload).method == "GET"


@pytest.mark.parametrize("method", METHODS)
def test_req_call_every_a6_method_is_decoded_by_name(method: str) -> None:
    assert decode.req_call(_req(method=method)).method == method


def test_req_call_method_outside_the_schema_reads_as_its_number() -> None:
    payload = shared_entries(scalars={HTTPReqCallReq.METHOD: 200}, vectors={})
    assert decode.req_call(payload).method == "METHOD_200"


def test_req_call_id_zero_is_absent_and_reads_as_zero() -> None:
    payload = _req(id=0)
    assert not _has_field(payload, HTTPReqCallReq.ID)
    assert decode.req_call(payload).id == 0


def test_req_call_carries_id_and_token_up_to_uint32_max() -> None:
    call = decode.req_call(_req(id=0xFFFFFFFF, token=0xFFFFFFFE))
    assert (call.id, call.conf_token) == (0xFFFFFFFF, 0xFFFFFFFE)


def test_req_call_empty_args_and_headers_decode_as_empty_lists() -> None:
    call = decode.req_call(_req(args=[], headers=[]))
    assert call.args() == call.headers() == []


def test_req_call_without_path_or_address_reads_as_root_and_no_address() -> None:
    call = decode.req_call(shared_entries(scalars={HTTPReqCallReq.ID: 3}, vectors={}))
    assert (call.path(), call.src_ip(), call.headers(), call.args()) == ("/", b"", [], [])


def test_req_call_parts_read_again_decode_the_same() -> None:
    call = decode.req_call(_req(headers=[("a", "1")], args=[("b", None)], path="/p"))
    for _ in range(3):
        assert (call.path(), call.headers(), call.args()) == ("/p", [("a", "1")], [("b", "")])


# --- HTTPRespCall ---------------------------------------------------------------


def test_resp_call_keeps_the_upstream_header_case_and_repeats() -> None:
    headers = [("Content-Type", "text/plain"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("X-Empty", "")]
    call = decode.resp_call(resp_call_req(id=9, token=3, status=502, headers=headers))
    assert call == decode.RespCall(id=9, conf_token=3, status=502, headers=headers)


def test_resp_call_id_zero_reads_as_zero() -> None:
    call = decode.resp_call(resp_call_req(id=0, token=3, status=200, headers=[]))
    assert (call.id, call.headers) == (0, [])


# --- ExtraInfo.Resp -------------------------------------------------------------


def test_extra_info_absent_result_reads_as_none() -> None:
    assert decode.extra_info(extra_info_resp(None)) is None
    assert decode.extra_info(EXTRA_INFO_NO_RESULT) is None


def test_extra_info_empty_result_reads_as_empty_bytes_not_none() -> None:
    assert decode.extra_info(extra_info_resp(b"")) == b""


def test_extra_info_result_bytes_are_returned_unchanged() -> None:
    body = bytes(range(256)) * 4
    assert decode.extra_info(extra_info_resp(body)) == body
    assert decode.extra_info(bytearray(extra_info_resp(body))) == body  # a big frame arrives in a bytearray
    assert decode.extra_info(EXTRA_INFO_RESULT_127) == b"127.0.0.1"


def test_every_message_decodes_the_same_from_a_bytearray() -> None:
    payload = _req(headers=[("h", "v")], args=[("a", None)], path="/p")
    from_bytes, from_array = _req_call_fully(payload), _req_call_fully(bytearray(payload))
    assert (from_array.path(), from_array.headers(), from_array.args()) == (
        from_bytes.path(),
        from_bytes.headers(),
        from_bytes.args(),
    )
    assert decode.prepare_conf(bytearray(PREPARE_CONF_REQ)) == decode.prepare_conf(PREPARE_CONF_REQ)
    resp = resp_call_req(id=1, token=2, status=200, headers=[("A", "b")])
    assert decode.resp_call(bytearray(resp)) == decode.resp_call(resp)


# --- garbage and truncation: a value or DecodeError, nothing else -----------------

DECODERS = {
    "prepare_conf": decode.prepare_conf,
    "req_call": _req_call_fully,
    "resp_call": decode.resp_call,
    "extra_info": decode.extra_info,
}

VALID = {
    "prepare_conf": [PREPARE_CONF_REQ, prepare_conf_req([("a", "1"), ("b", None)], "route#1#x#2")],
    "req_call": [REQ_CALL_REQ, _req(args=[("z", None), ("a", "1")], headers=[("x-req", "foo"), ("x-req", "bar")])],
    "resp_call": [resp_call_req(id=3, token=4, status=200, headers=[("Content-Type", "text/plain")])],
    "extra_info": [EXTRA_INFO_RESULT_127, EXTRA_INFO_NO_RESULT, extra_info_resp(b"")],
}


def _decodes_or_refuses(decoder: object, payload: bytes) -> None:
    try:
        decoder(payload)  # type: ignore[operator]
    except DecodeError as e:
        assert e.code == ErrCode.BAD_REQUEST


@pytest.mark.parametrize("name", list(DECODERS))
def test_zero_length_payload_is_refused(name: str) -> None:
    with pytest.raises(DecodeError):
        DECODERS[name](b"")


@pytest.mark.parametrize("name", list(DECODERS))
def test_payload_cut_at_every_offset_decodes_or_is_refused(name: str) -> None:
    for payload in VALID[name]:
        DECODERS[name](payload)
        for cut in range(len(payload)):
            _decodes_or_refuses(DECODERS[name], payload[:cut])


def _length_word(payload: bytes, slot: int) -> int:
    """Where the length word of the root table's vector or string in ``slot`` sits."""
    root = struct.unpack_from("<I", payload, 0)[0]
    vt = root - struct.unpack_from("<i", payload, root)[0]
    field = root + struct.unpack_from("<H", payload, vt + vtable_entry(slot))[0]
    return field + struct.unpack_from("<I", payload, field)[0]


# (decoder, payload, the slots of its vector and string fields)
_FORGEABLE = [
    (_req_call_fully, _req(args=[("a", "1")], headers=[("h", "v")], path="/p"), (1, 3, 4, 5)),
    (decode.prepare_conf, prepare_conf_req([("a", "1")], "key"), (0, 1)),
    (decode.resp_call, resp_call_req(id=1, token=2, status=200, headers=[("A", "b")]), (2,)),
    (decode.extra_info, extra_info_resp(b"body"), (0,)),
]


@pytest.mark.parametrize("forged", [0x7FFFFFFF, 0xFFFFFFFF, 0x40000000, 0x01000000])
def test_forged_huge_vector_lengths_are_refused(forged: int) -> None:
    for decoder, payload, slots in _FORGEABLE:
        for slot in slots:
            forged_payload = bytearray(payload)
            struct.pack_into("<I", forged_payload, _length_word(payload, slot), forged)
            with pytest.raises(DecodeError):
                decoder(bytes(forged_payload))


def test_text_entry_vtable_cut_off_by_the_end_of_the_payload_is_refused() -> None:
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
        decode.prepare_conf(payload)


def test_forged_string_length_inside_a_text_entry_is_refused() -> None:
    payload = bytearray(prepare_conf_req([("plugin", "value")], "k"))
    # Forge every 4-byte word that reads as the length of "plugin" or "value".
    hits = 0
    for pos in range(0, len(payload) - 4, 4):
        length = struct.unpack_from("<I", payload, pos)[0]
        if length in (5, 6) and payload[pos + 4 : pos + 4 + length] in (b"plugin", b"value"):
            forged = bytearray(payload)
            struct.pack_into("<I", forged, pos, 0xFFFFFFF0)
            with pytest.raises(DecodeError):
                decode.prepare_conf(bytes(forged))
            hits += 1
    assert hits == 2


def _mutate(base: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(base)
    for pos, value in edits:
        out[pos % len(out)] = value
    return bytes(out)


_garbage = st.one_of(
    st.binary(max_size=200),
    # Valid payloads with a few bytes overwritten reach deeper than pure noise.
    st.builds(
        _mutate,
        st.sampled_from([p for ps in VALID.values() for p in ps]),
        st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=6),
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_garbage)
def test_any_bytes_either_decode_or_are_refused(payload: bytes) -> None:
    for decoder in DECODERS.values():
        _decodes_or_refuses(decoder, payload)
