"""End to end: a fake APISIX talking to a real runner process over a Unix socket."""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import SUITE_PLUGINS, act, cli, fd_count, run_in_threads, wait_for

from runner.errors import ErrCode
from runner.frame import MAX_PAYLOAD
from runner.protocol import MessageType
from runner.testing import (
    ApisixClient,
    RunnerProcess,
    decode_req_call_reply,
    encode_frame,
    prepare_conf_req,
    req_call_req,
)


def test_stop_replies_status_headers_and_body(apisix: ApisixClient) -> None:
    token = apisix.prepare_conf(
        act(stop={"status": 403, "headers": [["X-Resp", "foo"], ["X-Same", "one"], ["X-Same", "two"]], "body": "no"})
    )
    reply = apisix.http_req_call(token, id=77)
    assert (reply.err, reply.id, reply.action, reply.status) == (None, 77, "stop", 403)
    assert reply.headers == [("X-Resp", "foo"), ("X-Same", "one"), ("X-Same", "two")]
    assert reply.body == b"no"


def test_rewrite_sends_only_what_changed(apisix: ApisixClient) -> None:
    token = apisix.prepare_conf(
        act(
            path="/new path",
            set_headers={"X-Change": "bar", "X-Add": "new"},
            del_headers=["x-delete"],
            set_args={"c": "bar"},
            add_args=[["a", "foo"], ["a", "bar"]],
            del_args=["d"],
            body="new body",
            resp_headers=[["X-Resp", "1"], ["X-Resp", "2"]],
        )
    )
    reply = apisix.http_req_call(
        token,
        path="/old",
        headers=[("x-change", "foo"), ("x-delete", "1"), ("x-keep", "a"), ("x-keep", "b")],
        args=[("c", "foo"), ("d", "bar"), ("keep", "1")],
    )
    assert reply.action == "rewrite"
    assert reply.path == "/new path"
    assert sorted(reply.headers, key=str) == sorted(
        [("X-Change", "bar"), ("X-Add", "new"), ("x-delete", None)], key=str
    )
    assert sorted(reply.args, key=str) == sorted([("c", "bar"), ("a", "foo"), ("a", "bar"), ("d", None)], key=str)
    assert reply.resp_headers == [("X-Resp", "1"), ("X-Resp", "2")]
    assert reply.body == b"new body"


def test_rewrite_of_a_repeated_arg_sends_every_value_in_order(apisix: ApisixClient) -> None:
    token = apisix.prepare_conf(act(add_args=[["xx", "3"]]))
    reply = apisix.http_req_call(token, args=[("xx", "1"), ("xx", "2"), ("y", "")])
    assert reply.action == "rewrite"
    assert reply.args == [("xx", "1"), ("xx", "2"), ("xx", "3")]
    assert reply.path is None and reply.headers == []


def test_read_only_plugin_replies_no_action(apisix: ApisixClient) -> None:
    token = apisix.prepare_conf(act(read=True))
    reply = apisix.http_req_call(
        token,
        id=5,
        headers=[("x-req", "foo"), ("x-req", "bar"), ("host", "localhost")],
        args=[("a", "1"), ("a", "2"), ("flag", None)],
    )
    assert (reply.err, reply.id, reply.action) == (None, 5, "none")


def test_route_without_conf_replies_no_action(apisix: ApisixClient) -> None:
    token = apisix.prepare_conf(None)
    assert apisix.http_req_call(token).action == "none"
    assert apisix.http_resp_call(token, headers=[("Content-Type", "text/html")]).err is None


def test_chained_plugins_run_in_order_and_rewrites_accumulate(apisix: ApisixClient) -> None:
    token = apisix.prepare_conf([("marker", '"a"'), ("act", json.dumps({"set_args": {"x": "1"}})), ("marker", '"b"')])
    reply = apisix.http_req_call(token)
    assert reply.action == "rewrite"
    assert reply.headers == [("X-Chain", "ab")]
    assert reply.args == [("x", "1")]


def test_first_stop_ends_the_chain(apisix: ApisixClient) -> None:
    token = apisix.prepare_conf(
        [("marker", '"a"'), ("act", json.dumps({"stop": {"status": 401}})), ("act", json.dumps({"raise": "never"}))]
    )
    reply = apisix.http_req_call(token)
    assert (reply.err, reply.action, reply.status) == (None, "stop", 401)


