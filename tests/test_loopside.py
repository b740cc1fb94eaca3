"""Connections served on the event loop between their async calls: hand-overs, threads, bounds, drain."""

from __future__ import annotations

import json
import os
import signal
import socket
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from helpers import RUNNER_THREADS, SUITE_PLUGINS, act, run_in_threads, thread_count, wait_for

from runner.errors import ErrCode
from runner.testing import ApisixClient, RunnerProcess, decode_req_call_reply, encode_frame, req_call_req
from runner.testing.wire import err_code


def awaiting(**conf: object) -> list[tuple[str, str]]:
    return [("awaiting", json.dumps(conf))]


def _req(token: int, id: int = 1) -> bytes:
    return req_call_req(id=id, token=token, method="GET", path="/", args=[], headers=[], src_ip=b"\x7f\0\0\1")


def _on_loop(proc: RunnerProcess, token: int, count: int) -> list[ApisixClient]:
    """``count`` connections that have each had an async call answered (so they wait on the loop)."""
    clients = [proc.client() for _ in range(count)]
    for c in clients:
        assert c.http_req_call(token).headers == [("X-A", "1")]
    return clients


def test_one_connection_goes_between_the_loop_and_the_threads_with_every_reply_right(
    apisix_runner: RunnerProcess,
) -> None:
    with apisix_runner.client() as c:
        stop = c.prepare_conf(awaiting(stop={"status": 403, "body": "async no"}), key="route#1#ext-plugin-pre-req#1")
        sync = c.prepare_conf(act(vars_to_headers={"host": "X-Host"}), key="route#2#ext-plugin-pre-req#1")
        rewrite = c.prepare_conf(awaiting(vars_to_headers={"uri": "X-Uri"}), key="route#3#ext-plugin-pre-req#1")
        resp = c.prepare_conf([("awaiting_resp", '{"body_upper": true}')], key="route#4#ext-plugin-post-resp#1")

        out = c.http_req_call(stop)  # async: the connection moves to the loop
        assert (out.action, out.status, out.body) == ("stop", 403, b"async no")
        out = c.http_req_call(sync, vars={"host": "h1"})  # sync, read on the loop: a thread answers it
        assert (out.action, out.headers) == ("rewrite", [("X-Host", "<h1>")])
        out = c.http_req_call(rewrite, vars={"uri": "/a"})  # back to the loop, ExtraInfo asked from there
        assert (out.action, out.headers) == ("rewrite", [("X-Uri", "</a>")])
        late = c.prepare_conf(awaiting(set_headers={"X-Late": "1"}), key="route#5#ext-plugin-pre-req#1")  # a thread
        out = c.http_req_call(late)
        assert (out.action, out.headers) == ("rewrite", [("X-Late", "1")])
        out = c.http_resp_call(resp, headers=[("Content-Type", "text/plain")], body=b"up")  # async response phase
        assert out.body == b"UP"
        out = c.http_req_call(sync, vars={"host": "h2"})  # sync again, after an async response call
        assert (out.action, out.headers) == ("rewrite", [("X-Host", "<h2>")])
        out = c.http_req_call(stop)
        assert (out.action, out.status) == ("stop", 403)


def test_an_unknown_token_or_a_bad_frame_read_on_the_loop_gets_its_err_and_the_connection_goes_on(
    apisix_runner: RunnerProcess,
) -> None:
    with apisix_runner.client() as c:
        token = c.prepare_conf(awaiting(set_headers={"X-A": "1"}))
        for bad in (encode_frame(2, b"\xff" * 40), encode_frame(9, b"garbage!!")):
            assert c.http_req_call(token).headers == [("X-A", "1")]  # on the loop
            c.sock.sendall(bad)
            type_, payload = c.read_frame()
            assert (type_, err_code(payload)) == (0, ErrCode.BAD_REQUEST)
        assert c.http_req_call(token).headers == [("X-A", "1")]
        assert c.http_req_call(0xDEADBEEF).err == ErrCode.CONF_TOKEN_NOT_FOUND
        assert c.http_resp_call(0xDEADBEEF).err == ErrCode.CONF_TOKEN_NOT_FOUND
        assert c.http_req_call(token).headers == [("X-A", "1")]


