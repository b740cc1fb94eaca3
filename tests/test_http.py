"""Request, Response and ExtraInfo: what a plugin sees, what the reply carries, and what is refused where it is set."""

from __future__ import annotations

import threading
import traceback
from pathlib import Path
from typing import Any

import pytest

import runner
from runner import Plugin
from runner.errors import ErrCode
from runner.http import MAX_BODY, ExtraInfo, InfoKind, Request, Response
from runner.testing import run_filter, run_response_filter

RUNNER_DIR = Path(runner.__file__).parent


def filter_plugin(filter: Any) -> type[Plugin]:
    return type("p", (Plugin,), {"name": "p", "filter": filter})


def response_plugin(response_filter: Any) -> type[Plugin]:
    return type("r", (Plugin,), {"name": "r", "response_filter": response_filter})


class Asker:
    """An ``ask`` function for ``ExtraInfo``: records every question and answers from a table."""

    def __init__(self, answers: dict[tuple[InfoKind, str], bytes | None] | None = None) -> None:
        self.answers = answers or {}
        self.calls: list[tuple[InfoKind, str]] = []

    def __call__(self, kind: InfoKind, name: str) -> bytes | None:
        self.calls.append((kind, name))
        return self.answers.get((kind, name))


def plugin_failure(run: Any) -> BaseException:
    """What the plugin raised when ``run()`` ran it (the kit's Err reply carries it as its ``cause``)."""
    reply = run()
    assert reply.err == ErrCode.SERVICE_UNAVAILABLE
    cause = reply.cause
    assert cause is not None
    return cause


def failure_in_line(method: Any, line: str, **request: Any) -> BaseException:
    """What the plugin method (a ``filter``, or a ``response_filter``) raised, checking it did so in ``line``."""
    if method.__name__ == "response_filter":
        error = plugin_failure(lambda: run_response_filter(response_plugin(method)))
    else:
        error = plugin_failure(lambda: run_filter(filter_plugin(method), **request))
    assert raising_line(error) == line
    return error


def raising_line(error: BaseException) -> str:
    """The source line, outside the runner, where ``error`` was raised; asserts that the
    frames below it are the runner's checks of a value (not its encoder or dispatcher)."""
    frames = traceback.extract_tb(error.__traceback__)
    outside = [i for i, f in enumerate(frames) if not Path(f.filename).is_relative_to(RUNNER_DIR)]
    last = outside[-1]
    below = {Path(f.filename).name for f in frames[last + 1 :]}
    assert below <= {"http.py", "headers.py"}, below
    return (frames[last].line or "").strip()


# =============================================================================
# Bad values raise in the plugin's own line
# =============================================================================


def test_a_bytes_header_value_raises_in_the_plugins_line() -> None:
    def filter(self: Plugin, request: Any, response: Any) -> None:
        request.headers["X-Token"] = b"abc"

    error = failure_in_line(filter, 'request.headers["X-Token"] = b"abc"')
    assert isinstance(error, TypeError) and "header values must be str, not bytes: decode it first" in str(error)


@pytest.mark.parametrize(
    "bad",
    ["\x0b", "\x0c", "\x1b", "\x7f", "\x85", "\u2028", "\u2029", "\r", "\n", "\0"],
    ids=["VT", "FF", "ESC", "DEL", "NEL", "U+2028", "U+2029", "CR", "LF", "NUL"],
)
def test_a_control_character_in_a_header_value_raises_in_the_plugins_line(bad: str) -> None:
    def filter(self: Plugin, request: Any, response: Any) -> None:
        response.headers["X-Note"] = f"a{bad}b"

    error = failure_in_line(filter, 'response.headers["X-Note"] = f"a{bad}b"')
    assert isinstance(error, ValueError) and f"header values must not contain U+{ord(bad):04X} (a " in str(error)


def test_a_lone_surrogate_in_a_header_value_raises_in_the_plugins_line() -> None:
    def filter(self: Plugin, request: Any, response: Any) -> None:
        request.headers.add("X-Emoji", "\ud83d")  # half of a surrogate pair

    error = failure_in_line(filter, 'request.headers.add("X-Emoji", "\\ud83d")  # half of a surrogate pair')
    assert isinstance(error, ValueError) and "U+D83D (a lone surrogate that cannot be encoded)" in str(error)


