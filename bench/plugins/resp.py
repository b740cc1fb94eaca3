"""Benchmark plugin for the ``resp`` scenario: change one header of the upstream response."""

from runner import Plugin


class BenchResp(Plugin):
    name = "bench_resp"

    def response_filter(self, response):
        response.headers["X-Bench"] = "resp"