def test_seed_style_plugin_works_unchanged(apisix: ApisixClient) -> None:
    token = apisix.prepare_conf([("tag", '{"tag": "seed", "stop": true}')])
    reply = apisix.http_req_call(token, headers=[("host", "example.com")])
    assert (reply.action, reply.status, reply.body) == ("stop", 201, b"tagged")
    assert reply.headers == [("host", "example.com"), ("X-Tag", "seed")]
    token = apisix.prepare_conf([("Tag", '{"tag": "seed"}')], key="route#2#ext-plugin-pre-req#1")
    reply = apisix.http_req_call(token)
    assert (reply.action, reply.headers) == ("rewrite", [("X-Tag", "seed")])


def test_unknown_token_replies_conf_token_not_found(apisix: ApisixClient) -> None:
    reply = apisix.http_req_call(0xDEADBEEF)
    assert reply.err == ErrCode.CONF_TOKEN_NOT_FOUND
    assert apisix.http_resp_call(0xDEADBEEF).err == ErrCode.CONF_TOKEN_NOT_FOUND
    # APISIX closes after an Err, but the runner keeps the connection in sync anyway.
    assert apisix.http_req_call(apisix.prepare_conf(None)).action == "none"


def test_plugin_exception_replies_service_unavailable_and_is_logged(
    apisix_runner: RunnerProcess, apisix: ApisixClient
) -> None:
    token = apisix.prepare_conf(act(**{"raise": "kaboom-4711"}))
    assert apisix.http_req_call(token, id=4711).err == ErrCode.SERVICE_UNAVAILABLE
    assert apisix.http_req_call(apisix.prepare_conf(None)).action == "none"  # same connection lives on
    lines = [line for line in apisix_runner.log.splitlines() if "kaboom-4711" in line]
    assert lines and "plugin 'act' raised RuntimeError in filter" in lines[0] and "request_id=4711" in lines[0]
    assert "Traceback" in apisix_runner.log


@pytest.mark.parametrize(
    ("conf", "reason"),
    [
        ([("no_such_plugin", "{}")], "unknown plugin 'no_such_plugin'"),
        ([("act", "{not json")], "conf of plugin 'act' is not JSON"),
        ([("strict", '{"ok": false}')], "plugin 'strict' rejected its conf"),
        ([("marker", '"a"'), ("strict", "[]")], "plugin 'strict' rejected its conf"),
    ],
)
def test_bad_conf_gets_a_token_whose_calls_fail_closed(
    apisix_runner: RunnerProcess, apisix: ApisixClient, conf: list[tuple[str, str]], reason: str
) -> None:
    key = f"route#bad#{reason}"
    token = apisix.prepare_conf(conf, key=key, check=False)
    for reply in [apisix.http_req_call(token) for _ in range(3)] + [apisix.http_resp_call(token)]:
        assert reply.err == ErrCode.SERVICE_UNAVAILABLE and reply.reason is not None and reason in reply.reason
    logged = [line for line in apisix_runner.log.splitlines() if f"conf token {token} " in line and "ERROR" in line]
    assert len(logged) == 1 and reason in logged[0]


def test_configure_may_accept_and_convert_the_conf(apisix: ApisixClient) -> None:
    token = apisix.prepare_conf([("strict", '{"ok": true}')])
    assert apisix.http_req_call(token).headers == [("X-Strict", "ran")]


def test_same_key_returns_the_same_live_token_and_a_new_one_for_a_new_conf(apisix: ApisixClient) -> None:
    key = "route#9#ext-plugin-pre-req#3"
    first = apisix.prepare_conf(act(read=True), key=key)
    assert apisix.prepare_conf(act(read=True), key=key) == first
    assert apisix.prepare_conf(act(path="/x"), key=key) != first
    assert apisix.prepare_conf(act(read=True), key="route#9#ext-plugin-pre-req#4") != first


def test_tokens_are_distinct_and_never_zero(apisix: ApisixClient) -> None:
    tokens = {apisix.prepare_conf(None, key=f"route#{i}#ext-plugin-pre-req#1") for i in range(50)}
    assert len(tokens) == 50 and 0 not in tokens