def test_a_bad_header_value_in_the_response_phase_raises_in_the_plugins_line() -> None:
    def response_filter(self: Plugin, response: Any) -> None:
        response.headers.setlist("X-List", ["ok", 7])

    error = failure_in_line(response_filter, 'response.headers.setlist("X-List", ["ok", 7])')
    assert isinstance(error, TypeError) and "header values must be str, not int: 7" in str(error)


@pytest.mark.parametrize("value", [12, 10**8, None, ["a"]], ids=repr)
def test_a_body_that_is_not_str_or_bytes_raises_in_the_plugins_line(value: object) -> None:
    def filter(self: Plugin, request: Any, response: Any) -> None:
        response.body = value
        self.stop()

    error = failure_in_line(filter, "response.body = value")
    assert isinstance(error, TypeError) and f"body must be str or bytes, not {type(value).__name__}" in str(error)


def test_an_oversize_body_raises_in_the_plugins_line() -> None:
    def filter(self: Plugin, request: Any, response: Any) -> None:
        request.body = b"x" * (MAX_BODY + 1)

    error = failure_in_line(filter, 'request.body = b"x" * (MAX_BODY + 1)')
    assert isinstance(error, ValueError)
    assert f"body of {MAX_BODY + 1} bytes exceeds the {MAX_BODY}-byte limit" in str(error)


def test_an_oversize_text_body_is_measured_in_encoded_bytes() -> None:
    def response_filter(self: Plugin, response: Any) -> None:
        response.body = "\u00e9" * (MAX_BODY // 2 + 1)  # two bytes each in UTF-8

    error = plugin_failure(lambda: run_response_filter(response_plugin(response_filter)))
    assert isinstance(error, ValueError)
    assert "exceeds the" in str(error)


def test_a_body_of_the_largest_size_reaches_the_client() -> None:
    def filter(self: Plugin, request: Any, response: Any) -> None:
        response.body = b"y" * MAX_BODY
        response.headers["X-Big"] = "1"
        self.stop()

    reply = run_filter(filter_plugin(filter))
    assert reply.stopped
    assert reply.body is not None and len(reply.body) == MAX_BODY


def test_a_lone_surrogate_in_a_text_body_raises_in_the_plugins_line() -> None:
    def filter(self: Plugin, request: Any, response: Any) -> None:
        request.body = "ok \udbff"

    error = failure_in_line(filter, 'request.body = "ok \\udbff"')
    assert isinstance(error, ValueError) and "body must not contain U+DBFF (a lone surrogate" in str(error)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (99, ValueError),
        (600, ValueError),
        (65939, ValueError),
        (True, TypeError),
        ("403", TypeError),
        (200.0, TypeError),
    ],
    ids=repr,
)
def test_a_bad_status_raises_in_the_plugins_line(status: object, kind: type[Exception]) -> None:
    def filter(self: Plugin, request: Any, response: Any) -> None:
        response.status_code = status
        self.stop()

    error = failure_in_line(filter, "response.status_code = status")
    assert type(error) is kind and "status_code must be an HTTP status" in str(error)


@pytest.mark.parametrize("path", ["", "abc", "*", "http://example.com/", "/a\r\nHost: evil", "/nul\0", "/tab\t"])
def test_a_path_that_is_not_a_clean_absolute_path_raises_in_the_plugins_line(path: str) -> None:
    def filter(self: Plugin, request: Any, response: Any) -> None:
        request.path = path

    error = failure_in_line(filter, "request.path = path", path="/ok")
    assert isinstance(error, ValueError)


def test_a_bytes_path_raises_a_type_error_in_the_plugins_line() -> None:
    def filter(self: Plugin, request: Any, response: Any) -> None:
        request.path = b"/bytes"

    error = failure_in_line(filter, 'request.path = b"/bytes"')
    assert isinstance(error, TypeError)


