"""The Dispatcher without sockets: token lifetime with a fake clock, per-call decisions under concurrency."""

from __future__ import annotations

import threading

import pytest
from A6.Err.Resp import Resp as ErrResp
from helpers import StubCall, run_in_threads

from runner import Plugin
from runner.cache import ConfCache
from runner.dispatch import Dispatcher
from runner.errors import ErrCode
from runner.frame import FrameDecoder, encode
from runner.phases import Prepared
from runner.plugins import PluginRegistry
from runner.protocol import MessageType
from runner.testing import decode_req_call_reply, prepare_conf_req, req_call_req


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class StopIfAsked(Plugin):
    """Stops when the request carries ``x-stop``; both calls meet at a barrier mid-filter."""

    name = "stop_if_asked"
    barrier: threading.Barrier | None = None

    def filter(self, request, response):  # type: ignore[no-untyped-def]
        if "x-stop" in request.headers:
            self.stop()
        if self.barrier is not None:
            self.barrier.wait(timeout=10)
        request.headers["X-Seen"] = "1"


def _frame(data: bytes) -> tuple[int, bytes]:
    decoder = FrameDecoder()
    decoder.feed(data)
    frame = decoder.next_frame()
    assert frame is not None and decoder.pending == 0
    return frame


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def d(clock: Clock) -> Dispatcher:
    """A dispatcher with ``stop_if_asked`` whose tokens live 60 s on ``clock``."""
    registry = PluginRegistry()
    registry.register(StopIfAsked)
    return Dispatcher(registry, ConfCache[Prepared](60, clock=clock))


STOP_IF_ASKED: list[tuple[str, str | None]] = [("stop_if_asked", "")]


def _prepare(d: Dispatcher, conf: list[tuple[str, str | None]] = STOP_IF_ASKED) -> int:
    type_, payload = _frame(d.handle(MessageType.PREPARE_CONF, prepare_conf_req(conf, "route#1#x#1"), StubCall()))
    assert type_ == MessageType.PREPARE_CONF
    return int.from_bytes(payload[-4:], "little")


def _call(d: Dispatcher, token: int, headers: list[tuple[str, str | None]] = []) -> tuple[int, bytes]:  # noqa: B006
    payload = req_call_req(id=3, token=token, method="GET", path="/", args=[], headers=headers, src_ip=b"\x7f\0\0\1")
    return _frame(d.handle(MessageType.HTTP_REQ_CALL, payload, StubCall()))


def _err(frame: tuple[int, bytes]) -> int:
    assert frame[0] == MessageType.ERROR
    return int(ErrResp.GetRootAs(frame[1], 0).Code())


def test_expired_token_replies_conf_token_not_found(clock: Clock, d: Dispatcher) -> None:
    token = _prepare(d)
    clock.now += 61
    assert _err(_call(d, token)) == ErrCode.CONF_TOKEN_NOT_FOUND


def test_every_call_extends_the_token_life(clock: Clock, d: Dispatcher) -> None:
    token = _prepare(d)
    for _ in range(5):
        clock.now += 50
        assert _call(d, token)[0] == MessageType.HTTP_REQ_CALL
    clock.now += 61
    assert _err(_call(d, token)) == ErrCode.CONF_TOKEN_NOT_FOUND


def test_same_key_after_expiry_gets_a_new_live_token(clock: Clock, d: Dispatcher) -> None:
    first = _prepare(d)
    clock.now += 61
    second = _prepare(d)
    assert second != first
    assert _call(d, second)[0] == MessageType.HTTP_REQ_CALL


def test_reply_frames_never_have_an_empty_payload(d: Dispatcher) -> None:
    for code_frame in (d.handle(0, b"", StubCall()), d.handle(1, b"", StubCall()), _call(d, 1)):
        data = code_frame if isinstance(code_frame, bytes) else encode(*code_frame)
        assert int.from_bytes(data[1:4], "big") > 0


def test_stop_decision_belongs_to_each_call_on_a_shared_instance(d: Dispatcher) -> None:
    token = _prepare(d)
    StopIfAsked.barrier = threading.Barrier(2)
    results: dict[str, str] = {}
    try:

        def run(label: str, headers: list[tuple[str, str | None]]) -> None:
            type_, payload = _call(d, token, headers)
            results[label] = decode_req_call_reply(payload).action

        run_in_threads(run, [("stopper", [("x-stop", "1")]), ("passer", [])])
    finally:
        StopIfAsked.barrier = None
    assert results == {"stopper": "stop", "passer": "rewrite"}