def test_nested_connection_prepares_while_the_call_connection_waits(apisix_runner: RunnerProcess) -> None:
    # APISIX's order on an empty pool: connect A, connect B, PrepareConf on B, then the call on A.
    with apisix_runner.client() as a, apisix_runner.client() as b:
        token = b.prepare_conf(act(set_headers={"X-A": "1"}))
        assert a.http_req_call(token).headers == [("X-A", "1")]


def test_hundred_concurrent_connections_each_get_their_own_answers(apisix_runner: RunnerProcess) -> None:
    with apisix_runner.client() as c:
        tokens = [c.prepare_conf(act(set_headers={"X-N": str(i)}), key=f"route#{i}#c#1") for i in range(100)]
    barrier = threading.Barrier(100)
    failures: list[str] = []

    def worker(i: int) -> None:
        with apisix_runner.client() as conn:
            barrier.wait(timeout=30)
            for j in range(20):
                reply = conn.http_req_call(tokens[i], id=i * 1000 + j)
                if reply.id != i * 1000 + j or reply.headers != [("X-N", str(i))]:
                    failures.append(f"conn {i} call {j}: {reply}")

    run_in_threads(worker, [(i,) for i in range(100)])
    assert failures == []


def _payload_of_exactly(size: int) -> bytes:
    """A PrepareConf payload of ``size`` bytes: a big conf value, then trailing bytes
    (a FlatBuffer is read from its root offset, so bytes after it are legal)."""
    payload = prepare_conf_req([("act", '{"pad": "' + "x" * (size - 200) + '"}')], "k")
    return payload + b"\0" * (size - len(payload))


def test_frame_of_the_maximum_size_is_read(apisix: ApisixClient) -> None:
    payload = _payload_of_exactly(MAX_PAYLOAD)
    apisix.send_frame(MessageType.PREPARE_CONF, payload)
    type_, reply = apisix.read_frame()
    assert type_ == MessageType.PREPARE_CONF
    token = struct.unpack_from("<I", reply, len(reply) - 4)[0]
    assert apisix.http_req_call(token).action == "none"


def test_reply_over_the_frame_limit_becomes_service_unavailable(apisix: ApisixClient) -> None:
    token = apisix.prepare_conf(act(stop={"status": 200, "body": "x", "repeat": MAX_PAYLOAD}))
    assert apisix.http_req_call(token).err == ErrCode.SERVICE_UNAVAILABLE
    assert apisix.http_req_call(apisix.prepare_conf(None)).action == "none"


def test_frames_delivered_one_byte_at_a_time(apisix: ApisixClient) -> None:
    token = apisix.prepare_conf(act(set_headers={"X-Slow": "yes"}))
    frame = encode_frame(
        MessageType.HTTP_REQ_CALL,
        req_call_req(id=9, token=token, method="POST", path="/p", args=[("a", "1")], headers=[], src_ip=b"\0" * 16),
    )
    for i in range(len(frame)):
        apisix.sock.sendall(frame[i : i + 1])
    type_, payload = apisix.read_frame()
    assert type_ == MessageType.HTTP_REQ_CALL
    reply = decode_req_call_reply(payload)
    assert (reply.id, reply.headers) == (9, [("X-Slow", "yes")])


def test_two_frames_in_one_write_get_two_replies_in_order(apisix: ApisixClient) -> None:
    token = apisix.prepare_conf(act(set_headers={"X-Two": "1"}))
    call = req_call_req(id=1, token=token, method="GET", path="/", args=[], headers=[], src_ip=b"\x7f\0\0\1")
    apisix.sock.sendall(
        encode_frame(2, call) + encode_frame(2, call.replace(b"\x01\x00\x00\x00", b"\x02\x00\x00\x00", 1))
    )
    first, second = apisix.read_frame(), apisix.read_frame()
    assert first[0] == second[0] == MessageType.HTTP_REQ_CALL
    assert decode_req_call_reply(first[1]).headers == [("X-Two", "1")]