def test_a_lone_surrogate_in_an_arg_raises_in_the_plugins_line() -> None:
    def filter(self: Plugin, request: Any, response: Any) -> None:
        request.args["q"] = "\udfff"

    error = failure_in_line(filter, 'request.args["q"] = "\\udfff"')
    assert isinstance(error, ValueError)


def test_a_bad_pair_in_a_whole_headers_assignment_raises_in_the_plugins_line() -> None:
    def filter(self: Plugin, request: Any, response: Any) -> None:
        response.headers = {"X-Ok": "1", "X-Bad": b"2"}

    error = failure_in_line(filter, 'response.headers = {"X-Ok": "1", "X-Bad": b"2"}')
    assert isinstance(error, TypeError)


# =============================================================================
# What APISIX sent always round-trips
# =============================================================================


@pytest.mark.parametrize("path", ["*", "abc", "/tab\there"])
def test_a_path_apisix_sent_can_be_set_back_and_is_no_change(path: str) -> None:
    def filter(self: Plugin, request: Any, response: Any) -> None:
        request.path = request.path

    reply = run_filter(filter_plugin(filter), path=path)
    assert reply.action == "none"


def test_header_values_apisix_sent_as_raw_bytes_can_be_set_again() -> None:
    raw = b"caf\xe9 \xff".decode("utf-8", "surrogateescape")

    def filter(self: Plugin, request: Any, response: Any) -> None:
        request.headers["X-Copy"] = request.headers["x-raw"]
        request.args["copy"] = request.args["raw"]

    reply = run_filter(filter_plugin(filter), headers={"X-Raw": raw}, args={"raw": raw})
    assert reply.headers == [("X-Copy", raw)]
    assert reply.args == [("copy", raw)]


def test_request_headers_apisix_sent_can_be_echoed_whole_into_a_stop() -> None:
    # The seed plugins' ``response.headers = request.headers``, with a value nginx accepted.
    def filter(self: Plugin, request: Any, response: Any) -> None:
        response.headers = request.headers
        self.stop()

    reply = run_filter(filter_plugin(filter), headers=[("X-Odd", "a\x1bb"), ("Host", "h")])
    assert reply.headers == [("x-odd", "a\x1bb"), ("host", "h")]


def test_an_arg_with_control_characters_is_sent_as_set() -> None:
    def filter(self: Plugin, request: Any, response: Any) -> None:
        request.args["note"] = "line 1\r\nline 2"

    reply = run_filter(filter_plugin(filter))
    assert reply.args == [("note", "line 1\r\nline 2")]


def test_a_path_with_spaces_non_ascii_and_a_question_mark_is_sent_as_set() -> None:
    def filter(self: Plugin, request: Any, response: Any) -> None:
        request.path = "/a b/caf\u00e9/\udce9?not-a-query"

    assert run_filter(filter_plugin(filter)).path == "/a b/caf\u00e9/\udce9?not-a-query"


# =============================================================================
# The request phase: what is sent
# =============================================================================


def test_a_plugin_that_only_reads_changes_nothing() -> None:
    def filter(self: Plugin, request: Any, response: Any) -> None:
        _ = (request.path, request.src_ip, request.method, request.id, request.headers.get("host"))
        _ = (list(request.headers), request.args.getlist("a"), request.headers.copy(), len(request.args))

    reply = run_filter(filter_plugin(filter), headers={"Host": "h"}, args=[("a", "1"), ("a", "2")])
    assert reply.action == "none"


def test_a_header_set_without_any_read_is_sent_as_set_even_when_unchanged() -> None:
    # Comparing would mean decoding every header; APISIX setting it again changes nothing.
    def filter(self: Plugin, request: Any, response: Any) -> None:
        request.headers["Host"] = "localhost"

    reply = run_filter(filter_plugin(filter), headers={"host": "localhost"})
    assert reply.headers == [("Host", "localhost")]


