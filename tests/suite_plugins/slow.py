"""Blocks a call until a file appears, so tests can act while the call is in flight."""

import os
import time

from runner import Plugin


class Slow(Plugin):
    name = "slow"

    def filter(self, request, response):
        open(self.config["started"], "w").close()
        deadline = time.monotonic() + 10
        while not os.path.exists(self.config["release"]) and time.monotonic() < deadline:
            time.sleep(0.01)
        request.headers["X-Slow"] = "done"