@pytest.mark.parametrize(
    "frame",
    [
        encode_frame(0, b"\x00" * 12),  # Err is never a request
        encode_frame(3, b"\x00" * 12),  # ExtraInfo answer outside a call
        encode_frame(9, b"garbage!!"),  # unknown type
        b"\x02\x00\x00\x00",  # zero-length payload
        encode_frame(2, b"\xff" * 40),  # valid type, garbage payload
        encode_frame(1, b"\x04\x00\x00\x00" + b"\x00" * 4),  # truncated table
    ],
    ids=["type0", "type3", "type9", "empty", "garbage", "truncated"],
)
def test_undecodable_frame_replies_bad_request_and_stays_in_sync(apisix: ApisixClient, frame: bytes) -> None:
    apisix.sock.sendall(frame)
    type_, payload = apisix.read_frame()
    assert type_ == MessageType.ERROR
    from A6.Err.Resp import Resp

    assert Resp.GetRootAs(payload, 0).Code() == ErrCode.BAD_REQUEST
    assert apisix.http_req_call(apisix.prepare_conf(None)).action == "none"


def test_random_garbage_never_takes_the_runner_down(apisix_runner: RunnerProcess) -> None:
    import random

    rng = random.Random(1234)
    for _ in range(30):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(apisix_runner.socket_path)
            s.sendall(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))))
    with apisix_runner.client() as c:
        assert c.http_req_call(c.prepare_conf(None)).action == "none"


def test_eof_inside_a_frame_drops_only_that_connection(apisix_runner: RunnerProcess) -> None:
    with apisix_runner.client() as other:
        token = other.prepare_conf(act(set_headers={"X-Ok": "1"}))
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(apisix_runner.socket_path)
            s.sendall(b"\x02\x01\x00\x00" + b"x")  # announces 65536 bytes, sends 1, closes
        assert other.http_req_call(token).headers == [("X-Ok", "1")]


def test_socket_is_writable_by_apisix_workers_and_removed_on_sigterm() -> None:
    with RunnerProcess(SUITE_PLUGINS) as proc:
        assert stat.S_IMODE(os.stat(proc.socket_path).st_mode) == 0o766
        assert proc.stop() == 0
        assert not os.path.exists(proc.socket_path)


# --- limits and who gets in --------------------------------------------------------


def test_connections_beyond_max_connections_are_refused_with_a_log_line() -> None:
    with RunnerProcess(SUITE_PLUGINS, args=["--max-connections", "3"]) as proc:
        kept = [proc.client() for _ in range(3)]
        try:
            for c in kept:
                assert c.http_req_call(c.prepare_conf(None)).action == "none"
            with proc.client() as extra:
                assert extra.sock.recv(16) == b""  # closed at once
            wait_for(lambda: "max_connections = 3" in proc.log, "the refusal line")
        finally:
            for c in kept:
                c.close()

        def served() -> bool:  # room again, once the runner has seen the closes (a refused one: EOF)
            with proc.client() as c:
                try:
                    return c.http_req_call(c.prepare_conf(None)).action == "none"
                except (OSError, EOFError):
                    return False

        wait_for(served, "a connection served again after the others closed")


