"""Benchmark plugin for the ``async-stop`` scenario: the ``stop`` plugin as an ``async def`` awaiting nothing."""

from runner import Plugin


class BenchAsyncStop(Plugin):
    name = "bench_async_stop"

    async def filter(self, request, response):
        response.status_code = 403
        response.headers["X-Bench"] = "stop"
        response.body = "denied"
        self.stop()
