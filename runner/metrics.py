"""Prometheus metrics, off by default: counters kept in-process, served as text 0.0.4.

Recording is a dictionary update under one lock, and only happens when
metrics are on (the dispatcher holds ``None`` otherwise). Gauges that other
objects already know (open connections, live tokens, calls in flight) are read
at scrape time through callbacks instead of being kept twice.

The endpoint uses the standard library's ``http.server``, which its own docs
call unfit for untrusted networks: it binds 127.0.0.1 unless told otherwise
(another address is logged as a warning), answers GET only, and serves
``/metrics`` and ``/healthz``. It is bounded: at most ``MAX_CLIENTS``
connections are served at once (more are closed), and a connection not
answered ``CLIENT_TIMEOUT`` seconds after it was accepted is closed (a
client sending a byte now and then cannot keep its slot). Nothing waits for
the endpoint at exit: its threads are daemon threads, which end with the
process, so a scraper cannot delay SIGTERM. Plugin labels are the registered plugin names, so a route
conf cannot create label series at will.
"""

from __future__ import annotations

import bisect
import io
import ipaddress
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .errors import ConfigError

log = logging.getLogger(__name__)

PREFIX = "apisix_runner"
#: Plugin latency buckets, seconds: plugins are expected to take microseconds to milliseconds.
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
MAX_CLIENTS = 4
CLIENT_TIMEOUT = 5.0  # seconds for a whole request and its answer


def _labels(**labels: str) -> str:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in labels.items()) + "}"


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: Counter[tuple[str, str]] = Counter()
        self._plugin_errors: Counter[str] = Counter()
        self._extra_info: Counter[str] = Counter()
        self._plugin_buckets: dict[str, list[int]] = {}
        self._plugin_sum: dict[str, float] = {}
        self._gauges: list[tuple[str, str, Callable[[], float]]] = []
        self._labelled: list[tuple[str, str, str, Callable[[], dict[str, int]]]] = []

    def call(self, type_name: str, outcome: str) -> None:
        with self._lock:
            self._calls[type_name, outcome] += 1

    def plugin(self, name: str, seconds: float, failed: bool) -> None:
        index = bisect.bisect_left(BUCKETS, seconds)
        with self._lock:
            buckets = self._plugin_buckets.get(name)
            if buckets is None:
                buckets = self._plugin_buckets[name] = [0] * (len(BUCKETS) + 1)
            buckets[index] += 1
            self._plugin_sum[name] = self._plugin_sum.get(name, 0.0) + seconds
            if failed:
                self._plugin_errors[name] += 1

    def plugin_error(self, name: str) -> None:
        """An exception a plugin raised outside a timed call: its ``configure`` rejected a conf."""
        with self._lock:
            self._plugin_errors[name] += 1

    def extra_info(self, kind: str) -> None:
        with self._lock:
            self._extra_info[kind] += 1

    def gauge(self, name: str, help: str, read: Callable[[], float]) -> None:
        self._gauges.append((name, help, read))

    def labelled_gauge(self, name: str, help: str, label: str, read: Callable[[], dict[str, int]]) -> None:
        self._labelled.append((name, help, label, read))

    def snapshot(self) -> Snapshot:
        """Every figure as plain data: what a worker sends its master, and what ``render`` prints."""
        with self._lock:
            snap: Snapshot = {
                "calls": [[t, o, n] for (t, o), n in self._calls.items()],
                "errors": dict(self._plugin_errors),
                "extra": dict(self._extra_info),
                "hist": {name: [*b, self._plugin_sum[name]] for name, b in self._plugin_buckets.items()},
            }
        snap["gauges"] = {name: [help, read()] for name, help, read in self._gauges}
        snap["labelled"] = {name: [help, label, read()] for name, help, label, read in self._labelled}
        return snap

    def render(self) -> str:
        return render(self.snapshot())


#: ``Metrics.snapshot()``: counters, histograms (buckets then sum), gauges with their help text.
Snapshot = dict[str, Any]


def merge(snapshots: list[Snapshot]) -> Snapshot:
    """The sum of several processes' snapshots: what one endpoint shows for every worker."""
    calls: Counter[tuple[str, str]] = Counter()
    errors: Counter[str] = Counter()
    extra: Counter[str] = Counter()
    hist: dict[str, list[float]] = {}
    gauges: dict[str, list[Any]] = {}
    labelled: dict[str, list[Any]] = {}
    for snap in snapshots:
        for t, o, n in snap["calls"]:
            calls[t, o] += n
        errors.update(snap["errors"])
        extra.update(snap["extra"])
        for name, values in snap["hist"].items():
            total = hist.setdefault(name, [0] * len(values))
            hist[name] = [a + b for a, b in zip(total, values, strict=True)]
        for name, (help, value) in snap["gauges"].items():
            gauges[name] = [help, gauges.get(name, [help, 0])[1] + value]
        for name, (help, label, values) in snap["labelled"].items():
            summed: Counter[str] = Counter(labelled.get(name, [help, label, {}])[2])
            summed.update(values)
            labelled[name] = [help, label, dict(summed)]
    return {
        "calls": [[t, o, n] for (t, o), n in calls.items()],
        "errors": dict(errors),
        "extra": dict(extra),
        "hist": hist,
        "gauges": gauges,
        "labelled": labelled,
    }


