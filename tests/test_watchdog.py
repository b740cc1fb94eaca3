"""Call deadlines: a plugin that hangs gets its calls answered 503 and cannot eat the pool."""

from __future__ import annotations

import socket
import urllib.request

from helpers import RUNNER_THREADS, TEST_PLUGINS, act, fd_count, thread_count, wait_for

from runner.errors import ErrCode
from runner.testing import RunnerProcess


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_call_past_call_timeout_gets_503_and_its_connection_closed_with_a_log_line() -> None:
    with RunnerProcess(TEST_PLUGINS, args=["--call-timeout", "0.3", "--threads", "2"]) as proc:
        with proc.client() as c:
            reply = c.http_req_call(c.prepare_conf(act(hang=True)), id=42)
            assert reply.err == ErrCode.SERVICE_UNAVAILABLE
            assert c.sock.recv(16) == b""  # closed after the Err frame
        wait_for(lambda: "timed out" in proc.log, "the log line")
        line = next(x for x in proc.log.splitlines() if "timed out" in x)
        assert "ERROR" in line and "plugin 'act'" in line and "request_id=42" in line
        assert "threading.Event().wait()" in proc.log  # the stuck thread's stack, down to the plugin line
        with proc.client() as c:  # the pool still has its two threads
            for _ in range(3):
                assert c.http_req_call(c.prepare_conf(None)).action == "none"


def test_stuck_calls_release_their_descriptors_and_cost_one_thread_each() -> None:
    with RunnerProcess(TEST_PLUGINS, args=["--call-timeout", "0.2", "--threads", "2"]) as proc:
        assert proc.proc is not None
        pid = proc.proc.pid
        with proc.client() as c:
            token = c.prepare_conf(act(hang=True))
        fds_before = fd_count(pid)
        for i in range(5):
            with proc.client() as c:
                assert c.http_req_call(token, id=i).err == ErrCode.SERVICE_UNAVAILABLE
        wait_for(lambda: fd_count(pid) <= fds_before, "the stuck calls' descriptors to be closed")
        assert thread_count(pid) <= 2 + RUNNER_THREADS + 5  # the pool, the runner's own threads, one per stuck call


def test_a_plugin_with_too_many_stuck_calls_fails_fast() -> None:
    args = ["--call-timeout", "0.2", "--max-stuck-calls", "2", "--threads", "2"]
    with RunnerProcess(TEST_PLUGINS, args=args) as proc:
        assert proc.proc is not None
        with proc.client() as c:
            token = c.prepare_conf(act(hang=True))
        for _ in range(2):
            with proc.client() as c:
                assert c.http_req_call(token).err == ErrCode.SERVICE_UNAVAILABLE
        threads = thread_count(proc.proc.pid)
        with proc.client() as c:
            for _ in range(5):  # answered at once, without starting the plugin again
                assert c.http_req_call(token).err == ErrCode.SERVICE_UNAVAILABLE
        assert thread_count(proc.proc.pid) == threads
        assert "has 2 calls stuck past call_timeout" in proc.log
        with proc.client() as c:  # other plugins are not affected
            token = c.prepare_conf([("marker", '"x"')], key="route#2#ext-plugin-pre-req#1")
            assert c.http_req_call(token).headers == [("X-Chain", "x")]


def test_a_slow_call_is_logged_once_with_its_stack_and_still_answered() -> None:
    with RunnerProcess(TEST_PLUGINS, args=["--slow-call", "0.1"]) as proc, proc.client() as c:
        reply = c.http_req_call(c.prepare_conf(act(sleep=0.5, set_headers={"X-Done": "1"})))
        assert reply.headers == [("X-Done", "1")]
        slow = [x for x in proc.log.splitlines() if "is slow" in x]
        assert len(slow) == 1 and "WARNING" in slow[0] and "plugin 'act'" in slow[0]
        assert "time.sleep" in proc.log


def test_stuck_calls_are_a_metric() -> None:
    port = _free_port()
    args = ["--call-timeout", "0.2", "--metrics-port", str(port)]
    with RunnerProcess(TEST_PLUGINS, args=args) as proc, proc.client() as c:
        assert c.http_req_call(c.prepare_conf(act(hang=True))).err == ErrCode.SERVICE_UNAVAILABLE
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    assert 'apisix_runner_stuck_calls{plugin="act"} 1' in text.splitlines()


def test_a_plugin_reads_the_time_left_before_its_deadline() -> None:
    with RunnerProcess(TEST_PLUGINS, args=["--call-timeout", "30"]) as proc, proc.client() as c:
        reply = c.http_req_call(c.prepare_conf(act(deadline_header="X-Left")))
        left = float(dict(reply.headers)["X-Left"])
        assert 0 < left <= 30
