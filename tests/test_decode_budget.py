"""The decode budget: what a payload decodes to is bounded by its size, whatever its offsets.

Hostile payloads are hand-built with cells sharing one entry (``payloads``);
what APISIX sends is built with ``flatbuffers.Builder`` (``runner.testing``),
which, like APISIX's Lua builder, writes every entry and string once.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from A6.Err.Resp import Resp as ErrResp
from helpers import StubCall
from payloads import shared_entries

from runner import Plugin, decode
from runner.cache import ConfCache
from runner.dispatch import Dispatcher
from runner.errors import DecodeError
from runner.frame import MAX_PAYLOAD
from runner.phases import Prepared
from runner.plugins import PluginRegistry
from runner.protocol import ErrCode, HTTPReqCallReq, HTTPRespCallReq, MessageType, PrepareConfReq
from runner.testing import prepare_conf_req, req_call_req, resp_call_req

Pairs = Sequence[tuple[str, str | None]]


def _req(*, headers: Pairs = (), args: Pairs = ()) -> bytes:
    return req_call_req(id=5, token=77, method="GET", path="/", args=args, headers=headers, src_ip=b"\x7f\0\0\1")


# The four [TextEntry] vectors APISIX sends: (frame type, conf token slot, vector slot).
_VECTORS = {
    "HTTPRespCall.Req headers": (MessageType.HTTP_RESP_CALL, HTTPRespCallReq.CONF_TOKEN, HTTPRespCallReq.HEADERS),
    "PrepareConf.Req conf": (MessageType.PREPARE_CONF, None, PrepareConfReq.CONF),
    "HTTPReqCall.Req headers": (MessageType.HTTP_REQ_CALL, HTTPReqCallReq.CONF_TOKEN, HTTPReqCallReq.HEADERS),
    "HTTPReqCall.Req args": (MessageType.HTTP_REQ_CALL, HTTPReqCallReq.CONF_TOKEN, HTTPReqCallReq.ARGS),
}


def _amplified(what: str, count: int) -> tuple[int, bytes]:
    """A frame type and payload whose vector ``what`` has ``count`` cells sharing one entry (token 7)."""
    type_, token_slot, slot = _VECTORS[what]
    scalars = {} if token_slot is None else {token_slot: 7}
    return type_, shared_entries(scalars=scalars, vectors={slot: count})


def _decode_everything(type_: int, payload: bytes) -> None:
    if type_ == MessageType.PREPARE_CONF:
        decode.prepare_conf(payload)
    elif type_ == MessageType.HTTP_RESP_CALL:
        decode.resp_call(payload)
    else:
        call = decode.req_call(payload)
        call.headers(), call.args()


@pytest.mark.parametrize("what", list(_VECTORS))
def test_cells_sharing_one_entry_are_refused_naming_the_vector_its_size_and_the_budget(what: str) -> None:
    type_, payload = _amplified(what, 16_384)
    with pytest.raises(DecodeError) as refused:
        _decode_everything(type_, payload)
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
    payload = _req(args=args)
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
    return Dispatcher(registry, ConfCache[Prepared](60.0, tokens=lambda: 7))


@pytest.mark.parametrize("what", list(_VECTORS))
def test_an_amplified_payload_gets_bad_request_and_one_log_line(what: str, caplog: pytest.LogCaptureFixture) -> None:
    dispatcher = _dispatcher()
    token_reply = dispatcher.handle(
        MessageType.PREPARE_CONF, prepare_conf_req([("reads_everything", "")], "k"), StubCall()
    )
    assert token_reply[0] == MessageType.PREPARE_CONF
    type_, payload = _amplified(what, 16_384)
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        reply = dispatcher.handle(type_, payload, StubCall())
    assert reply[0] == MessageType.ERROR
    assert ErrResp.GetRootAs(reply[4:], 0).Code() == ErrCode.BAD_REQUEST
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert f"{what}: 16384 entries" in lines[0]


# Runs in a fresh interpreter (in tests/): this module's dispatcher with a token,
# then the frame read from a file; prints the reply and how far the peak RSS
# grew while handling it.
_MEASURE = """
import json, sys
from A6.Err.Resp import Resp
from helpers import StubCall
from test_decode_budget import _dispatcher, prepare_conf_req

def peak_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

dispatcher = _dispatcher()
dispatcher.handle(1, prepare_conf_req([("reads_everything", "")], "k"), StubCall())
with open(sys.argv[2], "rb") as f:
    payload = f.read()
before = peak_kib()
reply = dispatcher.handle(int(sys.argv[1]), payload, StubCall())
growth = peak_kib() - before
print(json.dumps({"growth_kib": growth, "type": reply[0], "code": Resp.GetRootAs(reply[4:], 0).Code()}))
"""


@pytest.mark.parametrize("what", list(_VECTORS))
def test_a_16_mib_amplified_payload_is_refused_with_little_memory(what: str, tmp_path: Path) -> None:
    # Four million cells sharing one 12-byte entry: 1.6 GiB of Python objects if decoded.
    type_, payload = _amplified(what, (MAX_PAYLOAD - 100) // 4)
    assert MAX_PAYLOAD - 100 < len(payload) <= MAX_PAYLOAD
    (tmp_path / "payload").write_bytes(payload)
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(int(type_)), str(tmp_path / "payload")],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent,
        timeout=120,
    )
    result = json.loads(out.stdout)
    assert (result["type"], result["code"]) == (MessageType.ERROR, ErrCode.BAD_REQUEST)
    assert result["growth_kib"] < 64 * 1024
