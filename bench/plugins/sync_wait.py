"""Benchmark plugin for the ``sync-wait`` scenario: the ``async-wait`` plugin written sync (it holds a thread)."""

import time

from runner import Plugin


class BenchSyncWait(Plugin):
    name = "bench_sync_wait"

    def filter(self, request, response):
        time.sleep(0.1)
        request.headers["X-Bench"] = "waited"
