"""The wire's numbers agree with the code ``flatc`` generated from the schema (a6pluginprotos).

Each field is written with ``flatbuffers.Builder`` at the slot ``runner.protocol``
names and read back with the generated accessor. a6pluginprotos 0.2.1 predates
``Rewrite.resp_headers``/``body``, ``HTTPRespCall`` and ``ExtraInfo.RespBody``:
those come from ext-plugin.fbs v0.6.1 and are checked on the wire by the
encoder's and the runner's end-to-end tests.
"""

from __future__ import annotations

import importlib
from typing import Any

import flatbuffers
import pytest
from A6.Err.Code import Code
from A6.ExtraInfo.Info import Info
from A6.HTTPReqCall.Action import Action as GeneratedAction
from A6.Method import Method

from runner.protocol import (
    METHODS,
    Action,
    Err,
    ErrCode,
    ExtraInfoReq,
    ExtraInfoResp,
    HTTPReqCallReq,
    HTTPReqCallResp,
    InfoKind,
    PrepareConfReq,
    PrepareConfResp,
    Rewrite,
    Stop,
    TextEntry,
    Var,
    slot_count,
)


def test_methods_are_in_the_order_of_a6_method() -> None:
    assert [getattr(Method, name) for name in METHODS] == list(range(len(METHODS)))
    assert len(METHODS) == len([n for n in vars(Method) if n.isupper()])


def test_enums_match_the_generated_ones() -> None:
    assert {c.name: c.value for c in ErrCode} == {n: v for n, v in vars(Code).items() if n.isupper()}
    assert [Action.NONE, Action.STOP, Action.REWRITE] == [
        GeneratedAction.NONE,
        GeneratedAction.Stop,
        GeneratedAction.Rewrite,
    ]
    assert [InfoKind.VAR, InfoKind.REQ_BODY] == [Info.Var, Info.ReqBody]


# (generated module, our table)
_TABLES = [
    ("A6.TextEntry", TextEntry),
    ("A6.Err.Resp", Err),
    ("A6.PrepareConf.Req", PrepareConfReq),
    ("A6.PrepareConf.Resp", PrepareConfResp),
    ("A6.HTTPReqCall.Req", HTTPReqCallReq),
    ("A6.HTTPReqCall.Stop", Stop),
    ("A6.HTTPReqCall.Resp", HTTPReqCallResp),
    ("A6.ExtraInfo.Var", Var),
    ("A6.ExtraInfo.Req", ExtraInfoReq),
    ("A6.ExtraInfo.Resp", ExtraInfoResp),
]


class _Counting:
    def StartObject(self, slots: int) -> None:  # noqa: N802 (the Builder's name)
        self.slots = slots


@pytest.mark.parametrize(("module", "table"), _TABLES, ids=[m for m, _ in _TABLES])
def test_slot_counts_match_the_generated_start(module: str, table: type) -> None:
    builder = _Counting()
    importlib.import_module(module).Start(builder)
    assert slot_count(table) == builder.slots


def test_rewrite_has_the_two_slots_added_after_a6pluginprotos() -> None:
    builder = _Counting()
    importlib.import_module("A6.HTTPReqCall.Rewrite").Start(builder)
    assert (builder.slots, slot_count(Rewrite)) == (3, 5)
    assert (Rewrite.RESP_HEADERS, Rewrite.BODY) == (3, 4)


def _read(module: str, build: Any) -> Any:
    """Build one table with ``build(builder)`` (which returns its offset) and read it with the generated class."""
    b = flatbuffers.Builder(256)
    b.Finish(build(b))
    cls = getattr(importlib.import_module(module), module.rsplit(".", 1)[1])
    return cls.GetRootAs(bytes(b.Output()), 0)


def _scalar(slot: int, prepend: str, value: int) -> Any:
    def build(b: flatbuffers.Builder) -> int:
        b.StartObject(8)
        getattr(b, prepend)(slot, value, 0)
        return int(b.EndObject())

    return build


