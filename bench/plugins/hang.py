"""Benchmark plugin for ``floods.py``: a call that never returns (a plugin stuck on a lost backend)."""

import threading

from runner import Plugin

_never = threading.Event()


class BenchHang(Plugin):
    name = "bench_hang"

    def filter(self, request, response):
        _never.wait()
