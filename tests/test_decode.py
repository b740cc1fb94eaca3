"""Decoding what APISIX sends: every field, garbage and truncation, and the decode budget.

Inputs are built with ``flatbuffers.Builder`` (``runner.testing``'s encoders,
which write what APISIX's Lua builder writes: nothing shared), taken from the
byte-level examples in ``vectors``, or hand-built with shared entries
(``payloads``) where a test needs bytes no builder writes.
"""

from __future__ import annotations

import json
import logging
import struct
import subprocess
import sys
from pathlib import Path

import flatbuffers
import pytest
import vectors
from A6.Err.Resp import Resp as ErrResp
from flatbuffers.table import Table
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from payloads import shared_entries

from runner import Plugin, decode
from runner.cache import ConfCache
from runner.dispatch import Dispatcher, Prepared
from runner.errors import DecodeError
from runner.frame import MAX_PAYLOAD
from runner.plugins import PluginRegistry
from runner.protocol import (
    METHODS,
    ErrCode,
    HTTPReqCallReq,
    HTTPRespCallReq,
    MessageType,
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
    call.headers(), call.args(), call.path, call.src_ip
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
    assert call.path == "/hello"
    assert call.src_ip == b"\x7f\x00\x00\x01"
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
    assert call.path.encode("utf-8", "surrogateescape") == raw_path
    assert call.headers()[0][1].encode("utf-8", "surrogateescape") == raw_value
    assert call.args()[0][0].encode("utf-8", "surrogateescape") == raw_arg


@pytest.mark.parametrize(
    "src_ip",
    [b"\x7f\x00\x00\x01", b"\xc0\xa8\x01\xfe", bytes(15) + b"\x01", bytes.fromhex("20010db8000000000000000000000001")],
    ids=["ipv4-loopback", "ipv4", "ipv6-loopback", "ipv6"],
)
def test_req_call_src_ip_bytes_pass_through_unchanged(src_ip: bytes) -> None:
    assert decode.req_call(_req(src_ip=src_ip)).src_ip == src_ip


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
    assert (call.path, call.src_ip, call.headers(), call.args()) == ("/", b"", [], [])


def test_req_call_parts_read_again_decode_the_same() -> None:
    call = decode.req_call(_req(headers=[("a", "1")], args=[("b", None)], path="/p"))
    for _ in range(3):
        assert (call.path, call.headers(), call.args()) == ("/p", [("a", "1")], [("b", "")])


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
    assert (from_array.path, from_array.headers(), from_array.args()) == (
        from_bytes.path,
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


# --- the decode budget: linear in the payload, whatever its offsets ----------------

# One root table per message, its [TextEntry] field all cells sharing one entry.
_AMPLIFIED = {
    "HTTPRespCall.Req headers": (decode.resp_call, {HTTPRespCallReq.ID: 1}, HTTPRespCallReq.HEADERS),
    "PrepareConf.Req conf": (decode.prepare_conf, {}, PrepareConfReq.CONF),
    "HTTPReqCall.Req headers": (lambda p: decode.req_call(p).headers(), {HTTPReqCallReq.ID: 1}, HTTPReqCallReq.HEADERS),
    "HTTPReqCall.Req args": (lambda p: decode.req_call(p).args(), {HTTPReqCallReq.ID: 1}, HTTPReqCallReq.ARGS),
}


@pytest.mark.parametrize("what", list(_AMPLIFIED))
def test_cells_sharing_one_entry_are_refused_naming_the_vector_its_size_and_the_budget(what: str) -> None:
    read, scalars, slot = _AMPLIFIED[what]
    payload = shared_entries(scalars=scalars, vectors={slot: 16_384})
    with pytest.raises(DecodeError) as refused:
        read(payload)
    message = str(refused.value)
    assert message.startswith(f"{what}: 16384 entries")
    assert f"payload's {len(payload)}" in message


@pytest.mark.parametrize("value", [b"y", None, b""], ids=["value", "no-value", "empty-value"])
def test_shared_entries_are_decoded_up_to_the_budget_exactly_and_refused_one_byte_past_it(
    value: bytes | None,
) -> None:
    # 1000 cells sharing one 3-byte name: each decoded entry costs ENTRY_COST plus its strings' bytes.
    count = 1000
    cost = count * (decode.ENTRY_COST + 3 + len(value or b""))
    at_limit = shared_entries(scalars={}, vectors={PrepareConfReq.CONF: count}, name=b"abc", value=value, size=cost)
    assert decode.prepare_conf(at_limit).conf == [("abc", (value or b"").decode())] * count
    with pytest.raises(DecodeError, match="PrepareConf.Req conf: 1000 entries"):
        decode.prepare_conf(at_limit[:-1])  # the same payload, one (padding) byte shorter


def test_a_long_string_shared_by_many_entries_is_refused_before_it_is_decoded_again() -> None:
    # Few cells (their count fits the budget), one long value: the second copy is over.
    payload = shared_entries(scalars={}, vectors={HTTPRespCallReq.HEADERS: 10}, value=b"v" * 100_000)
    with pytest.raises(DecodeError, match="HTTPRespCall.Req headers: 10 entries"):
        decode.resp_call(payload)


def test_the_parts_of_an_http_req_call_share_one_budget_and_a_part_read_again_costs_nothing() -> None:
    count = 1000
    cost = count * (decode.ENTRY_COST + 2)  # per vector: entries of "x" = "y"
    slots = {HTTPReqCallReq.HEADERS: count, HTTPReqCallReq.ARGS: count}
    payload = shared_entries(scalars={HTTPReqCallReq.ID: 1}, vectors=slots, size=cost + cost // 2)
    call = decode.req_call(payload)
    assert call.headers() == call.headers() == [("x", "y")] * count
    with pytest.raises(DecodeError, match="HTTPReqCall.Req args: 1000 entries"):
        call.args()  # headers and args each fit the budget, but not both


# What APISIX's builder writes shares nothing, so it always fits the budget.


def _valueless_args(count: int) -> list[tuple[str, str | None]]:
    return [(f"{i % 4096:03x}", None) for i in range(count)]


def test_the_densest_entries_a_builder_writes_decode_and_sit_at_the_budget() -> None:
    # A valueless arg with a 3-byte name is the smallest unshared entry per byte:
    # a 4-byte cell, an 8-byte table and an 8-byte string, charged ENTRY_COST + 3.
    count = 20_000
    args = _valueless_args(count)
    payload = _req(args=args, path="/", src_ip=b"\x7f\x00\x00\x01")
    assert decode.req_call(payload).args() == [(n, "") for n, _ in args]
    assert count * (decode.ENTRY_COST + 3 + 1) > len(payload)  # one more budget byte per entry would refuse it


@pytest.mark.parametrize(
    "headers",
    [
        [(f"h{i}", "") for i in range(5000)],  # empty values
        [(f"x-{i}", "v" * 40_000) for i in range(40)],  # long values
        [("a", "b")] * 5000,  # many tiny, repeated headers (still written once each)
        [(f"{i:x}", None) for i in range(5000)],  # valueless
    ],
    ids=["empty-values", "long-values", "tiny", "valueless"],
)
def test_builder_written_headers_always_fit_the_budget(headers: list[tuple[str, str | None]]) -> None:
    expected = [(n, v or "") for n, v in headers]
    assert decode.resp_call(resp_call_req(id=1, token=2, status=200, headers=headers)).headers == expected
    assert decode.req_call(_req(headers=headers, args=headers)).headers() == expected
    assert decode.prepare_conf(prepare_conf_req(headers, "k" * 1000)).conf == expected


# Through the dispatcher: BAD_REQUEST and one log line.


class _ReadsEverything(Plugin):
    name = "reads_everything"

    def filter(self, request, response):  # type: ignore[no-untyped-def]
        list(request.headers), list(request.args)


def _dispatcher() -> Dispatcher:
    registry = PluginRegistry()
    registry.register(_ReadsEverything)
    return Dispatcher(registry, ConfCache[Prepared](60.0, first_token=7))


def _no_exchange(question: bytes) -> bytes:
    raise AssertionError("no ExtraInfo expected")


_AMPLIFIED_FRAMES = {
    "HTTPRespCall.Req headers": (MessageType.HTTP_RESP_CALL, HTTPRespCallReq.CONF_TOKEN, HTTPRespCallReq.HEADERS),
    "PrepareConf.Req conf": (MessageType.PREPARE_CONF, None, PrepareConfReq.CONF),
    "HTTPReqCall.Req headers": (MessageType.HTTP_REQ_CALL, HTTPReqCallReq.CONF_TOKEN, HTTPReqCallReq.HEADERS),
    "HTTPReqCall.Req args": (MessageType.HTTP_REQ_CALL, HTTPReqCallReq.CONF_TOKEN, HTTPReqCallReq.ARGS),
}


def _amplified_frame(what: str, count: int) -> tuple[int, bytes]:
    type_, token_slot, slot = _AMPLIFIED_FRAMES[what]
    scalars = {} if token_slot is None else {token_slot: 7}
    return type_, shared_entries(scalars=scalars, vectors={slot: count})


@pytest.mark.parametrize("what", list(_AMPLIFIED_FRAMES))
def test_an_amplified_payload_gets_bad_request_and_one_log_line(what: str, caplog: pytest.LogCaptureFixture) -> None:
    dispatcher = _dispatcher()
    token_reply = dispatcher.handle(
        MessageType.PREPARE_CONF, prepare_conf_req([("reads_everything", "")], "k"), _no_exchange
    )
    assert token_reply[0] == MessageType.PREPARE_CONF
    type_, payload = _amplified_frame(what, 16_384)
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        reply = dispatcher.handle(type_, payload, _no_exchange)
    assert reply[0] == MessageType.ERROR
    assert ErrResp.GetRootAs(reply[4:], 0).Code() == ErrCode.BAD_REQUEST
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert f"{what}: 16384 entries" in lines[0]


# Runs in a fresh interpreter: the dispatcher with one plugin reading every header
# and arg, a token for it, then the frame read from a file; prints the reply and
# how far the peak RSS grew while handling it.
_MEASURE = """
import json, sys
from A6.Err.Resp import Resp
from runner import Plugin
from runner.cache import ConfCache
from runner.dispatch import Dispatcher
from runner.plugins import PluginRegistry
from runner.testing import prepare_conf_req

class ReadsEverything(Plugin):
    name = "reads_everything"

    def filter(self, request, response):
        list(request.headers), list(request.args)

def kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

def no_exchange(question):
    raise AssertionError("no ExtraInfo expected")

registry = PluginRegistry()
registry.register(ReadsEverything)
dispatcher = Dispatcher(registry, ConfCache(60.0, first_token=7))
dispatcher.handle(1, prepare_conf_req([("reads_everything", "")], "k"), no_exchange)
type_, path = int(sys.argv[1]), sys.argv[2]
with open(path, "rb") as f:
    payload = f.read()
before = kib("VmHWM")
reply = dispatcher.handle(type_, payload, no_exchange)
growth = kib("VmHWM") - before
print(json.dumps({"growth_kib": growth, "type": reply[0], "code": Resp.GetRootAs(reply[4:], 0).Code()}))
"""


@pytest.mark.parametrize("what", list(_AMPLIFIED_FRAMES))
def test_a_16_mib_amplified_payload_is_refused_with_little_memory(what: str, tmp_path: Path) -> None:
    # Four million cells sharing one 12-byte entry: 1.6 GiB of Python objects if decoded.
    type_, payload = _amplified_frame(what, (MAX_PAYLOAD - 100) // 4)
    assert MAX_PAYLOAD - 100 < len(payload) <= MAX_PAYLOAD
    (tmp_path / "payload").write_bytes(payload)
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(int(type_)), str(tmp_path / "payload")],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent.parent,
        timeout=120,
    )
    result = json.loads(out.stdout)
    assert (result["type"], result["code"]) == (MessageType.ERROR, ErrCode.BAD_REQUEST)
    assert result["growth_kib"] < 64 * 1024