@pytest.mark.parametrize(
    ("module", "getter", "slot", "prepend", "value"),
    [
        ("A6.Err.Resp", "Code", Err.CODE, "PrependUint8Slot", 2),
        ("A6.PrepareConf.Resp", "ConfToken", PrepareConfResp.CONF_TOKEN, "PrependUint32Slot", 0xDEADBEEF),
        ("A6.HTTPReqCall.Req", "Id", HTTPReqCallReq.ID, "PrependUint32Slot", 0x01020304),
        ("A6.HTTPReqCall.Req", "Method", HTTPReqCallReq.METHOD, "PrependUint8Slot", 13),
        ("A6.HTTPReqCall.Req", "ConfToken", HTTPReqCallReq.CONF_TOKEN, "PrependUint32Slot", 0x0A0B0C0D),
        ("A6.HTTPReqCall.Stop", "Status", Stop.STATUS, "PrependUint16Slot", 403),
        ("A6.HTTPReqCall.Resp", "Id", HTTPReqCallResp.ID, "PrependUint32Slot", 0x11223344),
        ("A6.HTTPReqCall.Resp", "ActionType", HTTPReqCallResp.ACTION_TYPE, "PrependUint8Slot", 2),
        ("A6.ExtraInfo.Req", "InfoType", ExtraInfoReq.INFO_TYPE, "PrependUint8Slot", 1),
    ],
)
def test_scalar_slots_are_where_the_generated_code_reads_them(
    module: str, getter: str, slot: int, prepend: str, value: int
) -> None:
    assert getattr(_read(module, _scalar(slot, prepend, value)), getter)() == value


def _offset_field(slot: int, child: Any) -> Any:
    def build(b: flatbuffers.Builder) -> int:
        offset = child(b)
        b.StartObject(8)
        b.PrependUOffsetTRelativeSlot(slot, offset, 0)
        return int(b.EndObject())

    return build


def _string(b: flatbuffers.Builder) -> int:
    return int(b.CreateString(b"here"))


def _bytes(b: flatbuffers.Builder) -> int:
    return int(b.CreateByteVector(b"\x01\x02\x03"))


def _three_tables(b: flatbuffers.Builder) -> int:
    tables = []
    for _ in range(3):
        b.StartObject(0)
        tables.append(b.EndObject())
    b.StartVector(4, 3, 4)
    for t in tables:
        b.PrependUOffsetTRelative(t)
    return int(b.EndVector())


def _table(b: flatbuffers.Builder) -> int:
    b.StartObject(0)
    return int(b.EndObject())


@pytest.mark.parametrize(
    ("module", "read", "slot", "child", "expected"),
    [
        ("A6.TextEntry", "Name", TextEntry.NAME, _string, b"here"),
        ("A6.TextEntry", "Value", TextEntry.VALUE, _string, b"here"),
        ("A6.PrepareConf.Req", "Key", PrepareConfReq.KEY, _string, b"here"),
        ("A6.PrepareConf.Req", "ConfLength", PrepareConfReq.CONF, _three_tables, 3),
        ("A6.HTTPReqCall.Req", "SrcIpLength", HTTPReqCallReq.SRC_IP, _bytes, 3),
        ("A6.HTTPReqCall.Req", "Path", HTTPReqCallReq.PATH, _string, b"here"),
        ("A6.HTTPReqCall.Req", "ArgsLength", HTTPReqCallReq.ARGS, _three_tables, 3),
        ("A6.HTTPReqCall.Req", "HeadersLength", HTTPReqCallReq.HEADERS, _three_tables, 3),
        ("A6.HTTPReqCall.Stop", "HeadersLength", Stop.HEADERS, _three_tables, 3),
        ("A6.HTTPReqCall.Stop", "BodyLength", Stop.BODY, _bytes, 3),
        ("A6.HTTPReqCall.Rewrite", "Path", Rewrite.PATH, _string, b"here"),
        ("A6.HTTPReqCall.Rewrite", "HeadersLength", Rewrite.HEADERS, _three_tables, 3),
        ("A6.HTTPReqCall.Rewrite", "ArgsLength", Rewrite.ARGS, _three_tables, 3),
        ("A6.ExtraInfo.Var", "Name", Var.NAME, _string, b"here"),
        ("A6.ExtraInfo.Resp", "ResultLength", ExtraInfoResp.RESULT, _bytes, 3),
    ],
)
def test_offset_slots_are_where_the_generated_code_reads_them(
    module: str, read: str, slot: int, child: Any, expected: object
) -> None:
    assert getattr(_read(module, _offset_field(slot, child)), read)() == expected


@pytest.mark.parametrize(
    ("module", "read", "slot"),
    [("A6.HTTPReqCall.Resp", "Action", HTTPReqCallResp.ACTION), ("A6.ExtraInfo.Req", "Info", ExtraInfoReq.INFO)],
)
def test_union_slots_are_where_the_generated_code_reads_them(module: str, read: str, slot: int) -> None:
    assert getattr(_read(module, _offset_field(slot, _table)), read)() is not None
    assert getattr(_read(module, _offset_field(slot + 1, _table)), read)() is None
