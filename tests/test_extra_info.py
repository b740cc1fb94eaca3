"""ExtraInfo round trips (variables, request and response bodies) and the response phase, end to end."""

from __future__ import annotations

import hashlib

from conftest import act

from runner.errors import ErrCode
from runner.frame import MessageType
from runner.testing import ApisixClient, RunnerProcess, encode_frame, req_call_req


def test_var_present_absent_and_empty_are_told_apart(client: ApisixClient) -> None:
    token = client.prepare_conf(act(vars_to_headers={"host": "X-Host", "nope": "X-Nope", "arg_x": "X-Arg"}))
    reply = client.http_req_call(token, vars={"host": "example.com", "arg_x": ""})
    assert dict(reply.headers) == {"X-Host": "<example.com>", "X-Nope": "<absent>", "X-Arg": "<>"}
    assert reply.asked == [("var", "host"), ("var", "nope"), ("var", "arg_x")]


def test_var_is_asked_once_per_call_and_name(client: ApisixClient) -> None:
    conf = [("act", '{"vars_to_headers": {"route_id": "X-A"}}'), ("act", '{"vars_to_headers": {"route_id": "X-B"}}')]
    token = client.prepare_conf(conf)
    reply = client.http_req_call(token, vars={"route_id": "1"})
    assert reply.asked == [("var", "route_id")]
    assert dict(reply.headers) == {"X-A": "<1>", "X-B": "<1>"}
    # The next call asks again: answers are cached per call, not across calls.
    assert client.http_req_call(token, vars={"route_id": "2"}).asked == [("var", "route_id")]


def test_non_utf8_var_survives_unchanged(client: ApisixClient) -> None:
    token = client.prepare_conf(act(vars_to_headers={"cookie_x": "X-Cookie"}))
    raw = b"\xff\xfe caf\xc3\xa9".decode("utf-8", "surrogateescape")
    reply = client.http_req_call(token, vars={"cookie_x": raw})
    assert reply.headers == [("X-Cookie", f"<{raw}>")]


def _digest(body: bytes) -> str:
    return f"{len(body)}:{hashlib.sha256(body).hexdigest()}"


def test_absent_request_body_reads_as_empty(client: ApisixClient) -> None:
    token = client.prepare_conf(act(body_digest="X-Digest"))
    reply = client.http_req_call(token, body=None)
    assert reply.headers == [("X-Digest", _digest(b""))]
    assert reply.asked == [("req_body", "")]


def test_request_bodies_small_binary_and_large_arrive_intact(client: ApisixClient) -> None:
    token = client.prepare_conf(act(body_digest="X-Digest"))
    for body in (b"hello", bytes(range(256)) * 4, bytes(range(256)) * (8 * 4096)):  # 8 MiB last
        reply = client.http_req_call(token, method="POST", body=body)
        assert reply.headers == [("X-Digest", _digest(body))]


def test_body_read_twice_is_asked_once_and_reading_is_not_a_rewrite(client: ApisixClient) -> None:
    token = client.prepare_conf([("act", '{"body_digest": "X-A"}'), ("act", '{"body_digest": "X-B"}')])
    reply = client.http_req_call(token, method="POST", body=b"abc")
    assert reply.asked == [("req_body", "")]
    assert reply.body is None  # only the headers changed


def test_body_assignment_rewrites_the_request_body(client: ApisixClient) -> None:
    token = client.prepare_conf(act(body="replaced \u00e9"))
    reply = client.http_req_call(token, method="POST")
    assert (reply.action, reply.body) == ("rewrite", "replaced \u00e9".encode())
    assert reply.asked == []  # assigning does not fetch the old body


UPSTREAM = [
    ("Content-Type", "application/json"),
    ("Content-Length", "13"),
    ("Connection", "keep-alive"),
    ("Set-Cookie", "a=1"),
    ("Set-Cookie", "b=2"),
    ("X-Upstream", "yes"),
]
FORWARDED = [(n, v) for n, v in UPSTREAM if n not in ("Content-Length", "Connection")]


def test_response_phase_noop_echoes_headers_without_status_or_body(client: ApisixClient) -> None:
    token = client.prepare_conf(act(read=True), key="route#1#ext-plugin-post-resp#1")
    reply = client.http_resp_call(token, id=31, status=200, headers=UPSTREAM, body=b'{"a": "b"}')
    assert (reply.err, reply.id, reply.status, reply.body) == (None, 31, 0, None)
    assert reply.headers == FORWARDED  # Content-Type kept, original case and repeats kept
    assert reply.asked == []


