"""Plugin mistakes fail their own call closed (Err SERVICE_UNAVAILABLE), never open, never the process.

Run through the kit (the runner's real dispatcher and codecs): what APISIX
sees is the Err reply (503) with the runner's reason.
"""

from __future__ import annotations

import socket
import sys
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from helpers import SUITE_PLUGINS, act

from runner import Plugin
from runner.cache import ConfCache
from runner.dispatch import Dispatcher
from runner.errors import ErrCode, PluginLoadError
from runner.phases import Prepared
from runner.plugins import PluginRegistry
from runner.testing import CallFailed, RunnerProcess, run_filter, run_response_filter


def plugin(filter_body: Any, name: str = "p") -> type[Plugin]:
    return type(name, (Plugin,), {"name": name, "filter": filter_body})


def test_stop_called_from_another_thread_fails_closed() -> None:
    def filter(self: Plugin, request: Any, response: Any) -> None:
        response.status_code = 401
        with ThreadPoolExecutor(1) as pool:
            pool.submit(self.stop).result()  # re-raises the worker's error here

    reply = run_filter(plugin(filter))
    assert reply.err == ErrCode.SERVICE_UNAVAILABLE
    assert "must be called from the thread running filter()" in str(reply.cause)


@pytest.mark.parametrize("status", [65939, 65536, 0, 99, 600, "403", True])
def test_status_outside_http_range_is_refused(status: object) -> None:
    def filter(self: Plugin, request: Any, response: Any) -> None:
        response.status_code = status
        self.stop()

    with pytest.raises(CallFailed, match="status_code must be an HTTP status"):
        run_filter(plugin(filter)).raise_for_err()


def test_response_phase_status_outside_http_range_is_refused() -> None:
    def response_filter(self: Plugin, response: Any) -> None:
        response.status_code = 65736

    cls = type("r", (Plugin,), {"name": "r", "response_filter": response_filter})
    with pytest.raises(CallFailed):
        run_response_filter(cls, headers=[("Content-Type", "text/plain")]).raise_for_err()


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r.headers.__setitem__("X-A", None),
        lambda r: r.args.add("a", None),
        lambda r: r.headers.__setitem__("Bad Name", "v"),
        lambda r: r.headers.add("X:Colon", "v"),
        lambda r: r.headers.__setitem__("X-Split", "a\r\nInjected: 1"),
    ],
    ids=["none-header", "none-arg", "space-in-name", "colon-in-name", "crlf-in-value"],
)
def test_values_that_would_corrupt_the_request_are_refused(change: Any) -> None:
    def filter(self: Plugin, request: Any, response: Any) -> None:
        change(request)

    with pytest.raises(CallFailed):
        run_filter(plugin(filter)).raise_for_err()


def test_sys_exit_in_a_plugin_ends_only_its_call() -> None:
    def filter(self: Plugin, request: Any, response: Any) -> None:
        sys.exit(3)

    with pytest.raises(CallFailed, match="SystemExit"):
        run_filter(plugin(filter)).raise_for_err()


def test_an_exception_whose_str_raises_is_still_a_503_naming_its_type() -> None:
    class Nasty(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no text for you")

    def filter(self: Plugin, request: Any, response: Any) -> None:
        raise Nasty()

    with pytest.raises(CallFailed, match=r"raised Nasty in filter: \(its str\(\) raised\)"):
        run_filter(plugin(filter)).raise_for_err()


def test_deeply_nested_json_conf_is_a_rejected_conf_not_a_crash() -> None:
    registry = PluginRegistry()
    registry.register(plugin(lambda self, request, response: None))
    prepared = Dispatcher(registry, ConfCache[Prepared](60)).prepare([("p", "[" * 100_000)])
    assert prepared.error is not None and "RecursionError" in prepared.error


def test_async_generator_filter_is_refused_at_load_time() -> None:
    async def filter(self: Plugin, request: Any, response: Any) -> Any:
        yield  # iterated by nobody, it would let every request through

    with pytest.raises(PluginLoadError, match="must be a function or a coroutine function"):
        PluginRegistry().register(plugin(filter))


def test_generator_filter_is_refused_at_load_time() -> None:
    def filter(self: Plugin, request: Any, response: Any) -> Any:
        yield  # the call would return a generator nobody runs: every request would pass

    with pytest.raises(PluginLoadError, match="must be a function or a coroutine function"):
        PluginRegistry().register(plugin(filter))


def test_rewrite_drops_response_headers_apisix_would_ignore() -> None:
    def filter(self: Plugin, request: Any, response: Any) -> None:
        response.headers["Content-Type"] = "application/json"
        response.headers["Location"] = "/elsewhere"
        response.headers["X-Ok"] = "1"

    out = run_filter(plugin(filter))
    assert out.resp_headers == [("X-Ok", "1")]


def test_stop_never_carries_framing_headers() -> None:
    def filter(self: Plugin, request: Any, response: Any) -> None:
        response.headers = request.headers  # the seed's idiom copies everything
        response.body = "short"
        self.stop()

    out = run_filter(plugin(filter), headers={"Content-Length": "9999", "Transfer-Encoding": "chunked", "X-A": "1"})
    assert out.headers == [("x-a", "1")]


# --- whatever a plugin raises, over the wire -------------------------------------------

KINDS = ["KeyboardInterrupt", "GeneratorExit", "SystemExit", "Custom"]


@pytest.fixture(scope="module")
def metered() -> Iterator[tuple[RunnerProcess, int]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    with RunnerProcess(SUITE_PLUGINS, args=["--metrics-port", str(port)]) as proc:
        yield proc, port


def _counters(port: int, type_name: str) -> tuple[int, int]:
    """``act``'s plugin_errors_total, and the calls of ``type_name`` answered 503."""
    errors = unavailable = 0
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith('apisix_runner_plugin_errors_total{plugin="act"}'):
                errors = int(line.split()[-1])
            elif line.startswith(f'apisix_runner_calls_total{{type="{type_name}",outcome="service_unavailable"}}'):
                unavailable = int(line.split()[-1])
    return errors, unavailable


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("phase", ["filter", "response_filter", "configure"])
def test_any_base_exception_is_a_503_an_error_metric_and_one_log_line(
    metered: tuple[RunnerProcess, int], kind: str, phase: str
) -> None:
    proc, port = metered
    conf = {"filter": {"raise_base": kind}, "response_filter": {"resp": {"raise_base": kind}}}.get(
        phase, {"configure_raise_base": kind}
    )
    type_name = "http_resp_call" if phase == "response_filter" else "http_req_call"
    errors, unavailable = _counters(port, type_name)
    logged = len(proc.log)
    with proc.client() as c:
        token = c.prepare_conf(act(**conf), key=f"route#{kind}#{phase}#1", check=False)
        if phase == "response_filter":
            assert c.http_resp_call(token, headers=[("Content-Type", "text/plain")]).err == ErrCode.SERVICE_UNAVAILABLE
        else:
            assert c.http_req_call(token).err == ErrCode.SERVICE_UNAVAILABLE
    # A rejected conf is logged and counted as a plugin error once, at PrepareConf; its calls are 503s.
    assert _counters(port, type_name) == (errors + 1, unavailable + 1)
    records = [line for line in proc.log[logged:].splitlines() if not line.startswith((" ", "Traceback"))]
    failures = [line for line in records if " ERROR " in line or " CRITICAL " in line]
    assert len(failures) == 1, failures
    assert "plugin 'act'" in failures[0] and kind in failures[0]
    assert "Exception in thread" not in proc.log
    with proc.client() as c:  # the process and the pool are fine
        assert c.http_req_call(c.prepare_conf(None)).action == "none"
