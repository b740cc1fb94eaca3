"""The benchmark's wire data: every frame the load generator and the reference server send.

This module is the single source of truth for the scenarios. For each one it
builds, with the plain ``flatbuffers`` Builder (no generated A6 code, so slot
numbers are spelled out as in docs/protocol.md §2):

* the PrepareConf request naming the scenario's plugin,
* the call APISIX would send (HTTPReqCall or HTTPRespCall) with a placeholder
  id and conf token that the load generator patches in place,
* what a correct final reply must contain (the ``.expect`` file the load
  generator validates against), and
* the reference server's fixed replies, which satisfy the same expectations.

``python bench/frames.py DIR`` (or ``write(DIR)``) writes the files the load
generator reads:

    <scenario>.prepare   PrepareConf.Req frame
    <scenario>.request   call frame (type 2 or 4)
    <scenario>.expect    validation rules, one ``key args...`` per line
    extra.var            ExtraInfo.Resp answering any Var question
    extra.reqbody        ExtraInfo.Resp carrying the 1 MiB request body
    extra.respbody       ExtraInfo.Resp carrying a small JSON response body
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import flatbuffers

PREPARE_CONF, HTTP_REQ_CALL, EXTRA_INFO, HTTP_RESP_CALL = 1, 2, 3, 4
ACTION_STOP, ACTION_REWRITE = 1, 2
INFO_VAR, INFO_REQ_BODY = 1, 2
METHOD_GET, METHOD_POST = 0, 2

Pairs = Sequence[tuple[str, str | None]]  # TextEntry vectors; a None value is left out

# Non-zero placeholders: a zero scalar equal to the default would be left out
# by the builder, and the load generator needs the fields present to patch them.
PLACEHOLDER_ID = 0xFFFFFFFF
PLACEHOLDER_TOKEN = 0xFFFFFFFF
REFERENCE_TOKEN = 7

VAR_VALUE = b"127.0.0.1"
REQ_BODY = bytes(range(256)) * 4096  # 1 MiB
RESP_BODY = b'{"message":"hello world","items":[1,2,3]}'

# What a client of a typical API sends (APISIX lowercases names: docs/protocol.md §2).
REQUEST_HEADERS = [
    ("host", "api.example.com"),
    ("user-agent", "curl/8.5.0"),
    ("accept", "application/json"),
    ("accept-encoding", "gzip, deflate, br"),
    ("x-request-id", "6f1c0d2e-9a4b-4c3e-8f21-7d5b9e0a1c33"),
    ("x-forwarded-for", "10.1.2.3"),
    ("authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9.c2lnbmF0dXJl"),
    ("connection", "keep-alive"),
]
REQUEST_ARGS = [("page", "2"), ("limit", "50")]
UPSTREAM_HEADERS = [
    ("Content-Type", "application/json"),
    ("Content-Length", str(len(RESP_BODY))),
    ("Server", "nginx"),
    ("Date", "Mon, 24 Nov 2025 16:00:00 GMT"),
    ("Cache-Control", "no-cache"),
    ("Connection", "keep-alive"),
]


def frame(rpc_type: int, payload: bytes) -> bytes:
    """One wire frame: type byte, 3-byte big-endian length, payload (docs/protocol.md §1)."""
    return bytes([rpc_type]) + len(payload).to_bytes(3, "big") + payload


def _text_entry(b: flatbuffers.Builder, name: str, value: str | None) -> int:
    n = b.CreateString(name)
    v = b.CreateString(value) if value is not None else None
    b.StartObject(2)
    b.PrependUOffsetTRelativeSlot(0, n, 0)
    if v is not None:
        b.PrependUOffsetTRelativeSlot(1, v, 0)
    return b.EndObject()


def _entries(b: flatbuffers.Builder, pairs: Pairs) -> int:
    offsets = [_text_entry(b, k, v) for k, v in pairs]
    b.StartVector(4, len(offsets), 4)
    for o in reversed(offsets):
        b.PrependUOffsetTRelative(o)
    return b.EndVector()


def _finish(b: flatbuffers.Builder, root: int) -> bytes:
    b.Finish(root)
    return bytes(b.Output())


def prepare_conf_req(conf: Pairs, key: str) -> bytes:
    b = flatbuffers.Builder(256)
    k = b.CreateString(key)
    cv = _entries(b, conf)
    b.StartObject(2)
    b.PrependUOffsetTRelativeSlot(1, k, 0)
    b.PrependUOffsetTRelativeSlot(0, cv, 0)
    return _finish(b, b.EndObject())


def prepare_conf_resp(token: int) -> bytes:
    b = flatbuffers.Builder(32)
    b.StartObject(1)
    b.PrependUint32Slot(0, token, 0)
    return _finish(b, b.EndObject())


def http_req_call_req(*, method: int, path: str, headers: Pairs, args: Pairs) -> bytes:
    b = flatbuffers.Builder(1024)
    src = b.CreateByteVector(bytes([127, 0, 0, 1]))
    p = b.CreateString(path)
    av = _entries(b, args)
    hv = _entries(b, headers)
    b.StartObject(7)
    b.PrependUint32Slot(6, PLACEHOLDER_TOKEN, 0)
    b.PrependUOffsetTRelativeSlot(5, hv, 0)
    b.PrependUOffsetTRelativeSlot(4, av, 0)
    b.PrependUOffsetTRelativeSlot(3, p, 0)
    b.PrependUint8Slot(2, method, 0)
    b.PrependUOffsetTRelativeSlot(1, src, 0)
    b.PrependUint32Slot(0, PLACEHOLDER_ID, 0)
    return _finish(b, b.EndObject())


def http_resp_call_req(*, status: int, headers: Pairs) -> bytes:
    b = flatbuffers.Builder(512)
    hv = _entries(b, headers)
    b.StartObject(4)
    b.PrependUint32Slot(3, PLACEHOLDER_TOKEN, 0)
    b.PrependUOffsetTRelativeSlot(2, hv, 0)
    b.PrependUint16Slot(1, status, 0)
    b.PrependUint32Slot(0, PLACEHOLDER_ID, 0)
    return _finish(b, b.EndObject())


def stop_resp(*, status: int, headers: Pairs, body: bytes) -> bytes:
    b = flatbuffers.Builder(256)
    hv = _entries(b, headers)
    bv = b.CreateByteVector(body)
    b.StartObject(3)
    b.PrependUOffsetTRelativeSlot(2, bv, 0)
    b.PrependUOffsetTRelativeSlot(1, hv, 0)
    b.PrependUint16Slot(0, status, 0)
    stop = b.EndObject()
    return _req_call_resp(b, ACTION_STOP, stop)


def rewrite_resp(*, path: str | None = None, headers: Pairs = (), args: Pairs = ()) -> bytes:
    b = flatbuffers.Builder(256)
    p = b.CreateString(path) if path is not None else None
    hv = _entries(b, headers) if headers else None
    av = _entries(b, args) if args else None
    b.StartObject(5)
    if av is not None:
        b.PrependUOffsetTRelativeSlot(2, av, 0)
    if hv is not None:
        b.PrependUOffsetTRelativeSlot(1, hv, 0)
    if p is not None:
        b.PrependUOffsetTRelativeSlot(0, p, 0)
    rewrite = b.EndObject()
    return _req_call_resp(b, ACTION_REWRITE, rewrite)


def _req_call_resp(b: flatbuffers.Builder, action_type: int, action: int) -> bytes:
    b.StartObject(3)
    b.PrependUOffsetTRelativeSlot(2, action, 0)
    b.PrependUint8Slot(1, action_type, 0)
    b.PrependUint32Slot(0, PLACEHOLDER_ID, 0)
    return _finish(b, b.EndObject())


def http_resp_call_resp(*, headers: Pairs) -> bytes:
    b = flatbuffers.Builder(512)
    hv = _entries(b, headers)
    b.StartObject(4)
    b.PrependUOffsetTRelativeSlot(2, hv, 0)
    b.PrependUint32Slot(0, PLACEHOLDER_ID, 0)
    return _finish(b, b.EndObject())


def extra_info_req(info_type: int, var_name: str | None = None) -> bytes:
    b = flatbuffers.Builder(64)
    if info_type == INFO_VAR:
        n = b.CreateString(var_name)
        b.StartObject(1)
        b.PrependUOffsetTRelativeSlot(0, n, 0)
    else:
        b.StartObject(0)
    info = b.EndObject()
    b.StartObject(2)
    b.PrependUOffsetTRelativeSlot(1, info, 0)
    b.PrependUint8Slot(0, info_type, 0)
    return _finish(b, b.EndObject())


def extra_info_resp(result: bytes) -> bytes:
    b = flatbuffers.Builder(len(result) + 64)
    r = b.CreateByteVector(result)
    b.StartObject(1)
    b.PrependUOffsetTRelativeSlot(0, r, 0)
    return _finish(b, b.EndObject())


def scalar_offset(payload: bytes, slot: int) -> int:
    """Offset, inside ``payload``, of scalar field ``slot`` of the root table.

    Used to patch ids and tokens in pre-built frames without FlatBuffers work
    per call. Raises if the field is absent (it was built as a non-zero value).
    """
    (table,) = struct.unpack_from("<I", payload, 0)
    (soffset,) = struct.unpack_from("<i", payload, table)
    vtable = table - soffset
    (vtable_len,) = struct.unpack_from("<H", payload, vtable)
    entry = 4 + 2 * slot
    field_off = struct.unpack_from("<H", payload, vtable + entry)[0] if entry < vtable_len else 0
    if not field_off:
        raise ValueError(f"slot {slot} is absent")
    return table + field_off


@dataclass(frozen=True)
class Scenario:
    """One benchmark scenario: the call, the plugin it runs, and what must come back."""

    name: str
    plugin: str
    request: bytes  # full frame
    reply: bytes  # the reference server's final reply, full frame
    questions: list[bytes] = field(default_factory=list)  # reference server's ExtraInfo frames
    expect: list[str] = field(default_factory=list)
    wait: float = 0.0  # seconds the plugin waits (on a backend); the reference server waits as long

    @property
    def prepare(self) -> bytes:
        conf = [(self.plugin, "{}")]
        return frame(PREPARE_CONF, prepare_conf_req(conf, f"route#1#ext-plugin-pre-req#{self.name}"))

    @property
    def request_id_offset(self) -> int:
        return 4 + scalar_offset(self.request[4:], 0)

    @property
    def reply_id_offset(self) -> int:
        return 4 + scalar_offset(self.reply[4:], 0)


def _req_call(method: int, path: str, headers: Pairs = REQUEST_HEADERS) -> bytes:
    return frame(HTTP_REQ_CALL, http_req_call_req(method=method, path=path, headers=headers, args=REQUEST_ARGS))


WAIT_S = 0.1  # what the *-wait plugins wait for, as a call to a backend would
_STOP_REPLY = frame(HTTP_REQ_CALL, stop_resp(status=403, headers=[("X-Bench", "stop")], body=b"denied"))
_STOP_EXPECT = ["reply 2", "action 1", "status 403", "header X-Bench stop", "body denied", "questions 0"]
_WAIT_REPLY = frame(HTTP_REQ_CALL, rewrite_resp(headers=[("X-Bench", "waited")]))
_WAIT_EXPECT = ["reply 2", "action 2", "header X-Bench waited", "questions 0"]

# The expectations mirror bench/plugins/*.py; the reference replies are built
# from the same values, so both servers are checked against one definition.
SCENARIOS = {
    s.name: s
    for s in [
        Scenario(
            name="stop",
            plugin="bench_stop",
            request=_req_call(METHOD_GET, "/bench/stop"),
            reply=_STOP_REPLY,
            expect=_STOP_EXPECT,
        ),
        # The same Stop from an ``async def filter`` that awaits nothing: the event loop's cost.
        Scenario(
            name="async-stop",
            plugin="bench_async_stop",
            request=_req_call(METHOD_GET, "/bench/stop"),
            reply=_STOP_REPLY,
            expect=_STOP_EXPECT,
        ),
        # A plugin waiting 0.1 s on a backend: awaited (no thread held) and, to compare, slept.
        Scenario(
            name="async-wait",
            plugin="bench_async_wait",
            request=_req_call(METHOD_GET, "/bench/wait"),
            reply=_WAIT_REPLY,
            expect=_WAIT_EXPECT,
            wait=WAIT_S,
        ),
        Scenario(
            name="sync-wait",
            plugin="bench_sync_wait",
            request=_req_call(METHOD_GET, "/bench/wait"),
            reply=_WAIT_REPLY,
            expect=_WAIT_EXPECT,
            wait=WAIT_S,
        ),
        Scenario(
            name="rewrite",
            plugin="bench_rewrite",
            request=_req_call(METHOD_GET, "/bench/rewrite"),
            reply=frame(
                HTTP_REQ_CALL,
                rewrite_resp(path="/bench/rewritten", headers=[("X-Bench", "rewrite")], args=[("bench", "1")]),
            ),
            expect=[
                "reply 2",
                "action 2",
                "path /bench/rewritten",
                "header X-Bench rewrite",
                "arg bench 1",
                "questions 0",
            ],
        ),
        Scenario(
            name="var",
            plugin="bench_var",
            request=_req_call(METHOD_GET, "/bench/var"),
            questions=[frame(EXTRA_INFO, extra_info_req(INFO_VAR, "remote_addr"))],
            reply=frame(HTTP_REQ_CALL, rewrite_resp(headers=[("X-Bench-Var", VAR_VALUE.decode())])),
            expect=["reply 2", "action 2", f"header X-Bench-Var {VAR_VALUE.decode()}", "questions 1"],
        ),
        Scenario(
            name="body",
            plugin="bench_body",
            request=_req_call(
                METHOD_POST,
                "/bench/body",
                REQUEST_HEADERS
                + [("content-type", "application/octet-stream"), ("content-length", str(len(REQ_BODY)))],
            ),
            questions=[frame(EXTRA_INFO, extra_info_req(INFO_REQ_BODY))],
            reply=frame(HTTP_REQ_CALL, rewrite_resp(headers=[("X-Bench-Body", str(len(REQ_BODY)))])),
            expect=["reply 2", "action 2", f"header X-Bench-Body {len(REQ_BODY)}", "questions 1"],
        ),
        Scenario(
            name="resp",
            plugin="bench_resp",
            request=frame(HTTP_RESP_CALL, http_resp_call_req(status=200, headers=UPSTREAM_HEADERS)),
            # A runner sends back the whole header list it wants the client to
            # see (docs/protocol.md §3.2), minus hop-by-hop and framing headers.
            reply=frame(
                HTTP_RESP_CALL,
                http_resp_call_resp(
                    headers=[h for h in UPSTREAM_HEADERS if h[0] not in ("Content-Length", "Connection")]
                    + [("X-Bench", "resp")]
                ),
            ),
            expect=["reply 4", "header X-Bench resp", "questions 0"],
        ),
    ]
}


def write(directory: str | Path) -> Path:
    """Write every scenario's files and the ExtraInfo answers into ``directory``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for s in SCENARIOS.values():
        (out / f"{s.name}.prepare").write_bytes(s.prepare)
        (out / f"{s.name}.request").write_bytes(s.request)
        (out / f"{s.name}.expect").write_text("\n".join(s.expect) + "\n")
    (out / "extra.var").write_bytes(frame(EXTRA_INFO, extra_info_resp(VAR_VALUE)))
    (out / "extra.reqbody").write_bytes(frame(EXTRA_INFO, extra_info_resp(REQ_BODY)))
    (out / "extra.respbody").write_bytes(frame(EXTRA_INFO, extra_info_resp(RESP_BODY)))
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} DIR")
    write(sys.argv[1])
