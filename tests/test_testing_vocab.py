"""The test kit's one vocabulary: both halves take either form and give the same reply."""

from __future__ import annotations

import json
from typing import Any

import pytest
from helpers import SUITE_PLUGINS

from runner.loader import load_plugins
from runner.testing import ApisixClient, run_filter, run_response_filter
from runner.testing.vocab import conf_pairs, ip_bytes, pairs

ECHO = load_plugins(SUITE_PLUGINS).get("echo")
CONF = {"greeting": "hi", "n": [1, 2]}

# The same call, supplied both ways: Python values and text vs JSON text, pairs and bytes.
AS_VALUES: dict[str, Any] = {
    "conf": CONF,
    "headers": {"X-Api-Key": "k", "Accept": ["a", "b"]},
    "args": {"q": "1"},
    "src_ip": "::1",
}
AS_WIRE: dict[str, Any] = {
    "conf": json.dumps(CONF),
    "headers": [("x-api-key", "k"), ("accept", "a"), ("accept", "b")],
    "args": [("q", "1")],
    "src_ip": b"\0" * 15 + b"\1",
}
SEEN = {
    "conf": CONF,
    "method": "GET",
    "path": "/p",
    "headers": [["x-api-key", "k"], ["accept", "a"], ["accept", "b"]],
    "args": [["q", "1"]],
    "src_ip": "::1",
}


@pytest.fixture(scope="module")
def apisix_runner_plugins() -> str:
    return str(SUITE_PLUGINS)


def test_conf_text_is_sent_as_is_and_other_values_as_json() -> None:
    assert conf_pairs({"a": '{"x": 1}', "b": {"x": 1}, "c": None}) == [
        ("a", '{"x": 1}'),
        ("b", '{"x": 1}'),
        ("c", None),
    ]
    assert conf_pairs([("a", [1])]) == [("a", "[1]")]


def test_headers_are_a_dict_with_repeated_names_as_lists_or_pairs() -> None:
    assert pairs({"A": ["1", "2"], "B": "3"}, lower=True) == [("a", "1"), ("a", "2"), ("b", "3")]
    assert pairs([("A", "1"), ("A", None)]) == [("A", "1"), ("A", None)]


def test_an_address_is_text_or_the_wire_bytes() -> None:
    assert ip_bytes("10.0.0.1") == ip_bytes(b"\x0a\0\0\x01")
    with pytest.raises(ValueError, match="4 or 16 bytes"):
        ip_bytes(b"\1\2\3")


@pytest.mark.parametrize("given", [AS_VALUES, AS_WIRE], ids=["values", "wire"])
def test_the_in_process_kit_takes_both_forms(given: dict[str, Any]) -> None:
    reply = run_filter(ECHO, path="/p", **given)
    assert json.loads(reply.body or b"") == SEEN


@pytest.mark.parametrize("given", [AS_VALUES, AS_WIRE], ids=["values", "wire"])
def test_the_socket_client_takes_both_forms(apisix: ApisixClient, given: dict[str, Any]) -> None:
    token = apisix.prepare_conf({"echo": given["conf"]}, key=f"route#{id(given)}#ext-plugin-pre-req#1")
    reply = apisix.http_req_call(token, path="/p", headers=given["headers"], args=given["args"], src_ip=given["src_ip"])
    assert json.loads(reply.body or b"") == SEEN


def test_both_halves_give_the_same_reply_for_the_same_call(apisix: ApisixClient) -> None:
    token = apisix.prepare_conf([("echo", AS_WIRE["conf"])], key="route#same#ext-plugin-pre-req#1")
    call = {k: AS_VALUES[k] for k in ("headers", "args", "src_ip")}
    assert apisix.http_req_call(token, path="/p", id=7, **call) == run_filter(ECHO, conf=CONF, path="/p", id=7, **call)
    upstream = {"Content-Type": "text/plain", "Set-Cookie": ["a=1", "b=2"]}
    resp_token = apisix.prepare_conf({"echo": None}, key="route#same#ext-plugin-post-resp#1")
    over_socket = apisix.http_resp_call(resp_token, id=8, headers=upstream)
    assert over_socket == run_response_filter(ECHO, id=8, headers=upstream)
    assert over_socket.headers[-1][0] == "X-Seen"
