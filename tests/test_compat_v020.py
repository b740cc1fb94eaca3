"""The official runner's 0.2.0 API (``PluginBase``): what a plugin's calls return, and what reaches APISIX.

Run in-process with runner.testing on ``compat.adapt`` of classes written as
0.2.0 plugin files write them. The return values are the official runner's
(its unit tests pinned them); see docs/migration.md for what differs on purpose.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from compat_helpers import REFERENCE_REQUEST, legacy_module

from runner import Plugin, compat
from runner.testing import CallFailed, run_filter

PluginBase = legacy_module("apisix.runner.plugin.core").PluginBase


def plugin(filter: Callable[[Any, Any, Any], None]) -> type[Plugin]:
    """A 0.2.0 plugin ``probe`` whose ``filter(conf, request, response)`` is ``filter``."""

    class Probe(PluginBase):
        def name(self) -> str:
            return "probe"

        def filter(self, conf: Any, request: Any, response: Any) -> None:
            filter(conf, request, response)

    return compat.adapt(Probe)


def test_request_setters_refuse_empty_values_and_bad_uris_and_methods() -> None:
    results: dict[str, object] = {}

    def filter(conf: Any, request: Any, response: Any) -> None:
        results.update(
            header_no_name=request.set_header("", "v"),
            header_no_value=request.set_header("x-k", ""),
            header=request.set_header("x-k", "v"),
            headers_empty=request.set_headers({}),
            arg_no_value=request.set_arg("a", ""),
            arg=request.set_arg("a", "1"),
            args_empty=request.set_args({}),
            uri_empty=request.set_uri(""),
            uri_relative=request.set_uri("a6/python"),
            uri=request.set_uri("/a6/python"),
            method_webdav=request.set_method("PROPFIND"),
            method=request.set_method("post"),
            id_zero=request.set_id(0),
            var_empty=request.set_var("v", ""),
            body_empty=request.set_body(""),
            remote_addr_empty=request.set_remote_addr(""),
            conf_token_zero=request.set_conf_token(0),
            config_empty=request.set_config("k", ""),
            configs_empty=request.set_configs({}),
            got_method=request.get_method(),
        )

    out = run_filter(plugin(filter))
    assert results == {
        "header_no_name": False, "header_no_value": False, "header": True, "headers_empty": False,
        "arg_no_value": False, "arg": True, "args_empty": False,
        "uri_empty": False, "uri_relative": False, "uri": True,
        "method_webdav": False, "method": True, "id_zero": False, "var_empty": False, "body_empty": False,
        "remote_addr_empty": False, "conf_token_zero": False, "config_empty": False, "configs_empty": False,
        "got_method": "post",  # stored as given; never sent
    }  # fmt: skip
    assert (out.action, out.path, out.headers, out.args) == ("rewrite", "/a6/python", [("x-k", "v")], [("a", "1")])


def test_response_setters_refuse_empty_values_and_statuses_outside_100_599() -> None:
    results: list[object] = []

    def filter(conf: Any, request: Any, response: Any) -> None:
        results.append(response.get_status_code())
        for code in (0, 99, 600, 700, "201", True):
            results.append(response.set_status_code(code))
        results.extend([response.set_header("X", ""), response.set_headers({}), response.set_body("")])
        results.append(response.changed())

    out = run_filter(plugin(filter))
    assert results == [200, False, False, False, False, False, False, False, False, False, False]
    assert out.action == "none"  # nothing was accepted, so the response did not change


@pytest.mark.parametrize("code", [100, 599])
def test_a_status_in_range_is_accepted_and_stops(code: int) -> None:
    assert run_filter(plugin(lambda conf, request, response: response.set_status_code(code))).status == code


def test_a_header_alone_stops_with_status_200_and_no_body() -> None:
    out = run_filter(plugin(lambda conf, request, response: response.set_header("X-Only", "1")))
    assert (out.action, out.status, out.headers, out.body) == ("stop", 200, [("X-Only", "1")], None)


def test_a_stop_sends_no_request_changes() -> None:
    def filter(conf: Any, request: Any, response: Any) -> None:
        request.set_header("X-Up", "1")
        response.set_body("denied")

    out = run_filter(plugin(filter))
    assert (out.action, out.headers, out.body) == ("stop", [], b"denied")


def test_get_var_and_get_body_decode_each_byte_as_one_character_and_ask_once_per_call() -> None:
    seen: list[str] = []

    def filter(conf: Any, request: Any, response: Any) -> None:
        seen.extend([request.get_var("host"), request.get_var("host"), request.get_body(), request.get_body()])

    body = bytes(range(256))
    out = run_filter(plugin(filter), vars={"host": "café"}, body=body)
    assert seen[:2] == ["cafÃ©", "cafÃ©"] and seen[0].encode("latin-1") == "café".encode()
    assert seen[2] == seen[3] and seen[2].encode("latin-1") == body
    assert out.asked == [("var", "host"), ("req_body", "")]


def test_get_var_and_get_body_give_empty_strings_for_nothing_and_what_set_var_set_body_seeded() -> None:
    seen: list[str] = []

    def filter(conf: Any, request: Any, response: Any) -> None:
        seen.extend([request.get_var("missing"), request.get_body()])
        request.set_var("route_id", "r1")
        request.set_body("seeded")
        seen.extend([request.get_var("route_id"), request.get_body()])

    out = run_filter(plugin(filter))
    assert seen == ["", "", "r1", "seeded"]
    assert out.asked == [("var", "missing"), ("req_body", "")] and out.action == "none"  # seeds are never sent


def test_get_method_names_every_method_and_get_remote_addr_writes_ipv6_in_full() -> None:
    seen: list[str] = []
    probe = plugin(lambda conf, request, response: seen.extend([request.get_method(), request.get_remote_addr()]))
    run_filter(probe, method="PROPFIND", src_ip="::1")
    run_filter(probe, method="TRACE", src_ip="10.0.0.1")
    assert seen == ["PROPFIND", "0000:0000:0000:0000:0000:0000:0000:0001", "TRACE", "10.0.0.1"]


def test_headers_and_args_are_dicts_of_last_values_and_get_header_is_case_sensitive() -> None:
    seen: list[object] = []

    def filter(conf: Any, request: Any, response: Any) -> None:
        seen.extend([request.get_headers(), request.get_header("x-a"), request.get_header("X-A"), request.get_args()])

    run_filter(plugin(filter), headers=REFERENCE_REQUEST["headers"], args=[("q", "1"), ("flag", None)])
    assert seen == [{"host": "x", "x-a": "2"}, "2", None, {"q": "1", "flag": ""}]


def test_writing_back_unchanged_headers_sends_nothing_so_repeated_headers_stay() -> None:
    def filter(conf: Any, request: Any, response: Any) -> None:
        request.set_headers(dict(request.get_headers()))
        request.set_args(dict(request.get_args()))
        request.set_uri(request.get_uri())

    assert run_filter(plugin(filter), **REFERENCE_REQUEST).action == "none"


def test_changing_the_live_dict_sends_the_change_and_removing_a_key_sends_nothing() -> None:
    # The official runner sent the dict as header sets, so a removed key stayed upstream.
    def filter(conf: Any, request: Any, response: Any) -> None:
        headers = request.get_headers()
        headers["x-a"] = "3"
        del headers["host"]

    out = run_filter(plugin(filter), **REFERENCE_REQUEST)
    assert (out.action, out.headers) == ("rewrite", [("x-a", "3")])


@pytest.mark.parametrize("body", [b"\x00\xff binary", "text é"])
def test_a_body_of_bytes_or_text_is_sent_as_given(body: bytes | str) -> None:
    out = run_filter(plugin(lambda conf, request, response: response.set_body(body)))
    assert out.body == (body if isinstance(body, bytes) else body.encode())


def test_a_body_that_is_neither_text_nor_bytes_fails_the_call_closed() -> None:
    with pytest.raises(CallFailed, match="the response body must be str or bytes, not int"):
        run_filter(plugin(lambda conf, request, response: response.set_body(123))).raise_for_err()


def test_header_values_that_are_not_strings_are_sent_as_text() -> None:
    # (The official runner could not serialise them and sent no reply.)
    out = run_filter(plugin(lambda conf, request, response: response.set_header("X-Count", 3)))
    assert out.headers == [("X-Count", "3")]


def test_the_defaults_of_plugin_base_return_none_and_change_nothing() -> None:
    base = PluginBase()
    assert (base.name(), base.config("c"), base.filter(None, None, None)) == (None, None, None)

    class Quiet(PluginBase):
        def name(self) -> str:
            return "quiet"

    assert run_filter(compat.adapt(Quiet), **REFERENCE_REQUEST).action == "none"


def test_setters_take_the_official_runners_keywords() -> None:
    def by_keyword(conf: Any, request: Any, response: Any) -> None:
        assert request.set_headers(headers={"x-a": "1"}) and request.set_args(args={"q": "2"})
        assert request.set_remote_addr(remote_addr="10.0.0.1") and request.set_body(body="up")
        assert request.set_id(id=5) and request.set_conf_token(conf_token=6)
        assert response.set_headers(headers={"x-b": "3"}) and response.set_body(body="down")

    out = run_filter(plugin(by_keyword))
    assert out.err is None, out.reason
    assert (out.action, out.body, out.headers) == ("stop", b"down", [("x-b", "3")])
