"""ExtraInfo round trips (variables, request and response bodies) and the response phase, end to end."""

from __future__ import annotations

import hashlib

from helpers import act

from runner.errors import ErrCode
from runner.protocol import MessageType
from runner.testing import ApisixClient, RunnerProcess, encode_frame, req_call_req


def test_var_present_absent_and_empty_are_told_apart(apisix: ApisixClient) -> None:
    token = apisix.prepare_conf(act(vars_to_headers={"host": "X-Host", "nope": "X-Nope", "arg_x": "X-Arg"}))
    reply = apisix.http_req_call(token, vars={"host": "example.com", "arg_x": ""})
    assert dict(reply.headers) == {"X-Host": "<example.com>", "X-Nope": "<absent>", "X-Arg": "<>"}
    assert reply.asked == [("var", "host"), ("var", "nope"), ("var", "arg_x")]


def test_var_is_asked_once_per_call_and_name(apisix: ApisixClient) -> None:
    conf = [("act", '{"vars_to_headers": {"route_id": "X-A"}}'), ("act", '{"vars_to_headers": {"route_id": "X-B"}}')]
    token = apisix.prepare_conf(conf)
    reply = apisix.http_req_call(token, vars={"route_id": "1"})
    assert reply.asked == [("var", "route_id")]
    assert dict(reply.headers) == {"X-A": "<1>", "X-B": "<1>"}
    # The next call asks again: answers are cached per call, not across calls.
    assert apisix.http_req_call(token, vars={"route_id": "2"}).asked == [("var", "route_id")]


def test_non_utf8_var_survives_unchanged(apisix: ApisixClient) -> None:
    token = apisix.prepare_conf(act(vars_to_headers={"cookie_x": "X-Cookie"}))
    raw = b"\xff\xfe caf\xc3\xa9".decode("utf-8", "surrogateescape")
    reply = apisix.http_req_call(token, vars={"cookie_x": raw})
    assert reply.headers == [("X-Cookie", f"<{raw}>")]


def _digest(body: bytes) -> str:
    return f"{len(body)}:{hashlib.sha256(body).hexdigest()}"


def test_absent_request_body_reads_as_empty(apisix: ApisixClient) -> None:
    token = apisix.prepare_conf(act(body_digest="X-Digest"))
    reply = apisix.http_req_call(token, body=None)
    assert reply.headers == [("X-Digest", _digest(b""))]
    assert reply.asked == [("req_body", "")]


def test_request_bodies_small_binary_and_large_arrive_intact(apisix: ApisixClient) -> None:
    token = apisix.prepare_conf(act(body_digest="X-Digest"))
    for body in (b"hello", bytes(range(256)) * 4, bytes(range(256)) * (8 * 4096)):  # 8 MiB last
        reply = apisix.http_req_call(token, method="POST", body=body)
        assert reply.headers == [("X-Digest", _digest(body))]


def test_body_read_twice_is_asked_once_and_reading_is_not_a_rewrite(apisix: ApisixClient) -> None:
    token = apisix.prepare_conf([("act", '{"body_digest": "X-A"}'), ("act", '{"body_digest": "X-B"}')])
    reply = apisix.http_req_call(token, method="POST", body=b"abc")
    assert reply.asked == [("req_body", "")]
    assert reply.body is None  # only the headers changed


def test_body_assignment_rewrites_the_request_body(apisix: ApisixClient) -> None:
    token = apisix.prepare_conf(act(body="replaced \u00e9"))
    reply = apisix.http_req_call(token, method="POST")
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


def test_response_phase_noop_echoes_headers_without_status_or_body(apisix: ApisixClient) -> None:
    token = apisix.prepare_conf(act(read=True), key="route#1#ext-plugin-post-resp#1")
    reply = apisix.http_resp_call(token, id=31, status=200, headers=UPSTREAM, body=b'{"a": "b"}')
    assert (reply.err, reply.id, reply.status, reply.body) == (None, 31, 0, None)
    assert reply.headers == FORWARDED  # Content-Type kept, original case and repeats kept
    assert reply.asked == []


def test_response_phase_header_change(apisix: ApisixClient) -> None:
    token = apisix.prepare_conf(
        act(
            resp={
                "set_headers": {"x-upstream": "changed"},
                "add_headers": [["X-New", "1"]],
                "del_headers": ["SET-COOKIE"],
            }
        )
    )
    reply = apisix.http_resp_call(token, headers=UPSTREAM)
    assert reply.headers == [
        ("Content-Type", "application/json"),
        ("x-upstream", "changed"),
        ("X-New", "1"),
        ("Set-Cookie", None),  # deleted: an entry without a value
    ]
    assert (reply.status, reply.body) == (0, None)


def test_response_phase_deleting_the_only_header_still_sends_a_deletion(apisix: ApisixClient) -> None:
    token = apisix.prepare_conf(act(resp={"del_headers": ["X-Internal-Secret"]}))
    reply = apisix.http_resp_call(token, headers=[("X-Internal-Secret", "s"), ("Content-Length", "2")])
    assert reply.headers == [("X-Internal-Secret", None)]  # never empty, which would copy every upstream header


