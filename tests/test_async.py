"""Async plugins: ``async def filter``/``response_filter``/``configure``, on one event loop per process."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import RUNNER_THREADS, SUITE_PLUGINS, act, run_in_threads, thread_count, wait_for

from runner import Plugin
from runner.errors import ErrCode
from runner.testing import CallFailed, RunnerProcess, run_filter, run_response_filter


def awaiting(**conf: object) -> list[tuple[str, str]]:
    return [("awaiting", json.dumps(conf))]


# --- in-process, through the kit ----------------------------------------------------


class Tag(Plugin):
    name = "tag_async"

    async def filter(self, request: Any, response: Any) -> None:
        request.headers["X-Chain"] = request.headers.get("X-Chain", "") + "a"


class SyncTag(Plugin):
    name = "tag_sync"

    def filter(self, request: Any, response: Any) -> None:
        request.headers["X-Chain"] = request.headers.get("X-Chain", "") + "s"


class AsyncStop(Plugin):
    name = "stop_async"

    async def filter(self, request: Any, response: Any) -> None:
        response.status_code = 403
        response.body = "no"
        self.stop()


def test_async_and_sync_plugins_run_in_conf_order_and_rewrites_accumulate() -> None:
    out = run_filter([(Tag, None), (SyncTag, None), (Tag, None)])
    assert out.rewritten and out.headers == [("X-Chain", "asa")]


def test_a_stop_in_an_async_plugin_ends_the_chain() -> None:
    out = run_filter([(SyncTag, None), (AsyncStop, None), (Tag, None)])
    assert (out.stopped, out.status, out.body) == (True, 403, b"no")


def test_awaitable_var_and_body_in_the_request_phase() -> None:
    class Fetch(Plugin):
        async def filter(self, request: Any, response: Any) -> None:
            request.headers["X-Host"] = await request.fetch_var("host") or "-"
            request.headers["X-Len"] = str(len(await request.fetch_body()))

    out = run_filter(Fetch, vars={"host": "h"}, body=b"12345")
    assert sorted(out.headers) == [("X-Host", "h"), ("X-Len", "5")]
    assert out.asked == [("var", "host"), ("req_body", "")]


def test_awaitable_body_in_the_response_phase() -> None:
    class Upper(Plugin):
        async def response_filter(self, response: Any) -> None:
            response.body = (await response.fetch_body()).upper()

    out = run_response_filter(Upper, headers=[("Content-Type", "text/plain")], body=b"hello")
    assert out.body == b"HELLO" and out.asked == [("resp_body", "")]


def test_the_blocking_forms_are_refused_on_the_event_loop() -> None:
    class Blocks(Plugin):
        async def filter(self, request: Any, response: Any) -> None:
            request.var("host")

    reply = run_filter(Blocks, vars={"host": "h"})
    assert reply.err == ErrCode.SERVICE_UNAVAILABLE
    assert "await request.fetch_var(name)" in str(reply.cause)


def test_an_exception_in_an_async_plugin_is_a_503_with_the_reason() -> None:
    class Raises(Plugin):
        async def filter(self, request: Any, response: Any) -> None:
            raise KeyError("x")

    with pytest.raises(CallFailed, match="raised KeyError in filter"):
        run_filter(Raises).raise_for_err()


def test_an_async_configure_may_refuse_its_conf() -> None:
    from runner.testing import ConfRejected

    class Picky(Plugin):
        async def configure(self, config: Any) -> Any:
            if config != {"ok": True}:
                raise ValueError("bad conf")
            return {"converted": True}

        async def filter(self, request: Any, response: Any) -> None:
            request.headers["X-Conf"] = json.dumps(self.config)

    with pytest.raises(ConfRejected, match="bad conf"):
        run_filter(Picky, conf={"ok": False})
    assert run_filter(Picky, conf={"ok": True}).headers == [("X-Conf", '{"converted": true}')]


# --- over the socket ------------------------------------------------------------------------


def test_awaiting_plugins_over_the_wire(apisix_runner: RunnerProcess) -> None:
    with apisix_runner.client() as c:
        token = c.prepare_conf(
            awaiting(sleep=0.01, vars_to_headers={"host": "X-Host"}, body_digest="X-Len")
            + act(set_headers={"X-S": "1"})
        )
        reply = c.http_req_call(token, vars={"host": "h"}, body=b"abc")
        assert reply.rewritten and sorted(reply.headers) == [("X-Host", "<h>"), ("X-Len", "3"), ("X-S", "1")]
        resp = c.prepare_conf([("awaiting_resp", '{"body_upper": true, "header": "X-Uri"}')], key="r#2")
        out = c.http_resp_call(resp, headers=[("Content-Type", "text/plain")], body=b"up", vars={"uri": "/u"})
        assert out.body == b"UP" and ("X-Uri", "/u") in out.headers


def test_an_async_failure_is_a_503_and_the_connection_goes_on(apisix_runner: RunnerProcess) -> None:
    with apisix_runner.client() as c:
        assert c.http_req_call(c.prepare_conf(awaiting(**{"raise": "boom"}))).err == ErrCode.SERVICE_UNAVAILABLE
    with apisix_runner.client() as c:
        blocked = c.http_req_call(c.prepare_conf(awaiting(blocking_var=True), key="r#b"), vars={"host": "h"})
        assert blocked.err == ErrCode.SERVICE_UNAVAILABLE
        assert c.http_req_call(c.prepare_conf(awaiting(set_headers={"X": "1"}), key="r#c")).headers == [("X", "1")]
    assert "would block the event loop" in apisix_runner.log


def test_a_thousand_concurrent_awaiting_calls_need_neither_a_thousand_threads_nor_a_thousand_waits() -> None:
    with RunnerProcess(SUITE_PLUGINS, args=["--threads", "4"]) as proc:
        assert proc.proc is not None
        pid = proc.proc.pid
        with proc.client() as c:
            token = c.prepare_conf(awaiting(sleep=0.3, set_headers={"X-Done": "1"}))
        peak = [0]

        def one(i: int) -> None:
            with proc.client(timeout=60) as c:
                assert c.http_req_call(token, id=i + 1).headers == [("X-Done", "1")]
                peak[0] = max(peak[0], thread_count(pid))

        run_in_threads(one, [(i,) for i in range(1000)], timeout=120)
        assert peak[0] <= 4 + RUNNER_THREADS + 1  # (+ the thread of a sync step): never one per call


def test_call_timeout_cancels_an_async_call_with_a_503_naming_where_it_awaits() -> None:
    with RunnerProcess(SUITE_PLUGINS, args=["--call-timeout", "0.3"]) as proc:
        with proc.client() as c:
            assert c.http_req_call(c.prepare_conf(awaiting(hang=True)), id=9).err == ErrCode.SERVICE_UNAVAILABLE
            assert c.sock.recv(16) == b""  # closed after the Err frame
        with proc.client() as c:  # a plugin that swallows the cancellation still got its 503
            assert c.http_req_call(c.prepare_conf(awaiting(swallow_cancel=True), key="r#s")).err == 1
        wait_for(lambda: proc.log.count("async call timed out") == 2, "two timeout lines")
        line = next(x for x in proc.log.splitlines() if "async call timed out" in x)
        assert "plugin 'awaiting'" in line and "request_id=9" in line
        assert "await asyncio.Event().wait()" in proc.log  # the line it awaits at
        with proc.client() as c:
            assert c.http_req_call(c.prepare_conf(awaiting(set_headers={"X": "1"}), key="r#t")).headers == [("X", "1")]


def test_no_plugin_runs_after_an_async_call_was_given_up(tmp_path: Path) -> None:
    (tmp_path / "steps.py").write_text(
        "import asyncio\n"
        "from runner import Plugin\n"
        "class Stubborn(Plugin):\n"
        "    name = 'stubborn'\n"
        "    async def filter(self, request, response):\n"
        "        try:\n"
        "            await asyncio.Event().wait()\n"
        "        except asyncio.CancelledError:\n"
        "            pass  # swallowed: its chain would go on\n"
        "class Mark(Plugin):\n"
        "    name = 'mark'\n"
        "    async def filter(self, request, response):\n"
        "        open(self.config, 'w').close()\n"
    )
    mark = tmp_path / "ran"
    with RunnerProcess(tmp_path, args=["--call-timeout", "0.2"]) as proc, proc.client() as c:
        token = c.prepare_conf([("stubborn", ""), ("mark", json.dumps(str(mark)))])
        assert c.http_req_call(token).err == ErrCode.SERVICE_UNAVAILABLE
        wait_for(lambda: "async call timed out" in proc.log, "the timeout line")
    assert not mark.exists()  # (the runner has exited: its loop is done with the chain)


def test_a_slow_async_call_is_logged_with_where_it_awaits() -> None:
    with RunnerProcess(SUITE_PLUGINS, args=["--slow-call", "0.1"]) as proc, proc.client() as c:
        assert c.http_req_call(c.prepare_conf(awaiting(sleep=0.4, set_headers={"X": "1"}))).headers == [("X", "1")]
        slow = [x for x in proc.log.splitlines() if "async call is slow" in x]
        assert len(slow) == 1 and "plugin 'awaiting'" in slow[0]
        assert 'await asyncio.sleep(c["sleep"])' in proc.log


def test_startup_hooks_run_on_load_and_reload_and_shutdown_hooks_at_sigterm(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    with RunnerProcess(SUITE_PLUGINS, env={"A6_TEST_HOOKS": str(hooks)}) as proc:
        assert (hooks / "startup").read_text().count("\n") == 1
        with proc.client() as c:  # the client the hook made is there in calls
            assert c.http_req_call(c.prepare_conf(awaiting(client=True))).headers == [("X-Client", "connected")]
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: (hooks / "startup").read_text().count("\n") == 2, "the reload's startup hook")
        assert proc.stop(signal.SIGTERM, timeout=5) == 0
    # The old load's token was still alive: both loads shut down at SIGTERM.
    assert (hooks / "shutdown").read_text().count("\n") == 2


def test_workers_each_run_their_own_loop(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    with RunnerProcess(SUITE_PLUGINS, args=["--workers", "2"], env={"A6_TEST_HOOKS": str(hooks)}) as proc:
        with proc.client() as c:
            token = c.prepare_conf(awaiting(sleep=0.01, set_headers={"X": "1"}))
        clients = [proc.client() for _ in range(12)]
        try:
            for client in clients:
                assert client.http_req_call(token).headers == [("X", "1")]
        finally:
            for client in clients:
                client.close()
        pids = set((hooks / "startup").read_text().split())
        assert len(pids) == 2 and str(os.getpid()) not in pids


def test_sigterm_lets_an_awaiting_call_finish() -> None:
    with RunnerProcess(SUITE_PLUGINS) as proc, proc.client() as c:
        token = c.prepare_conf(awaiting(sleep=0.3, set_headers={"X": "done"}))
        c.send_frame(2, _req(token))
        time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        type_, _ = c.read_frame()
        assert type_ == 2
        assert proc.wait(5) == 0


def _req(token: int) -> bytes:
    from runner.testing import req_call_req

    return req_call_req(id=1, token=token, method="GET", path="/", args=[], headers=[], src_ip=b"\x7f\0\0\1")
