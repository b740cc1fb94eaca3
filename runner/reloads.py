"""One two-phase reload of a master's workers, from SIGHUP (or ``reload --pid``) to its outcome.

The master (``arbiter``) drives it; this is its bookkeeping. Rules:

* The master reads the plugin directory once (``files``); every worker that
  has been given the committed set takes part, loads those files and answers
  with its result. A worker that starts during the reload joins it.
* It succeeds only if every worker taking part loaded the files; a worker
  that exits, or has not answered by the deadline, fails it for all.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .channel import Message
from .loader import PluginFiles

#: Sends the outcome line back to a ``reload --pid`` command.
Reply = Callable[[str], None]


class Reload:
    def __init__(self, serial: int, timeout: float) -> None:
        self.serial = serial  # a directory read for an earlier reload is recognised and dropped
        self.deadline = time.monotonic() + timeout
        self.files: PluginFiles | None = None  # once the master has read them
        self.results: dict[int, Message | None] = {}  # worker index -> its result
        self.waiting: list[Reply] = []

    def join(self, index: int) -> None:
        self.results[index] = None

    def record(self, index: int, result: Message) -> bool:
        """Worker ``index``'s result; whether every worker taking part has answered now."""
        if index in self.results and self.results[index] is None:
            self.results[index] = result
        return all(r is not None for r in self.results.values())

    def failures(self) -> list[str]:
        return [
            f"worker {index}: {'no answer' if result is None else result.get('reason')}"
            for index, result in self.results.items()
            if result is None or not result.get("ok")
        ]

    def plugin_names(self) -> list[str]:
        """What was loaded: the same in every worker, which all loaded the same files."""
        first = next(iter(self.results.values()), None)
        return list(first["plugins"]) if first else []