def test_once_headers_are_read_only_real_differences_are_sent() -> None:
    def filter(self: Plugin, request: Any, response: Any) -> None:
        request.headers["Host"] = "localhost"
        assert request.headers["x-a"] == "1"
        request.headers["X-A"] = "1"

    assert run_filter(filter_plugin(filter), headers={"host": "localhost", "x-a": "1"}).action == "none"


def test_a_header_set_before_being_read_takes_the_first_position() -> None:
    seen = []

    def filter(self: Plugin, request: Any, response: Any) -> None:
        request.headers["X-REQ"] = "new"
        seen.append(request.headers.items())

    reply = run_filter(filter_plugin(filter), headers=[("host", "h"), ("x-req", "a"), ("x-req", "b"), ("x-z", "z")])
    assert seen == [[("host", "h"), ("X-REQ", "new"), ("x-z", "z")]]
    assert reply.headers == [("X-REQ", "new")]


def test_deleting_sends_only_names_that_were_there() -> None:
    def filter(self: Plugin, request: Any, response: Any) -> None:
        del request.headers["X-RESP"]
        del request.headers["X-Internal"]
        del request.args["debug"]
        del request.args["a"]

    reply = run_filter(filter_plugin(filter), headers={"x-resp": "cat"}, args={"a": "1"})
    assert reply.headers == [("x-resp", None)]
    assert reply.args == [("a", None)]


def test_a_whole_headers_assignment_sends_new_changed_and_gone_names() -> None:
    def filter(self: Plugin, request: Any, response: Any) -> None:
        request.headers = {"host": "localhost", "x-resp": "dog", "x-added": "1"}

    sent = [("host", "localhost"), ("x-req", "foo"), ("x-resp", "cat")]
    reply = run_filter(filter_plugin(filter), headers=sent)
    assert sorted(reply.headers, key=str) == sorted([("x-resp", "dog"), ("x-added", "1"), ("x-req", None)], key=str)


def test_a_whole_args_assignment_sends_every_value_and_the_gone_names() -> None:
    def filter(self: Plugin, request: Any, response: Any) -> None:
        request.args = [("b", "2"), ("b", "3")]

    reply = run_filter(filter_plugin(filter), args={"a": "1"})
    assert sorted(reply.args, key=str) == sorted([("b", "2"), ("b", "3"), ("a", None)], key=str)


def test_a_path_set_to_the_one_apisix_sent_is_no_change() -> None:
    def filter(self: Plugin, request: Any, response: Any) -> None:
        request.path = "/same"

    assert run_filter(filter_plugin(filter), path="/same").action == "none"


def test_an_assigned_request_body_is_sent_upstream_as_bytes() -> None:
    bodies = {"text": "caf\u00e9", "bytes": b"\x00\xff", "bytearray": bytearray(b"ba"), "raw": "caf\udce9"}
    expected = {"text": "café".encode(), "bytes": b"\x00\xff", "bytearray": b"ba", "raw": b"caf\xe9"}
    for kind, body in bodies.items():

        def filter(self: Plugin, request: Any, response: Any, body: object = body) -> None:
            request.body = body

        reply = run_filter(filter_plugin(filter))
        assert (reply.body, reply.asked) == (expected[kind], []), kind


def test_a_request_body_read_but_not_assigned_is_not_sent_back() -> None:
    def filter(self: Plugin, request: Any, response: Any) -> None:
        assert request.body == b"abc"
        assert request.body == b"abc"

    reply = run_filter(filter_plugin(filter), body=b"abc")
    assert reply.action == "none"
    assert reply.asked == [("req_body", "")]


def test_a_stop_carries_the_body_and_status_set() -> None:
    def filter(self: Plugin, request: Any, response: Any) -> None:
        response.status_code = 403
        response.headers["X-Why"] = "no"
        response.body = "denied"
        self.stop()

    reply = run_filter(filter_plugin(filter))
    assert (reply.stopped, reply.status, reply.headers, reply.body) == (True, 403, [("X-Why", "no")], b"denied")


