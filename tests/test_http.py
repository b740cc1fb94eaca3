"""The plugin-facing objects: Headers, Args, Request, Response (style.md §4 items 11)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from conftest import run_in_threads

from runner.http import Args, Headers, InfoKind, MultiDict, Request, Response


class Asker:
    """A fake ``ask``: records every ExtraInfo question and answers from a table."""

    def __init__(self, answers: dict[tuple[InfoKind, str], bytes | None] | None = None) -> None:
        self.answers = answers or {}
        self.calls: list[tuple[InfoKind, str]] = []

    def __call__(self, kind: InfoKind, name: str = "") -> bytes | None:
        self.calls.append((kind, name))
        return self.answers.get((kind, name))


# =============================================================================
# Headers
# =============================================================================


def test_headers_lookup_ignores_case() -> None:
    h = Headers([("Content-Type", "text/plain")])
    assert h["content-type"] == "text/plain"
    assert h.get("CONTENT-TYPE") == "text/plain"
    assert "content-TYPE" in h
    assert h.getlist("Content-type") == ["text/plain"]


def test_headers_keep_the_case_they_were_given() -> None:
    h = Headers([("Content-Type", "a"), ("x-lower", "b")])
    h.add("X-Added", "c")
    assert h.keys() == ["Content-Type", "x-lower", "X-Added"]
    assert h.items() == [("Content-Type", "a"), ("x-lower", "b"), ("X-Added", "c")]


def test_headers_iteration_yields_name_value_pairs_in_order() -> None:
    pairs = [("X-Req", "foo"), ("Host", "h"), ("x-req", "bar")]
    h = Headers(pairs)
    assert list(h) == pairs
    assert len(h) == 3


def test_headers_getlist_collects_values_of_differently_cased_names() -> None:
    h = Headers([("X-Req", "foo"), ("Host", "h"), ("x-req", "bar")])
    assert h.getlist("X-REQ") == ["foo", "bar"]
    assert h["x-req"] == "foo"  # the first value
    assert h.getlist("missing") == []


def test_headers_get_returns_default_and_indexing_raises_key_error_when_absent() -> None:
    h = Headers()
    assert h.get("x") is None
    assert h.get("x", "fallback") == "fallback"
    with pytest.raises(KeyError):
        h["x"]


def test_headers_add_appends_another_value() -> None:
    h = Headers([("Set-Cookie", "a=1")])
    h.add("set-cookie", "b=2")
    assert h.getlist("Set-Cookie") == ["a=1", "b=2"]


def test_headers_set_replaces_every_value_at_the_first_position() -> None:
    h = Headers([("A", "1"), ("X-Req", "foo"), ("B", "2"), ("x-req", "bar")])
    h.set("X-REQ", "new")
    assert h.items() == [("A", "1"), ("X-REQ", "new"), ("B", "2")]


def test_headers_setitem_is_set() -> None:
    h = Headers([("X-Req", "foo"), ("B", "2"), ("x-req", "bar")])
    h["x-req"] = "new"
    assert h.items() == [("x-req", "new"), ("B", "2")]


def test_headers_set_of_a_new_name_appends_it() -> None:
    h = Headers([("A", "1")])
    h["B"] = "2"
    assert h.items() == [("A", "1"), ("B", "2")]


def test_headers_setlist_puts_all_values_at_the_first_position() -> None:
    h = Headers([("A", "1"), ("Via", "x"), ("B", "2"), ("via", "y")])
    h.setlist("VIA", ["p", "q"])
    assert h.items() == [("A", "1"), ("VIA", "p"), ("VIA", "q"), ("B", "2")]


def test_headers_setlist_with_no_values_removes_the_name() -> None:
    h = Headers([("A", "1"), ("Via", "x")])
    h.setlist("via", [])
    assert h.items() == [("A", "1")]


def test_headers_remove_drops_every_value_and_ignores_absent_names() -> None:
    h = Headers([("X-Req", "foo"), ("B", "2"), ("x-req", "bar")])
    h.remove("X-REQ")
    assert h.items() == [("B", "2")]
    h.remove("never-there")
    assert h.items() == [("B", "2")]


def test_headers_del_drops_every_value() -> None:
    h = Headers([("X-Req", "foo"), ("B", "2"), ("x-req", "bar")])
    del h["x-REQ"]
    assert "X-Req" not in h
    assert h.items() == [("B", "2")]


def test_headers_pop_returns_the_first_value_and_removes_all() -> None:
    h = Headers([("X-Req", "foo"), ("x-req", "bar")])
    assert h.pop("X-REQ") == "foo"
    assert "x-req" not in h
    assert h.pop("x-req") is None
    assert h.pop("x-req", "default") == "default"


def test_headers_contains_is_false_for_non_strings() -> None:
    h = Headers([("1", "one")])
    assert 1 not in h
    assert None not in h


def test_headers_from_a_dict_keep_its_order() -> None:
    h = Headers({"B": "2", "A": "1"})
    assert h.items() == [("B", "2"), ("A", "1")]


def test_headers_non_string_values_are_converted_with_str() -> None:
    h = Headers({"X-Int": 5})
    h.add("X-Float", 1.5)
    h["X-Bool"] = True
    h.setlist("X-List", [1, 2])
    assert h.items() == [("X-Int", "5"), ("X-Float", "1.5"), ("X-Bool", "True"), ("X-List", "1"), ("X-List", "2")]


def test_headers_copy_is_independent() -> None:
    h = Headers([("A", "1")])
    c = h.copy()
    c.add("B", "2")
    assert h.items() == [("A", "1")]
    assert c.items() == [("A", "1"), ("B", "2")]


BAD = ["\r", "\n", "\0", "a\r\nInjected: yes", "tail\n"]

# Every way a header name or value can get in.
PATHS: dict[str, Callable[[str, str], object]] = {
    "constructor-pairs": lambda n, v: Headers([(n, v)]),
    "constructor-dict": lambda n, v: Headers({n: v}),
    "add": lambda n, v: Headers().add(n, v),
    "set": lambda n, v: Headers().set(n, v),
    "setitem": lambda n, v: Headers().__setitem__(n, v),
    "setlist": lambda n, v: Headers().setlist(n, ["ok", v]),
    "extend": lambda n, v: Headers().extend([(n, v)]),
    "request-headers-assignment": lambda n, v: setattr(Request(), "headers", {n: v}),
    "response-headers-assignment": lambda n, v: setattr(Response(), "headers", [(n, v)]),
    "args-add": lambda n, v: Args().add(n, v),
}


@pytest.mark.parametrize("bad", BAD, ids=repr)
@pytest.mark.parametrize("path", list(PATHS))
def test_cr_lf_nul_in_a_value_are_refused_on_every_path(path: str, bad: str) -> None:
    with pytest.raises(ValueError):
        PATHS[path]("X-Ok", f"v{bad}")


@pytest.mark.parametrize("bad", BAD, ids=repr)
@pytest.mark.parametrize("path", list(PATHS))
def test_cr_lf_nul_in_a_name_are_refused_on_every_path(path: str, bad: str) -> None:
    with pytest.raises(ValueError):
        PATHS[path](f"X{bad}", "ok")


def test_non_string_value_whose_text_has_a_newline_is_refused() -> None:
    class Sneaky:
        def __str__(self) -> str:
            return "a\r\nb"

    with pytest.raises(ValueError):
        Headers().add("X", Sneaky())


def test_refused_value_leaves_the_headers_unchanged() -> None:
    h = Headers([("A", "1"), ("X-Req", "foo")])
    for change in (
        lambda: h.add("X-Req", "bad\n"),
        lambda: h.set("X-Req", "bad\r"),
        lambda: h.setlist("X-Req", ["fine", "bad\0"]),
    ):
        with pytest.raises(ValueError):
            change()
    assert h.items() == [("A", "1"), ("X-Req", "foo")]


def test_empty_header_name_is_refused() -> None:
    with pytest.raises(ValueError):
        Headers().add("", "v")
    with pytest.raises(ValueError):
        Headers()[""] = "v"


def test_empty_header_value_is_allowed() -> None:
    h = Headers()
    h["X-Empty"] = ""
    assert h.get("x-empty") == ""
    assert "X-Empty" in h


# =============================================================================
# Args
# =============================================================================


def test_args_names_are_case_sensitive() -> None:
    a = Args([("a", "1"), ("A", "2")])
    assert a.get("a") == "1"
    assert a.getlist("A") == ["2"]
    assert "B" not in a
    a["a"] = "x"
    assert a.items() == [("a", "x"), ("A", "2")]
    del a["A"]
    assert a.items() == [("a", "x")]


def test_args_keep_repeated_values_in_order() -> None:
    a = Args([("xx", "y"), ("y", ""), ("xx", "z")])
    assert a.getlist("xx") == ["y", "z"]
    assert a["y"] == ""


def test_args_and_headers_are_not_equal_even_with_the_same_pairs() -> None:
    assert Args([("a", "1")]) != Headers([("a", "1")])
    assert Args([("a", "1")]) == Args([("a", "1")])


# =============================================================================
# MultiDict.changes: what a plugin changed, compared with what APISIX sent
# =============================================================================

ORIGINAL = [("host", "localhost"), ("x-req", "foo"), ("x-req", "bar"), ("x-resp", "cat")]


def test_read_only_use_produces_no_changes() -> None:
    h = Headers(ORIGINAL)
    _ = (h["HOST"], h.getlist("x-req"), list(h), "x-resp" in h, h.get("nope"), h.keys(), len(h))
    assert h.changes(ORIGINAL) == []


def test_setting_a_header_to_its_current_value_is_no_change() -> None:
    h = Headers(ORIGINAL)
    h["Host"] = "localhost"
    assert h.changes(ORIGINAL) == []


def test_set_reports_the_name_with_its_new_values() -> None:
    h = Headers(ORIGINAL)
    h["X-Req"] = "new"
    assert h.changes(ORIGINAL) == [("X-Req", ["new"])]


def test_add_reports_every_value_of_the_name() -> None:
    h = Headers(ORIGINAL)
    h.add("x-req", "baz")
    h.add("X-New", "1")
    assert h.changes(ORIGINAL) == [("x-req", ["foo", "bar", "baz"]), ("X-New", ["1"])]


def test_delete_reports_the_name_as_gone() -> None:
    h = Headers(ORIGINAL)
    del h["X-REQ"]
    assert h.changes(ORIGINAL) == [("x-req", None)]


def test_reassigning_the_whole_mapping_reports_new_changed_and_gone_names() -> None:
    request = Request(headers=ORIGINAL)
    request.headers = {"host": "localhost", "x-resp": "dog", "x-added": "1"}
    assert sorted(request.headers.changes(ORIGINAL), key=str) == sorted(
        [("x-resp", ["dog"]), ("x-added", ["1"]), ("x-req", None)], key=str
    )


def test_args_changes_are_case_sensitive() -> None:
    original = [("a", "1"), ("b", "2")]
    a = Args(original)
    a["A"] = "1"
    del a["b"]
    assert a.changes(original) == [("A", ["1"]), ("b", None)]


def test_multidict_is_exported_as_the_common_base() -> None:
    assert issubclass(Headers, MultiDict)
    assert issubclass(Args, MultiDict)


# =============================================================================
# Request
# =============================================================================


@pytest.mark.parametrize("path", ["", "relative", "http://example.com/", "/a\r\nHost: evil", "/nul\0"])
def test_request_path_must_be_a_clean_absolute_path(path: str) -> None:
    request = Request(path="/ok")
    with pytest.raises(ValueError):
        request.path = path
    assert request.path == "/ok"
    with pytest.raises(ValueError):
        Request(path=path)


def test_request_path_must_be_text() -> None:
    request = Request()
    with pytest.raises(ValueError):
        request.path = b"/bytes"  # type: ignore[assignment]


def test_request_path_accepts_decoded_paths_with_spaces_and_non_ascii() -> None:
    request = Request()
    request.path = "/a b/caf\u00e9/\udce9"
    assert request.path == "/a b/caf\u00e9/\udce9"


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"\x7f\x00\x00\x01", "127.0.0.1"),
        (b"\xc0\xa8\x01\xfe", "192.168.1.254"),
        (bytes(15) + b"\x01", "::1"),
        (bytes.fromhex("20010db8000000000000000000000001"), "2001:db8::1"),
    ],
)
def test_request_src_ip_is_text_from_4_or_16_bytes(raw: bytes, text: str) -> None:
    assert Request(src_ip=raw).src_ip == text


def test_request_src_ip_of_another_length_is_empty() -> None:
    assert Request(src_ip=b"").src_ip == ""
    assert Request(src_ip=b"\x01\x02\x03").src_ip == ""


def test_request_body_is_asked_lazily_and_only_once() -> None:
    ask = Asker({(InfoKind.REQ_BODY, ""): b"123"})
    request = Request(ask=ask)
    assert ask.calls == []
    assert request.body == b"123"
    assert request.body == b"123"
    assert ask.calls == [(InfoKind.REQ_BODY, "")]


def test_request_without_body_reads_empty_and_asks_once() -> None:
    ask = Asker()  # APISIX sends no result for a GET
    request = Request(ask=ask)
    assert request.body == b""
    assert request.body == b""
    assert ask.calls == [(InfoKind.REQ_BODY, "")]


def test_request_without_ask_has_an_empty_body() -> None:
    assert Request().body == b""


def test_request_body_read_but_not_assigned_is_not_sent_back() -> None:
    request = Request(ask=Asker({(InfoKind.REQ_BODY, ""): b"123"}))
    _ = request.body
    assert request.new_body is None


def test_request_body_assignment_becomes_new_body_without_asking() -> None:
    ask = Asker()
    request = Request(ask=ask)
    request.body = "replaced"
    assert request.body == "replaced"
    assert request.new_body == b"replaced"
    assert ask.calls == []


def test_request_body_assigned_as_bytes_is_sent_as_is() -> None:
    request = Request()
    request.body = b"\x00\xff"
    assert request.new_body == b"\x00\xff"


def test_request_body_assigned_as_surrogate_escaped_text_round_trips_to_the_original_bytes() -> None:
    request = Request()
    request.body = b"caf\xe9".decode("utf-8", "surrogateescape")
    assert request.new_body == b"caf\xe9"


def test_request_var_is_asked_once_per_name() -> None:
    ask = Asker({(InfoKind.VAR, "host"): b"example.com", (InfoKind.VAR, "route_id"): b"1"})
    request = Request(ask=ask)
    assert request.var("host") == "example.com"
    assert request.var("host") == "example.com"
    assert request.var("route_id") == "1"
    assert ask.calls == [(InfoKind.VAR, "host"), (InfoKind.VAR, "route_id")]


def test_request_var_keeps_absent_and_empty_apart() -> None:
    ask = Asker({(InfoKind.VAR, "arg_x"): b""})
    request = Request(ask=ask)
    assert request.var("arg_x") == ""
    assert request.var("erver_addr") is None
    assert request.var("erver_addr") is None
    assert ask.calls == [(InfoKind.VAR, "arg_x"), (InfoKind.VAR, "erver_addr")]


def test_request_var_decodes_non_utf8_losslessly() -> None:
    request = Request(ask=Asker({(InfoKind.VAR, "cookie_x"): b"\xff\xfe"}))
    value = request.var("cookie_x")
    assert value is not None
    assert value.encode("utf-8", "surrogateescape") == b"\xff\xfe"


def test_request_without_ask_has_no_vars() -> None:
    assert Request().var("host") is None


def test_request_headers_assignment_from_a_dict_copies_it() -> None:
    request = Request()
    source = {"X-A": "1"}
    request.headers = source
    source["X-B"] = "2"
    assert isinstance(request.headers, Headers)
    assert request.headers.items() == [("X-A", "1")]


def test_request_headers_assignment_from_headers_copies_them() -> None:
    request = Request(headers=[("host", "h")])
    other = Headers([("X-A", "1")])
    request.headers = other
    other.add("X-B", "2")
    assert request.headers.items() == [("X-A", "1")]


def test_request_args_assignment_from_a_dict_copies_it_into_args() -> None:
    request = Request(args=[("a", "1")])
    source = {"b": "2"}
    request.args = source
    source["c"] = "3"
    assert isinstance(request.args, Args)
    assert request.args.items() == [("b", "2")]


def test_request_headers_given_as_pairs_become_headers() -> None:
    request = Request(headers=[("Host", "h")], args={"a": "1"})
    assert request.headers["host"] == "h"
    assert request.args["a"] == "1"


# =============================================================================
# Response
# =============================================================================


def test_request_phase_response_never_asks_for_a_body() -> None:
    ask = Asker({(InfoKind.RESP_BODY, ""): b"upstream"})
    response = Response(ask=ask)
    assert response.body is None
    assert response.new_body is None
    assert ask.calls == []


def test_request_phase_response_body_set_or_given_is_sent() -> None:
    response = Response()
    response.body = "denied"
    assert response.new_body == b"denied"
    assert Response(body=b"given").new_body == b"given"


def test_upstream_response_body_is_asked_lazily_and_only_once() -> None:
    ask = Asker({(InfoKind.RESP_BODY, ""): b"hello world\n"})
    response = Response(status_code=200, ask=ask, upstream=True)
    assert ask.calls == []
    assert response.body == b"hello world\n"
    assert response.body == b"hello world\n"
    assert ask.calls == [(InfoKind.RESP_BODY, "")]


def test_upstream_response_body_read_but_not_set_is_not_sent_back() -> None:
    response = Response(ask=Asker({(InfoKind.RESP_BODY, ""): b"hello"}), upstream=True)
    _ = response.body
    assert response.new_body is None


def test_upstream_response_without_body_reads_empty() -> None:
    ask = Asker()
    response = Response(ask=ask, upstream=True)
    assert response.body == b""
    assert response.body == b""
    assert ask.calls == [(InfoKind.RESP_BODY, "")]


def test_upstream_response_body_set_before_reading_is_not_fetched() -> None:
    ask = Asker({(InfoKind.RESP_BODY, ""): b"hello"})
    response = Response(ask=ask, upstream=True)
    response.body = "cat"
    assert response.body == "cat"
    assert response.new_body == b"cat"
    assert ask.calls == []


def test_upstream_response_body_replaced_after_reading_is_sent() -> None:
    response = Response(ask=Asker({(InfoKind.RESP_BODY, ""): b"hello"}), upstream=True)
    response.body = response.body.upper()  # type: ignore[union-attr]
    assert response.new_body == b"HELLO"


def test_response_var_is_asked_once_per_name_and_keeps_absent_apart() -> None:
    ask = Asker({(InfoKind.VAR, "uri"): b"/hello"})
    response = Response(ask=ask, upstream=True)
    assert response.var("uri") == "/hello"
    assert response.var("uri") == "/hello"
    assert response.var("nope") is None
    assert ask.calls == [(InfoKind.VAR, "uri"), (InfoKind.VAR, "nope")]


def test_response_defaults_to_status_200_and_no_headers() -> None:
    response = Response()
    assert response.status_code == 200
    assert response.headers.items() == []


def test_response_headers_assignment_from_request_headers_copies_them() -> None:
    # The seed plugins do ``response.headers = request.headers``.
    request = Request(headers=[("Host", "h")])
    response = Response()
    response.headers = request.headers
    request.headers["X-Later"] = "1"
    assert response.headers.items() == [("Host", "h")]


def test_response_headers_assignment_from_a_dict_copies_it() -> None:
    response = Response()
    source = {"Content-Type": "application/json"}
    response.headers = source
    source["X-B"] = "2"
    assert isinstance(response.headers, Headers)
    assert response.headers.items() == [("Content-Type", "application/json")]


# =============================================================================
# A request from APISIX decodes each part only when a plugin uses it
# =============================================================================


class _Source:
    """A decoded HTTPReqCall stand-in that counts what was decoded."""

    def __init__(self, headers: list[tuple[str, str]], args: tuple[tuple[str, str], ...] = (), path: str = "/") -> None:
        self._headers, self._args, self._path = headers, args, path
        self.decoded: list[str] = []

    @property
    def path(self) -> str:
        self.decoded.append("path")
        return self._path

    @property
    def src_ip(self) -> bytes:
        self.decoded.append("src_ip")
        return b"\x7f\0\0\1"

    def headers(self) -> list[tuple[str, str]]:
        self.decoded.append("headers")
        return list(self._headers)

    def args(self) -> list[tuple[str, str]]:
        self.decoded.append("args")
        return list(self._args)


def test_setting_unread_headers_and_args_decodes_none_of_them() -> None:
    source = _Source(ORIGINAL, (("a", "1"),))
    request = Request.from_apisix(1, "GET", source, None)
    request.headers["X-New"] = "1"
    request.args["b"] = "2"
    assert request.changes() == (None, [("X-New", ["1"])], [("b", ["2"])])
    assert source.decoded == []


def test_deleting_from_unread_headers_and_args_reports_only_names_that_were_there() -> None:
    source = _Source(ORIGINAL, (("a", "1"),))
    request = Request.from_apisix(1, "GET", source, None)
    del request.headers["X-RESP"]
    del request.headers["X-Internal"]
    del request.headers["X\r\nInjected: 1"]
    del request.args["debug"]
    assert request.changes() == (None, [("x-resp", None)], [])
    assert source.decoded == ["headers", "args"]


def test_headers_set_before_being_read_take_the_first_position_once_read() -> None:
    source = _Source(ORIGINAL)
    request = Request.from_apisix(1, "GET", source, None)
    request.headers["X-REQ"] = "new"
    request.headers["x-added"] = "1"
    del request.headers["x-added"]
    assert request.headers.items() == [("host", "localhost"), ("X-REQ", "new"), ("x-resp", "cat")]
    assert request.changes()[1] == [("X-REQ", ["new"])]
    assert source.decoded == ["headers"]


def test_an_unread_header_set_to_its_current_value_is_sent_as_a_change() -> None:
    # Comparing would mean decoding every header; APISIX setting it again changes nothing.
    request = Request.from_apisix(1, "GET", _Source(ORIGINAL), None)
    request.headers["Host"] = "localhost"
    assert request.changes()[1] == [("Host", ["localhost"])]


def test_a_path_set_to_the_one_apisix_sent_is_no_change() -> None:
    request = Request.from_apisix(1, "GET", _Source([], path="/same"), None)
    request.path = "/same"
    assert request.changes() == (None, [], [])


def test_reassigning_unread_headers_reports_the_gone_names() -> None:
    request = Request.from_apisix(1, "GET", _Source(ORIGINAL), None)
    request.headers = {"host": "localhost"}
    assert sorted(request.changes()[1], key=str) == [("x-req", None), ("x-resp", None)]


def test_a_read_only_plugin_of_a_lazy_request_changes_nothing() -> None:
    source = _Source(ORIGINAL, [("a", "1")])
    request = Request.from_apisix(1, "GET", source, None)
    _ = (request.headers.get("host"), request.args["a"], request.path, request.src_ip)
    assert request.changes() == (None, [], [])
    assert request.src_ip == "127.0.0.1"


def test_two_threads_reading_unread_headers_first_keep_the_sets_made_before() -> None:
    class SlowSource(_Source):
        def headers(self) -> list[tuple[str, str]]:
            time.sleep(0.01)  # both readers are inside the first load at once
            return super().headers()

    source = SlowSource([("host", "h")])
    request = Request.from_apisix(1, "GET", source, None)
    request.headers["X-Auth"] = "ok"
    run_in_threads(request.headers.get, [("host",), ("host",)])
    assert request.headers.items() == [("host", "h"), ("X-Auth", "ok")]
    assert request.changes()[1] == [("X-Auth", ["ok"])]
    assert source.decoded == ["headers"]
