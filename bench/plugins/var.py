"""Benchmark plugin for the ``var`` scenario: one ExtraInfo Var round trip, then a rewrite."""

from runner import Plugin


class BenchVar(Plugin):
    name = "bench_var"

    def filter(self, request, response):
        request.headers["X-Bench-Var"] = request.var("remote_addr") or "-"
