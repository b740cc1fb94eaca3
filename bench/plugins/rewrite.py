"""Benchmark plugin for the ``rewrite`` scenario: change a header, an arg and the path."""

from runner import Plugin


class BenchRewrite(Plugin):
    name = "bench_rewrite"

    def filter(self, request, response):
        request.headers["X-Bench"] = "rewrite"
        request.args["bench"] = "1"
        request.path = "/bench/rewritten"
