"""Benchmark plugin for the ``stop`` scenario: answer the client directly with a 403."""

from runner import Plugin


class BenchStop(Plugin):
    name = "bench_stop"

    def filter(self, request, response):
        response.status_code = 403
        response.headers["X-Bench"] = "stop"
        response.body = "denied"
        self.stop()
