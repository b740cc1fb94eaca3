"""Prometheus metrics, off by default: counters kept in-process, served as text 0.0.4.

Recording is a dictionary update under one lock, and only happens when
metrics are on (the dispatcher holds ``None`` otherwise). Gauges that other
objects already know (open connections, live tokens, calls in flight) are read
at scrape time through callbacks instead of being kept twice.

The endpoint uses the standard library's ``http.server``, which its own docs
call unfit for untrusted networks: it binds 127.0.0.1 unless told otherwise,
answers GET only, and serves ``/metrics`` and ``/healthz``.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

PREFIX = "apisix_runner"
#: Plugin latency buckets, seconds: plugins are expected to take microseconds to milliseconds.
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)


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

    def extra_info(self, kind: str) -> None:
        with self._lock:
            self._extra_info[kind] += 1

    def gauge(self, name: str, help: str, read: Callable[[], float]) -> None:
        self._gauges.append((name, help, read))

    def render(self) -> str:
        out: list[str] = []

        def family(name: str, kind: str, help: str) -> None:
            out.append(f"# HELP {PREFIX}_{name} {help}")
            out.append(f"# TYPE {PREFIX}_{name} {kind}")

        with self._lock:
            calls = sorted(self._calls.items())
            errors = sorted(self._plugin_errors.items())
            extra = sorted(self._extra_info.items())
            hists = {name: (list(b), self._plugin_sum[name]) for name, b in sorted(self._plugin_buckets.items())}
        family("calls_total", "counter", "Requests from APISIX by message type and outcome.")
        out += [f"{PREFIX}_calls_total{_labels(type=t, outcome=o)} {n}" for (t, o), n in calls]
        family("plugin_errors_total", "counter", "Exceptions raised by plugins.")
        out += [f"{PREFIX}_plugin_errors_total{_labels(plugin=p)} {n}" for p, n in errors]
        family("extra_info_total", "counter", "ExtraInfo round trips with APISIX by kind.")
        out += [f"{PREFIX}_extra_info_total{_labels(kind=k)} {n}" for k, n in extra]
        family("plugin_duration_seconds", "histogram", "Time spent in a plugin's filter or response_filter.")
        for name, (buckets, total) in hists.items():
            running = 0
            for bound, count in zip((*BUCKETS, float("inf")), buckets, strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                out.append(f"{PREFIX}_plugin_duration_seconds_bucket{_labels(plugin=name, le=le)} {running}")
            out.append(f"{PREFIX}_plugin_duration_seconds_sum{_labels(plugin=name)} {total}")
            out.append(f"{PREFIX}_plugin_duration_seconds_count{_labels(plugin=name)} {running}")
        for name, help, read in self._gauges:
            family(name, "gauge", help)
            out.append(f"{PREFIX}_{name} {read()}")
        return "\n".join(out) + "\n"


def serve(metrics: Metrics, host: str, port: int) -> ThreadingHTTPServer:
    """Start the endpoint on a daemon thread; ``shutdown()`` the returned server to stop it."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] == "/metrics":
                body, ctype = metrics.render().encode(), "text/plain; version=0.0.4; charset=utf-8"
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

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
