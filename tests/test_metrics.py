"""The metrics endpoint: bounded, honest, and with labels a route conf cannot multiply."""

from __future__ import annotations

import os
import signal
import socket
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import RUNNER_THREADS, SUITE_PLUGINS, cli, thread_count, wait_for

from runner.testing import RunnerProcess


def _free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _scrape(host: str, port: int) -> list[str]:
    url_host = f"[{host}]" if ":" in host else host
    with urllib.request.urlopen(f"http://{url_host}:{port}/metrics", timeout=5) as response:
        return response.read().decode().splitlines()


def test_plugin_labels_are_the_registered_name_whatever_case_the_conf_uses() -> None:
    port = _free_port()
    with RunnerProcess(SUITE_PLUGINS, args=["--metrics-port", str(port)]) as proc, proc.client() as c:
        for i, spelling in enumerate(["marker", "MARKER", "Marker", "mArKeR"]):
            token = c.prepare_conf([(spelling, '"x"')], key=f"route#{i}#ext-plugin-pre-req#1")
            assert c.http_req_call(token).err is None
        lines = _scrape("127.0.0.1", port)
    counts = [line for line in lines if line.startswith("apisix_runner_plugin_duration_seconds_count")]
    assert counts == ['apisix_runner_plugin_duration_seconds_count{plugin="marker"} 4']


def test_calls_in_flight_reads_zero_right_after_a_reply() -> None:
    port = _free_port()
    with RunnerProcess(SUITE_PLUGINS, args=["--metrics-port", str(port)]) as proc, proc.client() as c:
        token = c.prepare_conf(None)
        for _ in range(20):
            assert c.http_req_call(token).action == "none"
            assert "apisix_runner_calls_in_flight 0" in _scrape("127.0.0.1", port)


def test_an_ipv6_loopback_host_works() -> None:
    port = _free_port("::1")
    with RunnerProcess(SUITE_PLUGINS, args=["--metrics-port", str(port), "--metrics-host", "::1"]) as proc:
        assert any(line.startswith("apisix_runner_connections") for line in _scrape("::1", port))
        assert "reachable beyond this host" not in proc.log


def test_a_host_reachable_from_elsewhere_is_accepted_with_a_warning() -> None:
    port = _free_port("0.0.0.0")
    with RunnerProcess(SUITE_PLUGINS, args=["--metrics-port", str(port), "--metrics-host", "0.0.0.0"]) as proc:
        wait_for(lambda: "reachable beyond this host" in proc.log, "the warning")
        assert any(line.startswith("apisix_runner_connections") for line in _scrape("127.0.0.1", port))


@pytest.mark.parametrize("host", ["203.0.113.7", "not-a-host.invalid"])
def test_check_refuses_a_metrics_host_that_cannot_be_bound(host: str) -> None:
    result = cli("check", "--plugins", str(SUITE_PLUGINS), "--metrics-port", "9813", "--metrics-host", host)
    assert result.returncode == 1
    assert f"metrics endpoint {host}:9813 cannot be bound here" in result.stderr


def test_check_reports_a_metrics_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("check", "--plugins", str(SUITE_PLUGINS), "--metrics-port", str(port))
    assert result.returncode == 1
    assert f"metrics endpoint 127.0.0.1:{port} cannot be bound here: Address already in use" in result.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("host", ["127.0.0.1", "not-a-host.invalid"], ids=["port-in-use", "bad-host"])
def test_a_metrics_endpoint_that_cannot_be_bound_stops_the_start_in_one_line(
    tmp_path: Path, host: str, workers: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = tmp_path / "r.sock"
        args = ["--metrics-port", str(port), "--metrics-host", host, "--workers", workers]
        result = cli("run", "--socket", str(path), "--plugins", str(SUITE_PLUGINS), *args)
    assert result.returncode == 1
    critical = [line for line in result.stderr.splitlines() if "CRITICAL" in line]
    assert len(critical) == 1 and f"cannot start: metrics endpoint {host}:{port} cannot be bound here: " in critical[0]
    assert "Traceback" not in result.stderr
    assert not path.exists()


def test_idle_scrapers_cannot_hold_the_endpoint_or_its_threads() -> None:
    port = _free_port()
    with RunnerProcess(SUITE_PLUGINS, args=["--metrics-port", str(port), "--threads", "2"]) as proc:
        assert proc.proc is not None
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]  # connect, send nothing
        try:
            full = 2 + RUNNER_THREADS + 1 + 4  # pool, runner threads, the endpoint, its 4 client slots
            wait_for(lambda: thread_count(proc.proc.pid) >= full, "the endpoint to take its slots")  # type: ignore[union-attr]
            assert thread_count(proc.proc.pid) <= full  # the other 16 silent clients got no thread
            # The silent clients' slots free up at their timeout: a scrape gets through then at the latest.
            wait_for(lambda: _scrapes(port), "a scrape to get through", timeout=20)
        finally:
            for s in idle:
                s.close()


def _scrapes(port: int) -> bool:
    try:
        return any(line.startswith("apisix_runner_") for line in _scrape("127.0.0.1", port))
    except OSError:
        return False


@contextmanager
def _tricklers(port: int, count: int) -> Iterator[list[threading.Event]]:
    """``count`` clients sending one byte of a request every 0.2 s; each one's event is set once it is cut off."""
    stop = threading.Event()

    def trickle(sock: socket.socket, cut: threading.Event) -> None:
        sock.settimeout(0.2)
        with sock:
            while not stop.is_set():
                try:
                    sock.send(b"G")
                    if sock.recv(1) == b"":
                        break
                except TimeoutError:
                    continue
                except OSError:
                    break
        cut.set()

    cuts = [threading.Event() for _ in range(count)]
    threads = [
        threading.Thread(target=trickle, args=(socket.create_connection(("127.0.0.1", port)), cut)) for cut in cuts
    ]
    for t in threads:
        t.start()
    try:
        yield cuts
    finally:
        stop.set()
        for t in threads:
            t.join()


def test_clients_trickling_a_request_are_cut_off_and_a_scrape_gets_through() -> None:
    port = _free_port()
    with RunnerProcess(SUITE_PLUGINS, args=["--metrics-port", str(port)]), _tricklers(port, 4) as cuts:
        wait_for(lambda: _scrapes(port), "a scrape to get through", timeout=30)
        wait_for(lambda: all(cut.is_set() for cut in cuts), "the trickling clients to be cut off", timeout=30)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_exits_cleanly_while_clients_trickle_requests_to_the_metrics_port(workers: str) -> None:
    port = _free_port()
    args = ["--metrics-port", str(port), "--workers", workers]
    with RunnerProcess(SUITE_PLUGINS, args=args) as proc:
        assert _scrapes(port)
        with _tricklers(port, 8):
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
            assert not os.path.exists(proc.socket_path)