def test_response_phase_status_change(apisix: ApisixClient) -> None:
    token = apisix.prepare_conf(act(resp={"status": 304}))
    reply = apisix.http_resp_call(token, status=200, headers=UPSTREAM)
    assert (reply.status, reply.headers) == (304, FORWARDED)


def test_response_phase_body_read_and_replaced(apisix: ApisixClient) -> None:
    token = apisix.prepare_conf(act(resp={"body_upper": True}))
    reply = apisix.http_resp_call(token, headers=UPSTREAM, body=b'{"a": "b"}')
    assert reply.body == b'{"A": "B"}'
    assert reply.asked == [("resp_body", "")]
    assert ("Content-Length", "13") not in reply.headers


def test_response_phase_body_asked_once_across_plugins(apisix: ApisixClient) -> None:
    token = apisix.prepare_conf([("act", '{"resp": {"body_upper": true}}')] * 2)
    reply = apisix.http_resp_call(token, headers=UPSTREAM, body=b"abc")
    assert reply.asked == [("resp_body", "")]
    assert reply.body == b"ABC"


def test_response_phase_vars(apisix: ApisixClient) -> None:
    token = apisix.prepare_conf(act(resp={"vars_to_headers": {"uri": "X-Uri", "nope": "X-Nope"}}))
    reply = apisix.http_resp_call(token, headers=[("Content-Type", "text/plain")], vars={"uri": "/hello"})
    assert reply.headers == [("Content-Type", "text/plain"), ("X-Uri", "</hello>"), ("X-Nope", "<absent>")]


def test_request_phase_only_plugins_are_skipped_in_the_response_phase(apisix: ApisixClient) -> None:
    token = apisix.prepare_conf([("marker", '"a"')])
    reply = apisix.http_resp_call(token, headers=UPSTREAM)
    assert (reply.err, reply.headers, reply.status) == (None, FORWARDED, 0)


def test_response_filter_exception_replies_service_unavailable(
    apisix_runner: RunnerProcess, apisix: ApisixClient
) -> None:
    token = apisix.prepare_conf(act(resp={"raise": "resp-boom-99"}))
    assert apisix.http_resp_call(token, id=99).err == ErrCode.SERVICE_UNAVAILABLE
    line = next(line for line in apisix_runner.log.splitlines() if "resp-boom-99" in line)
    assert "plugin 'act' raised RuntimeError in response_filter" in line
    assert apisix.http_resp_call(apisix.prepare_conf(None)).err is None


def test_apisix_closing_during_an_extra_info_question_abandons_only_that_call(apisix_runner: RunnerProcess) -> None:
    log_start = len(apisix_runner.log)
    with apisix_runner.client() as other:
        token = other.prepare_conf(act(vars_to_headers={"host": "X-Host"}))
        with apisix_runner.client() as dying:
            dying.send_frame(
                MessageType.HTTP_REQ_CALL,
                req_call_req(id=1, token=token, method="GET", path="/", args=[], headers=[], src_ip=b"\x7f\0\0\1"),
            )
            assert dying.read_frame()[0] == MessageType.EXTRA_INFO
        # ...closed without answering; the runner must not reply there nor fall over.
        assert other.http_req_call(token, vars={"host": "h"}).headers == [("X-Host", "<h>")]
    assert "Traceback" not in apisix_runner.log[log_start:]


def test_wrong_frame_type_instead_of_an_answer_abandons_the_call(apisix_runner: RunnerProcess) -> None:
    log_start = len(apisix_runner.log)
    with apisix_runner.client() as c:
        token = c.prepare_conf(act(vars_to_headers={"host": "X-Host"}))
        call = req_call_req(id=1, token=token, method="GET", path="/", args=[], headers=[], src_ip=b"\x7f\0\0\1")
        c.send_frame(MessageType.HTTP_REQ_CALL, call)
        assert c.read_frame()[0] == MessageType.EXTRA_INFO
        c.sock.sendall(encode_frame(MessageType.HTTP_REQ_CALL, call))
        assert c.sock.recv(1) == b""  # closed without a reply
    with apisix_runner.client() as c:
        assert c.http_req_call(token, vars={"host": "h"}).headers == [("X-Host", "<h>")]
    assert "Traceback" not in apisix_runner.log[log_start:]


def test_questions_from_several_plugin_threads_are_answered_one_at_a_time(apisix: ApisixClient) -> None:
    names = {f"v{i}": f"X-V{i}" for i in range(8)}
    token = apisix.prepare_conf(act(threaded_vars=names))
    for _ in range(10):
        reply = apisix.http_req_call(token, vars={n: n.upper() for n in names})
        assert dict(reply.headers) == {h: f"<{n.upper()}>" for n, h in names.items()}
        assert sorted(reply.asked) == sorted(("var", n) for n in names)


def test_a_request_kept_past_its_call_cannot_ask_inside_another(apisix: ApisixClient) -> None:
    keep = apisix.prepare_conf(act(stash=True))
    use = apisix.prepare_conf(act(use_stash=True), key="route#2#ext-plugin-pre-req#1")
    assert apisix.http_req_call(keep).err is None
    reply = apisix.http_req_call(use, vars={"host": "other call"})
    assert reply.err == ErrCode.SERVICE_UNAVAILABLE
    assert reply.asked == []  # nothing went out on the wire for the stale request