def test_accept_at_the_descriptor_limit_is_logged_once_and_recovers() -> None:
    proc = RunnerProcess(SUITE_PLUGINS, args=["--threads", "2"])
    limit = "import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (100, 100)); " + (
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    proc.argv = [sys.executable, "-c", limit, *proc.argv]
    with proc:
        assert proc.proc is not None
        with proc.client() as holder:
            spare = 100 - fd_count(proc.proc.pid) - 3  # (room for what the call itself opens)
            token = holder.prepare_conf(act(hold_fds=spare))
            assert holder.http_req_call(token).err is None  # the runner has (almost) no descriptor left
            waiting = [proc.client(timeout=20) for _ in range(6)]  # the last ones wait in the backlog
            wait_for(lambda: "cannot accept APISIX connections" in proc.log, "the EMFILE line")
            release = holder.prepare_conf(act(close_fds=True), key="route#2#ext-plugin-pre-req#1")
            assert holder.http_req_call(release).err is None
        for c in waiting:
            with c:
                assert c.http_req_call(c.prepare_conf(None)).action == "none"
        log = proc.log
    errors = [x for x in log.splitlines() if "cannot accept APISIX connections" in x]
    assert len(errors) == 1
    assert "Too many open files" in errors[0] and "soft 100, hard 100" in errors[0]
    assert "accepting connections again" in log


NOBODY = 65534
AS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another user (setuid)")
# A child that drops to UID:GID once everything is imported, then makes one call as APISIX would.
CALL_AS = """
import os, sys
from runner.testing import ApisixClient
os.setgroups([])
os.setgid(int(sys.argv[3]))
os.setuid(int(sys.argv[2]))
try:
    with ApisixClient(sys.argv[1], 10.0) as c:
        print(c.http_req_call(c.prepare_conf(None)).action)
except (OSError, EOFError) as e:
    print("refused")
"""


def _call_as(path: str, uid: int, gid: int) -> str:
    argv = [sys.executable, "-c", CALL_AS, path, str(uid), str(gid)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout.strip()


@AS_ROOT
def test_a_peer_not_in_allowed_uids_is_refused_and_logged_once(short_dir: Path) -> None:
    path = str(short_dir / "r.sock")  # mode 0766 in a 0755 directory: anyone may connect
    with RunnerProcess(SUITE_PLUGINS, socket_path=path, args=["--allowed-uids", "12345"]) as proc:
        assert _call_as(path, NOBODY, NOBODY) == "refused"
        wait_for(lambda: "refusing a connection" in proc.log, "the refusal line")
        refusals = [line for line in proc.log.splitlines() if "refusing a connection" in line]
        assert len(refusals) == 1
        assert f"uid {NOBODY} gid {NOBODY} is not in allowed_uids/allowed_gids" in refusals[0]


def test_root_and_the_runners_own_uid_get_in_whatever_allowed_uids_lists() -> None:
    # The runner's own `health` probe runs as its user; root could get in anyway.
    with RunnerProcess(SUITE_PLUGINS, args=["--allowed-uids", "12345"]) as proc, proc.client() as c:
        assert os.geteuid() in (0, os.getuid())
        assert c.http_req_call(c.prepare_conf(None)).action == "none"
        assert cli("health", "--socket", proc.socket_path).stdout.strip() == "ok"
        assert "refusing a connection" not in proc.log


@AS_ROOT
@pytest.mark.parametrize("setting", [["--allowed-uids", f"12345,{NOBODY}"], ["--allowed-gids", str(NOBODY)]])
def test_a_peer_in_allowed_uids_or_gids_gets_in(short_dir: Path, setting: list[str]) -> None:
    path = str(short_dir / "r.sock")
    with RunnerProcess(SUITE_PLUGINS, socket_path=path, args=setting):
        assert _call_as(path, NOBODY, NOBODY) == "none"
        assert _call_as(path, NOBODY - 1, NOBODY - 1) == "refused"  # in neither list


def test_tokens_on_the_wire_are_not_sequential(apisix: ApisixClient) -> None:
    tokens = [apisix.prepare_conf(None, key=f"route#{i}#ext-plugin-pre-req#1") for i in range(50)]
    assert len(set(tokens)) == 50
    assert not {abs(b - a) for a, b in zip(tokens, tokens[1:], strict=False)} & set(range(1, 1000))


def test_a_conf_value_over_1_mib_gives_a_token_whose_calls_fail_closed(apisix_runner: RunnerProcess) -> None:
    value = json.dumps({"pad": "x" * (1 << 20)})
    with apisix_runner.client() as c:
        token = c.prepare_conf([("act", value)], key="route#huge#ext-plugin-pre-req#1", check=False)
        assert c.http_req_call(token).err == ErrCode.SERVICE_UNAVAILABLE
    assert f"conf token {token} (key 'route#huge#ext-plugin-pre-req#1') fails every call" in apisix_runner.log
    assert f"conf of plugin 'act' is {len(value)} bytes, over the 1048576 limit" in apisix_runner.log


def test_a_call_with_more_than_65536_headers_gets_bad_request(apisix: ApisixClient) -> None:
    token = apisix.prepare_conf(act(read=True))  # a plugin that reads the headers
    headers = [(f"h{i}", "v") for i in range(65_537)]
    assert apisix.http_req_call(token, headers=headers).err == ErrCode.BAD_REQUEST
    assert apisix.http_req_call(token, headers=headers[:1000]).err is None  # same connection, still in sync


def test_calls_on_unknown_tokens_are_logged_but_not_once_each() -> None:
    with RunnerProcess(SUITE_PLUGINS) as proc:
        with proc.client() as c:
            for token in range(900_000, 900_200):
                assert c.http_req_call(token).err == ErrCode.CONF_TOKEN_NOT_FOUND
        lines = [x for x in proc.log.splitlines() if "conf token 900" in x and "is unknown" in x]
    assert lines and all("WARNING" in x for x in lines)
    assert len(lines) < 20  # throttled: a flood of guesses cannot flood the log
