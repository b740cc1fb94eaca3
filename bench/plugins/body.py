"""Benchmark plugin for the ``body`` scenario: fetch the 1 MiB request body, report its length."""

from runner import Plugin


class BenchBody(Plugin):
    name = "bench_body"

    def filter(self, request, response):
        request.headers["X-Bench-Body"] = str(len(request.body))
