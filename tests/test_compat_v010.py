"""The official runner's 0.1.0 API (``Base``): what a plugin sees, and what its response sends.

Run in-process with runner.testing on ``compat.adapt`` of classes written as
0.1.0 plugin files write them; docs/migration.md has what differs on purpose.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from compat_helpers import REFERENCE_REQUEST, legacy_module

from runner import Plugin, compat
from runner.errors import ErrCode
from runner.testing import run_filter

Base = legacy_module("apisix.runner.plugin.base").Base


def plugin(filter: Callable[[Any, Any, Any], None]) -> type[Plugin]:
    """A 0.1.0 plugin ``probe`` whose ``filter(self, request, response)`` is ``filter``."""

    class Probe(Base):
        def __init__(self) -> None:
            super().__init__(self.__class__.__name__)

        def filter(self, request: Any, response: Any) -> None:
            filter(self, request, response)

    return compat.adapt(Probe)


def echo(self: Any, request: Any, response: Any) -> None:
    fields = ("id", "method", "path", "src_ip", "headers", "args", "conf_token", "configs")
    response.body = json.dumps({field: getattr(request, field) for field in fields} | {"config": self.config})
    self.stop()


def test_request_is_plain_values_with_last_values_per_name_and_the_conf_as_config() -> None:
    out = run_filter(plugin(echo), conf={"k": "v"}, id=9, **REFERENCE_REQUEST | {"args": [("q", "1"), ("bare", None)]})
    assert json.loads(out.body or b"") == {
        "id": 9, "method": "GET", "path": "/hello", "src_ip": "127.0.0.1",
        "headers": {"host": "x", "x-a": "2"}, "args": {"q": "1", "bare": ""},
        "conf_token": 0, "configs": {}, "config": {"k": "v"},
    }  # fmt: skip


def test_src_ip_ipv6_is_written_in_full() -> None:
    out = run_filter(plugin(echo), src_ip="::1")
    assert json.loads(out.body or b"")["src_ip"] == "0000:0000:0000:0000:0000:0000:0000:0001"


def test_stop_without_a_status_answers_200() -> None:
    def filter(self: Any, request: Any, response: Any) -> None:
        response.body = "no status"
        self.stop()

    out = run_filter(plugin(filter))
    assert (out.action, out.status, out.headers, out.body) == ("stop", 200, [], b"no status")


def test_changing_only_the_request_sends_nothing() -> None:
    def filter(self: Any, request: Any, response: Any) -> None:
        request.headers["X-Ignored"] = "1"
        request.args = {"x": "1"}
        request.path = "/ignored"
        self.rewrite()

    assert run_filter(plugin(filter), **REFERENCE_REQUEST).action == "none"


def test_rewrite_sends_the_response_path_headers_and_args_that_differ_from_the_request() -> None:
    def filter(self: Any, request: Any, response: Any) -> None:
        response.path = "/moved"
        response.headers = {"host": "x", "x-a": "3", "X-New": "1"}
        response.args = {"q": "1", "page": 2}

    out = run_filter(plugin(filter), **REFERENCE_REQUEST)
    assert (out.action, out.path, out.headers, out.args) == (
        "rewrite", "/moved", [("x-a", "3"), ("X-New", "1")], [("page", "2")]
    )  # fmt: skip


def test_rewrite_without_a_path_leaves_the_path_alone() -> None:
    # (0.1.0 sent "/" as the path of every rewrite that did not set one.)
    out = run_filter(plugin(lambda self, request, response: response.headers.update({"X-New": "1"})), path="/keep")
    assert (out.action, out.path, out.headers) == ("rewrite", None, [("X-New", "1")])


def test_stop_sends_a_bytes_body_as_given() -> None:
    def filter(self: Any, request: Any, response: Any) -> None:
        response.body = b"\x00\xff"
        self.stop()

    assert run_filter(plugin(filter)).body == b"\x00\xff"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda response: setattr(response, "headers", [("X", "1")]), "response.headers must be a dict, not list"),
        (lambda response: setattr(response, "body", 42), "response.body must be str or bytes, not int"),
        (lambda response: setattr(response, "status_code", 700), "status_code must be an HTTP status"),
    ],
)
def test_a_stop_the_wire_cannot_carry_fails_the_call_closed(change: Callable[[Any], None], message: str) -> None:
    def filter(self: Any, request: Any, response: Any) -> None:
        change(response)
        self.stop()

    reply = run_filter(plugin(filter))
    assert reply.err == ErrCode.SERVICE_UNAVAILABLE
    assert message in str(reply.cause)


def test_stop_from_another_thread_fails_the_call_closed() -> None:
    def filter(self: Any, request: Any, response: Any) -> None:
        response.status_code = 401
        with ThreadPoolExecutor(1) as pool:
            pool.submit(self.stop).result()

    reply = run_filter(plugin(filter))
    assert reply.err == ErrCode.SERVICE_UNAVAILABLE
    assert "must be called from the thread running filter()" in str(reply.cause)


def test_the_action_reads_as_the_calls_own() -> None:
    seen: list[int] = []

    def filter(self: Any, request: Any, response: Any) -> None:
        seen.append(self.action)
        self.stop()
        seen.append(self.action)
        self.rewrite()

    assert run_filter(plugin(filter)).action == "none"
    assert seen == [2, 1]


def test_config_keeps_only_non_empty_dicts_and_name_is_what_init_passed() -> None:
    probe = Base("Probe")
    for value, kept in [({"a": 1}, {"a": 1}), ({}, {}), ([1], {}), ("s", {}), (None, {})]:
        probe.config = value
        assert probe.config == kept
    assert (probe.name, Base().name) == ("Probe", "")