def test_the_request_and_the_response_of_one_call_share_their_extra_info_answers() -> None:
    def filter(self: Plugin, request: Any, response: Any) -> None:
        request.headers["X-A"] = str(request.var("host"))
        request.headers["X-B"] = str(response.var("host"))

    reply = run_filter(filter_plugin(filter), vars={"host": "example.com"})
    assert reply.headers == [("X-A", "example.com"), ("X-B", "example.com")]
    assert reply.asked == [("var", "host")]


# =============================================================================
# The response phase: what is sent
# =============================================================================


def test_a_response_header_removed_gets_a_deletion_entry() -> None:
    def response_filter(self: Plugin, response: Any) -> None:
        del response.headers["X-Secret"]
        response.headers["X-New"] = "1"

    reply = run_response_filter(response_plugin(response_filter), headers=[("X-Secret", "s"), ("Server", "n")])
    assert reply.headers == [("Server", "n"), ("X-New", "1"), ("X-Secret", None)]
    assert (reply.status, reply.body) == (0, None)


def test_a_whole_response_headers_assignment_deletes_the_upstream_names_left_out() -> None:
    def response_filter(self: Plugin, response: Any) -> None:
        response.headers = {"Content-Type": "text/plain"}

    reply = run_response_filter(response_plugin(response_filter), headers=[("Content-Type", "a/b"), ("X-Up", "1")])
    assert reply.headers == [("Content-Type", "text/plain"), ("X-Up", None)]


def test_the_upstream_status_and_headers_are_seen_as_sent_and_changes_are_sent() -> None:
    seen = []

    def response_filter(self: Plugin, response: Any) -> None:
        seen.append((response.status_code, response.headers.items()))
        response.status_code = 201

    reply = run_response_filter(response_plugin(response_filter), status=502, headers=[("X-Up", "1"), ("x-up", "2")])
    assert seen == [(502, [("X-Up", "1"), ("x-up", "2")])]
    assert reply.status == 201
    assert reply.headers == [("X-Up", "1"), ("x-up", "2")]


def test_the_upstream_body_is_asked_once_and_sent_back_only_when_assigned() -> None:
    def read(self: Plugin, response: Any) -> None:
        assert response.body == b"hello"
        assert response.body == b"hello"

    reply = run_response_filter(response_plugin(read), body=b"hello")
    assert (reply.body, reply.asked) == (None, [("resp_body", "")])

    def upper(self: Plugin, response: Any) -> None:
        response.body = response.body.upper()

    assert run_response_filter(response_plugin(upper), body=b"hello").body == b"HELLO"


def test_an_upstream_body_set_before_reading_is_not_asked_for() -> None:
    def response_filter(self: Plugin, response: Any) -> None:
        response.body = "cat"
        assert response.body == "cat"

    reply = run_response_filter(response_plugin(response_filter), body=b"hello")
    assert (reply.body, reply.asked) == (b"cat", [])


# =============================================================================
# The objects as a plugin's own tests build them
# =============================================================================


def test_request_defaults() -> None:
    request = Request()
    assert (request.id, request.method, request.path, request.src_ip) == (0, "GET", "/", "127.0.0.1")
    assert request.headers.items() == request.args.items() == []
    assert request.body == b""
    assert request.var("host") is None
    assert request.changes() == (None, [], [])


def test_request_constructor_values_are_checked_as_if_set() -> None:
    with pytest.raises(ValueError):
        Request(path="relative")
    with pytest.raises(TypeError):
        Request(headers={"X-A": b"1"})
    with pytest.raises(TypeError):
        Request(body=12)


def test_request_parts_given_as_functions_are_what_apisix_sent() -> None:
    request = Request(path=lambda: "*", headers=lambda: [("x-a", "1")], args=lambda: [("a", "")], src_ip=lambda: b"")
    assert (request.path, request.headers.items(), request.args.items(), request.src_ip) == (
        "*",
        [("x-a", "1")],
        [("a", "")],
        "",
    )
    request.headers["X-B"] = "2"
    assert request.changes() == (None, [("X-B", ["2"])], [])


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"\x7f\x00\x00\x01", "127.0.0.1"),
        (b"\xc0\xa8\x01\xfe", "192.168.1.254"),
        (bytes(15) + b"\x01", "::1"),
        (bytes.fromhex("20010db8000000000000000000000001"), "2001:db8::1"),
        (b"", ""),
        (b"\x01\x02\x03", ""),
    ],
)
def test_request_src_ip_is_text(raw: bytes, text: str) -> None:
    assert Request(src_ip=raw).src_ip == text


