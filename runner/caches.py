"""Every cache the runner keeps for speed, each with its bound and the figure that justifies it.

Rules:

* A cache holds only values that are a pure function of their key, so a hit
  gives exactly what a miss would have computed: nothing outside the module
  that fills a cache can tell whether it was used.
* Every cache is bounded. A full cache is emptied before the next insertion:
  keys made per request (ids, timestamps in headers) must not grow it, and
  the few hot keys are back after one miss each.
* A cache stays only while the benchmark justifies it. Each figure below is
  how much more ``Dispatcher.handle`` costs per call without the cache, on the
  benchmark's frames and plugins (bench/frames.py, bench/plugins), measured
  with ``bench/inproc.py`` (600 paired rounds of 256 calls, with and without,
  Python 3.11 on a 2-vCPU VM). The same harness moves by up to 2-3 % between
  two builds that differ in unrelated code, so a smaller gain does not count
  here. (The packers of a vector's header, one per length, gained 1-2 % there
  and are now a fixed table in ``encode``: ``bench/cachegrind.py`` counts what
  formatting them per call costs.)

Sections: one per cache, named after the module that fills it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Cache(Generic[K, V]):
    """A dict of at most ``limit`` entries, emptied when full; ``get`` returns ``None`` on a miss."""

    __slots__ = ("get", "_data", "_limit")

    def __init__(self, limit: int) -> None:
        self._data: dict[K, V] = {}
        self._limit = limit
        self.get: Callable[[K], V | None] = self._data.get

    def put(self, key: K, value: V) -> None:
        if len(self._data) >= self._limit:
            self._data.clear()
        self._data[key] = value


# --- encode: reply layouts ------------------------------------------------------

#: The writer of each reply layout: the root offset, vtables and fixed cells of
#: a table (and of its union member) for one set of present fields, compiled
#: into one ``struct`` call. Bound: one per table and set of present fields
#: the runner writes, about 110 (limit 1024). Without it: ``rewrite`` +25 %,
#: ``var`` +30 %, ``resp`` +14 % (``stop`` replies come from ``STOPS``).
LAYOUTS: Cache[tuple[object, ...], Callable[..., bytes]] = Cache(1024)

# --- encode: TextEntry tables ---------------------------------------------------

#: One ``TextEntry`` (vtable, table, strings) as bytes, by ``(name, value)``:
#: plugins mostly send the same few headers. Bound: 4096 entries of at most
#: ``ENTRY_MAX`` bytes (about 2 MiB with their keys). Without it: ``resp``
#: (six headers echoed) +10 %, ``rewrite`` and ``var`` +4 %.
ENTRIES: Cache[tuple[str, str | None], bytes] = Cache(4096)
ENTRY_MAX = 256

# --- encode: Stop replies -------------------------------------------------------

#: A Stop reply as the bytes before and after its id cell, by
#: ``(status, headers, body)``: a plugin denies with the same reply every time
#: (a reply with id 0 has no id cell and is not kept). Bound: 1024 replies of
#: at most ``STOP_MAX`` bytes (about 5 MiB with their keys). Without it:
#: ``stop`` +54 %.
STOPS: Cache[tuple[int, tuple[tuple[str, str | None], ...], bytes | None], tuple[bytes, bytes]] = Cache(1024)
STOP_MAX = 2048

# --- encode: ExtraInfo questions ------------------------------------------------

#: An ExtraInfo.Req payload by ``(kind, variable name)``: the names come from
#: plugin code, so a few repeat on every call. Bound: 1024 questions of at
#: most ``QUESTION_MAX`` bytes (about 0.5 MiB with their keys). Without it:
#: ``var`` +22 %.
QUESTIONS: Cache[tuple[int, str], bytes] = Cache(1024)
QUESTION_MAX = 256
