"""Call deadlines: a plugin that hangs gets its calls answered 503 and cannot eat the pool."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

from A6.Err.Resp import Resp as ErrResp
from helpers import RUNNER_THREADS, SUITE_PLUGINS, act, fd_count, thread_count, wait_for

from runner.errors import ErrCode
from runner.testing import RunnerProcess, prepare_conf_req, req_call_req

_IP = b"\x7f\0\0\1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_call_past_call_timeout_gets_503_and_its_connection_closed_with_a_log_line() -> None:
    with RunnerProcess(SUITE_PLUGINS, args=["--call-timeout", "0.3", "--threads", "2"]) as proc:
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
    with RunnerProcess(SUITE_PLUGINS, args=["--call-timeout", "0.2", "--threads", "2"]) as proc:
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
    with RunnerProcess(SUITE_PLUGINS, args=args) as proc:
        assert proc.proc is not None
        with proc.client() as c:
            token = c.prepare_conf(act(hang=True))
        threads = thread_count(proc.proc.pid) + 2  # each stuck call keeps its thread; the pool starts another
        for _ in range(2):
            with proc.client() as c:
                assert c.http_req_call(token).err == ErrCode.SERVICE_UNAVAILABLE
        # The 503 goes out before the watchdog starts the replacement thread: count once both are there.
        wait_for(lambda: thread_count(proc.proc.pid) == threads, "the replacement threads")
        with proc.client() as c:
            for _ in range(5):  # answered at once, without starting the plugin again
                assert c.http_req_call(token).err == ErrCode.SERVICE_UNAVAILABLE
        assert thread_count(proc.proc.pid) == threads
        assert "has 2 calls stuck past call_timeout" in proc.log
        with proc.client() as c:  # other plugins are not affected
            token = c.prepare_conf([("marker", '"x"')], key="route#2#ext-plugin-pre-req#1")
            assert c.http_req_call(token).headers == [("X-Chain", "x")]


def test_a_slow_call_is_logged_once_with_its_stack_and_still_answered() -> None:
    with RunnerProcess(SUITE_PLUGINS, args=["--slow-call", "0.1"]) as proc, proc.client() as c:
        reply = c.http_req_call(c.prepare_conf(act(sleep=0.5, set_headers={"X-Done": "1"})))
        assert reply.headers == [("X-Done", "1")]
        slow = [x for x in proc.log.splitlines() if "is slow" in x]
        assert len(slow) == 1 and "WARNING" in slow[0] and "plugin 'act'" in slow[0]
        assert "time.sleep" in proc.log


def test_stuck_calls_are_a_metric() -> None:
    port = _free_port()
    args = ["--call-timeout", "0.2", "--metrics-port", str(port)]
    with RunnerProcess(SUITE_PLUGINS, args=args) as proc, proc.client() as c:
        assert c.http_req_call(c.prepare_conf(act(hang=True))).err == ErrCode.SERVICE_UNAVAILABLE
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    assert 'apisix_runner_stuck_calls{plugin="act"} 1' in text.splitlines()


def test_a_plugin_reads_the_time_left_before_its_deadline() -> None:
    with RunnerProcess(SUITE_PLUGINS, args=["--call-timeout", "30"]) as proc, proc.client() as c:
        reply = c.http_req_call(c.prepare_conf(act(deadline_header="X-Left")))
        left = float(dict(reply.headers)["X-Left"])
        assert 0 < left <= 30


def test_a_call_timing_out_while_apisix_answers_a_question_still_gets_its_503() -> None:
    with RunnerProcess(SUITE_PLUGINS, args=["--call-timeout", "0.3"]) as proc, proc.client() as c:
        token = c.prepare_conf(act(body_digest="X-D"))
        c.send_frame(2, req_call_req(id=7, token=token, method="POST", path="/", args=[], headers=[], src_ip=_IP))
        assert c.read_frame()[0] == 3  # the ReqBody question, left unanswered
        type_, payload = c.read_frame()
        assert type_ == 0 and ErrResp.GetRootAs(payload, 0).Code() == ErrCode.SERVICE_UNAVAILABLE
        assert c.sock.recv(16) == b""
        wait_for(lambda: "timed out" in proc.log, "the log line")
        assert "plugin 'act'" in next(x for x in proc.log.splitlines() if "timed out" in x)


def test_a_stuck_call_stops_counting_once_its_plugin_returns() -> None:
    args = ["--call-timeout", "0.2", "--max-stuck-calls", "1"]
    with RunnerProcess(SUITE_PLUGINS, args=args) as proc:
        with proc.client() as c:
            slow = c.prepare_conf(act(sleep=1.5))
            quick = c.prepare_conf(act(set_headers={"X-Ran": "1"}), key="route#2#ext-plugin-pre-req#1")
        with proc.client() as c:
            assert c.http_req_call(slow).err == ErrCode.SERVICE_UNAVAILABLE
        with proc.client() as c:
            assert c.http_req_call(quick).err == ErrCode.SERVICE_UNAVAILABLE  # failed fast: act has a stuck call
        assert "plugin 'act' has 1 calls stuck past call_timeout" in proc.log
        with proc.client() as c:
            wait_for(lambda: c.http_req_call(quick).headers == [("X-Ran", "1")], "act to be usable again")


def test_no_plugin_runs_after_its_call_was_given_up(tmp_path: Path) -> None:
    (tmp_path / "steps.py").write_text(
        "import time\n"
        "from runner import Plugin\n"
        "class Slow(Plugin):\n"
        "    name = 'slow_step'\n"
        "    def filter(self, request, response):\n"
        "        time.sleep(1)\n"
        "class Mark(Plugin):\n"
        "    name = 'mark'\n"
        "    def filter(self, request, response):\n"
        "        open(self.config, 'w').close()\n"
    )
    mark = tmp_path / "ran"
    port = _free_port()
    args = ["--call-timeout", "0.2", "--metrics-port", str(port)]
    with RunnerProcess(tmp_path, args=args) as proc, proc.client() as c:
        token = c.prepare_conf([("slow_step", ""), ("mark", json.dumps(str(mark)))])
        assert c.http_req_call(token).err == ErrCode.SERVICE_UNAVAILABLE
        assert 'apisix_runner_stuck_calls{plugin="slow_step"} 1' in _metrics(port)
        # The call leaves the stuck count (its series goes) when its thread is done with the whole chain.
        wait_for(lambda: not any('stuck_calls{plugin="slow_step"}' in x for x in _metrics(port)), "slow_step to return")
    assert not mark.exists()


def test_a_configure_that_hangs_is_named_then_fails_fast(tmp_path: Path) -> None:
    (tmp_path / "jwks.py").write_text(
        "import threading\n"
        "from runner import Plugin\n"
        "class Jwks(Plugin):\n"
        "    name = 'jwks'\n"
        "    def configure(self, config):\n"
        "        threading.Event().wait()  # fetching keys from a server that never answers\n"
        "    def filter(self, request, response):\n"
        "        pass\n"
    )
    args = ["--call-timeout", "0.2", "--max-stuck-calls", "1"]
    with RunnerProcess(tmp_path, args=args) as proc:
        assert proc.proc is not None
        with proc.client() as c:
            c.send_frame(1, prepare_conf_req([("jwks", "{}")], "route#1#ext-plugin-pre-req#1"))
            type_, payload = c.read_frame()
            assert type_ == 0 and ErrResp.GetRootAs(payload, 0).Code() == ErrCode.SERVICE_UNAVAILABLE
        wait_for(lambda: "timed out" in proc.log, "the log line")
        assert "plugin 'jwks'" in next(x for x in proc.log.splitlines() if "timed out" in x)
        threads = thread_count(proc.proc.pid)
        for i in range(3):  # refused at once: configure is not started again
            with proc.client() as c:
                c.send_frame(1, prepare_conf_req([("jwks", "{}")], f"route#{i + 2}#ext-plugin-pre-req#1"))
                assert c.read_frame()[0] == 0
        assert thread_count(proc.proc.pid) == threads
        assert "plugin 'jwks' has 1 calls stuck past call_timeout" in proc.log


def _metrics(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return list(response.read().decode().splitlines())
