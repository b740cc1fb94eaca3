"""Benchmark plugin for the ``async-wait`` scenario: await 0.1 s (a backend's answer), then rewrite."""

import asyncio

from runner import Plugin


class BenchAsyncWait(Plugin):
    name = "bench_async_wait"

    async def filter(self, request, response):
        await asyncio.sleep(0.1)
        request.headers["X-Bench"] = "waited"