def render(snap: Snapshot) -> str:
    """Prometheus text format 0.0.4 for a snapshot."""
    out: list[str] = []

    def family(name: str, kind: str, help: str) -> None:
        out.append(f"# HELP {PREFIX}_{name} {help}")
        out.append(f"# TYPE {PREFIX}_{name} {kind}")

    family("calls_total", "counter", "Requests from APISIX by message type and outcome.")
    out += [f"{PREFIX}_calls_total{_labels(type=t, outcome=o)} {n}" for t, o, n in sorted(snap["calls"])]
    family("plugin_errors_total", "counter", "Exceptions raised by plugins.")
    out += [f"{PREFIX}_plugin_errors_total{_labels(plugin=p)} {n}" for p, n in sorted(snap["errors"].items())]
    family("extra_info_total", "counter", "ExtraInfo round trips with APISIX by kind.")
    out += [f"{PREFIX}_extra_info_total{_labels(kind=k)} {n}" for k, n in sorted(snap["extra"].items())]
    family("plugin_duration_seconds", "histogram", "Time spent in a plugin's filter or response_filter.")
    for name, values in sorted(snap["hist"].items()):
        *buckets, total = values
        running = 0
        for bound, count in zip((*BUCKETS, float("inf")), buckets, strict=True):
            running += int(count)
            le = "+Inf" if bound == float("inf") else repr(bound)
            out.append(f"{PREFIX}_plugin_duration_seconds_bucket{_labels(plugin=name, le=le)} {running}")
        out.append(f"{PREFIX}_plugin_duration_seconds_sum{_labels(plugin=name)} {total}")
        out.append(f"{PREFIX}_plugin_duration_seconds_count{_labels(plugin=name)} {running}")
    for name, (help, value) in snap["gauges"].items():
        family(name, "gauge", help)
        out.append(f"{PREFIX}_{name} {value}")
    for name, (help, label, values) in snap["labelled"].items():
        family(name, "gauge", help)
        out += [f"{PREFIX}_{name}{_labels(**{label: k})} {v}" for k, v in sorted(values.items())]
    return "\n".join(out) + "\n"


class Endpoint(ThreadingHTTPServer):
    """The endpoint's server: ``bind`` makes one, ``serve`` starts it."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], family: int) -> None:
        self.address_family = family
        self.render: Callable[[], str] = lambda: ""
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        super().__init__(address, _Handler)

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # a scraper, not a crowd: the others get closed
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Deadline(io.RawIOBase):
    """A connection's reads, all before one deadline (a timeout per ``recv`` would restart with each byte)."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self.sock = sock
        self.deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no complete request within {CLIENT_TIMEOUT:g} s")
        self.sock.settimeout(left)  # and what is left when the answer is written
        return self.sock.recv_into(buffer)


class _Handler(BaseHTTPRequestHandler):
    server: Endpoint

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # (the socket's own reader: left open, it would keep the socket open)
        self.rfile = io.BufferedReader(_Deadline(self.connection, time.monotonic() + CLIENT_TIMEOUT))

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] == "/metrics":
            body, ctype = self.server.render().encode(), "text/plain; version=0.0.4; charset=utf-8"
        elif self.path == "/healthz":
            body, ctype = b"ok\n", "text/plain; charset=utf-8"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("metrics endpoint: " + format, *args)


def bind(host: str, port: int) -> Endpoint:
    """The endpoint, bound but not serving yet; ``ConfigError`` naming the address and why if it cannot be."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        endpoint = Endpoint((host, port), family)
    except OSError as e:
        raise ConfigError(f"metrics endpoint {where} cannot be bound here: {e.strerror or e}") from None
    if not _loopback(host):
        log.warning(
            "metrics endpoint on %s: reachable beyond this host (http.server is not meant for untrusted networks)",
            where,
        )
    return endpoint


def serve(endpoint: Endpoint, metrics: Metrics | Callable[[], str]) -> None:
    """Serve ``bind``'s endpoint on a daemon thread (the process's exit ends it, nothing waits for it).

    ``metrics`` is this process's ``Metrics``, or (a master) a function that renders the workers' sum.
    """
    endpoint.render = metrics.render if isinstance(metrics, Metrics) else metrics
    threading.Thread(target=endpoint.serve_forever, name="metrics", daemon=True).start()


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