def test_response_phase_header_change(client: ApisixClient) -> None:
    token = client.prepare_conf(
        act(
            resp={
                "set_headers": {"x-upstream": "changed"},
                "add_headers": [["X-New", "1"]],
                "del_headers": ["SET-COOKIE"],
            }
        )
    )
    reply = client.http_resp_call(token, headers=UPSTREAM)
    assert reply.headers == [("Content-Type", "application/json"), ("x-upstream", "changed"), ("X-New", "1")]
    assert (reply.status, reply.body) == (0, None)


def test_response_phase_status_change(client: ApisixClient) -> None:
    token = client.prepare_conf(act(resp={"status": 304}))
    reply = client.http_resp_call(token, status=200, headers=UPSTREAM)
    assert (reply.status, reply.headers) == (304, FORWARDED)


def test_response_phase_body_read_and_replaced(client: ApisixClient) -> None:
    token = client.prepare_conf(act(resp={"body_upper": True}))
    reply = client.http_resp_call(token, headers=UPSTREAM, body=b'{"a": "b"}')
    assert reply.body == b'{"A": "B"}'
    assert reply.asked == [("resp_body", "")]
    assert ("Content-Length", "13") not in reply.headers


def test_response_phase_body_asked_once_across_plugins(client: ApisixClient) -> None:
    token = client.prepare_conf([("act", '{"resp": {"body_upper": true}}')] * 2)
    reply = client.http_resp_call(token, headers=UPSTREAM, body=b"abc")
    assert reply.asked == [("resp_body", "")]
    assert reply.body == b"ABC"


def test_response_phase_vars(client: ApisixClient) -> None:
    token = client.prepare_conf(act(resp={"vars_to_headers": {"uri": "X-Uri", "nope": "X-Nope"}}))
    reply = client.http_resp_call(token, headers=[("Content-Type", "text/plain")], vars={"uri": "/hello"})
    assert reply.headers == [("Content-Type", "text/plain"), ("X-Uri", "</hello>"), ("X-Nope", "<absent>")]


def test_request_phase_only_plugins_are_skipped_in_the_response_phase(client: ApisixClient) -> None:
    token = client.prepare_conf([("marker", '"a"')])
    reply = client.http_resp_call(token, headers=UPSTREAM)
    assert (reply.err, reply.headers, reply.status) == (None, FORWARDED, 0)


def test_response_filter_exception_replies_service_unavailable(runner: RunnerProcess, client: ApisixClient) -> None:
    token = client.prepare_conf(act(resp={"raise": "resp-boom-99"}))
    assert client.http_resp_call(token, id=99).err == ErrCode.SERVICE_UNAVAILABLE
    line = next(line for line in runner.log.splitlines() if "resp-boom-99" in line)
    assert "plugin 'act' raised RuntimeError in response_filter" in line
    assert client.http_resp_call(client.prepare_conf(None)).err is None


def test_apisix_closing_during_an_extra_info_question_abandons_only_that_call(runner: RunnerProcess) -> None:
    log_start = len(runner.log)
    with runner.client() as other:
        token = other.prepare_conf(act(vars_to_headers={"host": "X-Host"}))
        with runner.client() as dying:
            dying.send_frame(
                MessageType.HTTP_REQ_CALL,
                req_call_req(id=1, token=token, method="GET", path="/", args=[], headers=[], src_ip=b"\x7f\0\0\1"),
            )
            assert dying.read_frame()[0] == MessageType.EXTRA_INFO
        # ...closed without answering; the runner must not reply there nor fall over.
        assert other.http_req_call(token, vars={"host": "h"}).headers == [("X-Host", "<h>")]
    assert "Traceback" not in runner.log[log_start:]


def test_wrong_frame_type_instead_of_an_answer_abandons_the_call(runner: RunnerProcess) -> None:
    log_start = len(runner.log)
    with runner.client() as c:
        token = c.prepare_conf(act(vars_to_headers={"host": "X-Host"}))
        call = req_call_req(id=1, token=token, method="GET", path="/", args=[], headers=[], src_ip=b"\x7f\0\0\1")
        c.send_frame(MessageType.HTTP_REQ_CALL, call)
        assert c.read_frame()[0] == MessageType.EXTRA_INFO
        c.sock.sendall(encode_frame(MessageType.HTTP_REQ_CALL, call))
        assert c.sock.recv(1) == b""  # closed without a reply
    with runner.client() as c:
        assert c.http_req_call(token, vars={"host": "h"}).headers == [("X-Host", "<h>")]
    assert "Traceback" not in runner.log[log_start:]