@pytest.mark.parametrize("address", ["10.1.2.3", "2001:db8::1"])
def test_the_client_address_reaches_the_plugin_as_text(address: str) -> None:
    def filter(self: Plugin, request: Any, response: Any) -> None:
        request.headers["X-Client"] = request.src_ip

    assert run_filter(filter_plugin(filter), src_ip=address).headers == [("X-Client", address)]


def test_request_headers_assignment_copies_the_value() -> None:
    request = Request(headers=[("host", "h")])
    source = {"X-A": "1"}
    request.headers = source
    source["X-B"] = "2"
    assert request.headers.items() == [("X-A", "1")]


def test_response_defaults_and_checks() -> None:
    response = Response()
    assert (response.status_code, response.headers.items(), response.body, response.body_for_client) == (
        200,
        [],
        None,
        None,
    )
    with pytest.raises(ValueError):
        Response(status_code=700)
    assert Response(body=b"given").body_for_client == b"given"


def test_response_headers_assignment_from_request_headers_copies_them() -> None:
    request = Request(headers=[("Host", "h")])
    response = Response()
    response.headers = request.headers
    request.headers["X-Later"] = "1"
    assert response.headers.items() == [("Host", "h")]


def test_request_body_without_answer_reads_empty() -> None:
    asker = Asker()
    request = Request(extra=ExtraInfo(asker))
    assert request.body == b""
    assert request.body == b""
    assert asker.calls == [(InfoKind.REQ_BODY, "")]


def test_a_request_phase_response_never_asks_for_a_body() -> None:
    asker = Asker({(InfoKind.RESP_BODY, ""): b"upstream"})
    response = Response(extra=ExtraInfo(asker))
    assert response.body is None
    assert asker.calls == []


def test_two_threads_reading_unread_headers_first_keep_the_sets_made_before() -> None:
    gate = threading.Barrier(2)

    def slow_headers() -> list[tuple[str, str]]:
        gate.wait(5)  # both readers are inside the first load at once
        return [("host", "h")]

    request = Request(headers=slow_headers)
    request.headers["X-Auth"] = "ok"
    seen: list[list[tuple[str, str]]] = []
    threads = [threading.Thread(target=lambda: seen.append(request.headers.items())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == [[("host", "h"), ("X-Auth", "ok")]] * 2
    assert request.changes()[1] == [("X-Auth", ["ok"])]


# =============================================================================
# ExtraInfo
# =============================================================================


def test_extra_info_asks_each_kind_and_name_once() -> None:
    asker = Asker({(InfoKind.VAR, "host"): b"example.com", (InfoKind.REQ_BODY, ""): b"body"})
    extra = ExtraInfo(asker)
    assert extra.var("host") == extra.var("host") == "example.com"
    assert extra.ask(InfoKind.REQ_BODY) == extra.ask(InfoKind.REQ_BODY) == b"body"
    assert extra.var("nope") is None
    assert extra.var("nope") is None
    assert asker.calls == [(InfoKind.VAR, "host"), (InfoKind.REQ_BODY, ""), (InfoKind.VAR, "nope")]


def test_extra_info_keeps_absent_and_empty_apart_and_decodes_losslessly() -> None:
    extra = ExtraInfo(Asker({(InfoKind.VAR, "arg_x"): b"", (InfoKind.VAR, "cookie_x"): b"\xff\xfe"}))
    assert extra.var("arg_x") == ""
    assert extra.var("erver_addr") is None
    value = extra.var("cookie_x")
    assert value is not None and value.encode("utf-8", "surrogateescape") == b"\xff\xfe"


def test_extra_info_without_ask_has_no_answers() -> None:
    assert ExtraInfo().var("host") is None
    assert ExtraInfo().ask(InfoKind.REQ_BODY) is None
