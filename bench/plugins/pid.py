"""Benchmark plugin for ``tokens.py``: answer with the serving process's pid, to tell workers apart."""

import os

from runner import Plugin


class BenchPid(Plugin):
    name = "bench_pid"

    def filter(self, request, response):
        response.status_code = 200
        response.headers["X-Pid"] = str(os.getpid())
        self.stop()