def test_async_calls_are_answered_while_every_pool_thread_is_busy() -> None:
    with RunnerProcess(SUITE_PLUGINS, args=["--threads", "2", "--slow-call", "0.2"]) as proc, proc.client() as c:
        token = c.prepare_conf(awaiting(set_headers={"X-A": "1"}))
        sleeps = c.prepare_conf(act(sleep=3, set_headers={"X-S": "1"}), key="route#2#ext-plugin-pre-req#1")
        assert c.http_req_call(token).headers == [("X-A", "1")]  # now waiting on the loop
        done: list[int] = []

        def sleeper(i: int) -> None:
            with proc.client() as s:
                assert s.http_req_call(sleeps).headers == [("X-S", "1")]
                done.append(i)

        threads = [threading.Thread(target=sleeper, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: proc.log.count("call is slow") == 2, "both pool threads inside the sync plugin")
            assert c.http_req_call(token).headers == [("X-A", "1")]
            assert not done  # answered while no pool thread was free
        finally:
            for t in threads:
                t.join(30)
        assert sorted(done) == [0, 1]


def test_connections_waiting_on_the_loop_hold_no_thread() -> None:
    with RunnerProcess(SUITE_PLUGINS, args=["--threads", "4"]) as proc:
        assert proc.proc is not None
        with proc.client() as c:
            token = c.prepare_conf(awaiting(set_headers={"X-A": "1"}))
        clients: list[ApisixClient] = []
        try:
            run_in_threads(lambda: clients.extend(_on_loop(proc, token, 20)), [()] * 10)
            assert len(clients) == 200
            assert thread_count(proc.proc.pid) <= 4 + RUNNER_THREADS + 1
            answers = [c.http_req_call(token).headers for c in clients]  # from where each waits
            assert answers == [[("X-A", "1")]] * len(clients)
        finally:
            for c in clients:
                c.close()


def test_sigterm_closes_connections_waiting_on_the_loop_and_answers_calls_just_sent() -> None:
    with RunnerProcess(SUITE_PLUGINS, args=["--drain-timeout", "30"]) as proc:
        with proc.client() as c:
            token = c.prepare_conf(awaiting(set_headers={"X-A": "1"}))
            sync = c.prepare_conf(act(set_headers={"X-S": "1"}), key="route#2#ext-plugin-pre-req#1")
        clients = _on_loop(proc, token, 6)
        try:
            clients[0].send_frame(2, _req(token))  # answered on the loop
            clients[1].send_frame(2, _req(sync))  # answered by a thread the loop hands it to
            proc.send_signal(signal.SIGTERM)
            for c, header in ((clients[0], "X-A"), (clients[1], "X-S")):
                type_, payload = c.read_frame()
                assert type_ == 2 and decode_req_call_reply(payload).headers == [(header, "1")]
            for c in clients:  # then every connection is closed, the idle ones at once
                assert c.sock.recv(16) == b""
            assert proc.wait(10) == 0  # well within drain_timeout: no idle connection was waited for
        finally:
            for c in clients:
                c.close()
        assert "still busy" not in proc.log


def test_a_partial_frame_on_a_connection_waiting_on_the_loop_is_dropped_after_frame_timeout() -> None:
    with RunnerProcess(SUITE_PLUGINS, args=["--frame-timeout", "0.3"]) as proc:
        line = _dropped_with_a_warning(proc, _frame_start, "frame_timeout")
        assert "frame_timeout = 0.3" in line


def test_a_partial_frame_over_the_memory_budget_on_the_loop_is_dropped() -> None:
    with RunnerProcess(SUITE_PLUGINS, args=["--memory-budget", "1MiB"]) as proc:
        line = _dropped_with_a_warning(proc, lambda token: b"\x02\x20\x00\x00" + b"\0" * 1000, "memory_budget")
        assert "1048576" in line  # (a 2 MiB call began)


def _dropped_with_a_warning(proc: RunnerProcess, sent: Callable[[int], bytes], setting: str) -> str:
    """A connection on the loop that sends ``sent(token)`` is dropped without a reply, with a warning
    naming ``setting`` (returned), and the other connections go on."""
    with proc.client() as c:
        token = c.prepare_conf(awaiting(set_headers={"X-A": "1"}))
    (c,) = _on_loop(proc, token, 1)
    with c:
        c.sock.sendall(sent(token))
        assert c.sock.recv(16) == b""  # dropped, no reply
    wait_for(lambda: setting in proc.log, "the warning")
    line = next(x for x in proc.log.splitlines() if setting in x)
    assert "WARNING" in line
    (c,) = _on_loop(proc, token, 1)  # the others go on
    c.close()
    return line


def test_a_peer_closing_a_connection_waiting_on_the_loop_is_forgotten() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with RunnerProcess(SUITE_PLUGINS, args=["--metrics-port", str(port)]) as proc:
        with proc.client() as c:
            token = c.prepare_conf(awaiting(set_headers={"X-A": "1"}))
        wait_for(lambda: _connections(port) == 0, "the first connection gone")
        clients = _on_loop(proc, token, 5)
        assert _connections(port) == 5
        for c in clients:
            c.close()
        wait_for(lambda: _connections(port) == 0, "the closed connections forgotten")


def test_a_token_made_before_a_reload_keeps_its_chain_on_a_connection_on_the_loop() -> None:
    plugins = Path(f"/tmp/a6o-{os.getpid()}-{threading.get_ident() % 10000}")
    plugins.mkdir(mode=0o755)
    try:
        _version(plugins, "1")
        with RunnerProcess(plugins) as proc, proc.client() as c:
            old = c.prepare_conf([("version", "")])
            assert c.http_req_call(old).headers == [("X-Version", "1")]
            _version(plugins, "2")
            proc.send_signal(signal.SIGHUP)
            wait_for(lambda: "reloaded 1 plugin" in proc.log, "the reload")
            new = c.prepare_conf([("version", "")], key="route#2#ext-plugin-pre-req#1")
            assert c.http_req_call(new).headers == [("X-Version", "2")]
            assert c.http_req_call(old).headers == [("X-Version", "1")]
    finally:
        for f in plugins.iterdir():
            f.unlink()
        plugins.rmdir()


def _version(plugins: Path, version: str) -> None:
    source = f"""
        from runner import Plugin

        class Version(Plugin):
            async def filter(self, request, response):
                request.headers["X-Version"] = "{version}"
        """
    (plugins / "version.py").write_text(textwrap.dedent(source))


def _frame_start(token: int) -> bytes:
    payload = _req(token)
    return bytes([2]) + len(payload).to_bytes(3, "big") + payload[: len(payload) // 2]


def _connections(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    return int(next(x for x in lines if x.startswith("apisix_runner_connections ")).split()[1])


def test_a_call_timing_out_while_a_sync_step_waits_for_extra_info_leaves_the_loop_serving() -> None:
    with RunnerProcess(SUITE_PLUGINS, args=["--call-timeout", "0.5"]) as proc:
        with proc.client() as c:
            asks = c.prepare_conf(act(vars_to_headers={"host": "X-H"}) + awaiting(set_headers={"X-A": "1"}))
            token = c.prepare_conf(awaiting(set_headers={"X-A": "1"}), key="route#2#ext-plugin-pre-req#1")
        for _ in range(3):
            with proc.client() as c:
                c.send_frame(2, _req(asks))
                assert c.read_frame()[0] == 3  # the sync plugin's question, never answered
                assert c.read_frame()[0] == 0  # the 503 at the deadline
                assert c.sock.recv(16) == b""
            # The next connection (on the same descriptor number) is served on the loop between its calls.
            with proc.client(timeout=5) as c:
                for _ in range(3):
                    assert c.http_req_call(token).headers == [("X-A", "1")]


def test_frames_sent_ahead_of_their_replies_on_the_loop_are_all_answered_in_order() -> None:
    # APISIX never sends before its reply, but a peer that does loses nothing: what the loop's
    # reader took ahead goes with the connection to the thread that answers the sync calls.
    with RunnerProcess(SUITE_PLUGINS) as proc:
        with proc.client() as c:
            fast = c.prepare_conf(awaiting(set_headers={"X-A": "1"}))
            slow = c.prepare_conf(awaiting(sleep=0.3, set_headers={"X-B": "1"}), key="route#2#ext-plugin-pre-req#1")
            sync = c.prepare_conf(act(set_headers={"X-S": "1"}), key="route#3#ext-plugin-pre-req#1")
        (c,) = _on_loop(proc, fast, 1)
        with c:
            frames = [encode_frame(2, _req(token, id=i)) for i, token in enumerate((slow, sync, sync, fast), 10)]
            # Each in its own receive while the first one awaits: the reader holds two chunks ahead.
            for ahead in (frames[0], frames[1], frames[2] + frames[3]):
                c.sock.sendall(ahead)
                time.sleep(0.05)
            replies = []
            for _ in frames:
                type_, payload = c.read_frame()
                assert type_ == 2
                reply = decode_req_call_reply(payload)
                replies.append((reply.id, reply.headers))
        assert replies == [(10, [("X-B", "1")]), (11, [("X-S", "1")]), (12, [("X-S", "1")]), (13, [("X-A", "1")])]
