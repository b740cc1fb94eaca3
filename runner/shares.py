"""How many connections each worker process holds, so that they spread over the workers.

Workers accept from one shared listening socket, and the kernel wakes them
all; whichever runs first takes the connection, which tends to be the same
worker again and again. APISIX keeps its connections for minutes, so one
worker could end up serving them all. So each worker publishes its count in a
small shared memory table (a ``memfd`` the master creates and passes on), and
a worker holding more than the least loaded one plus ``SLACK`` lets a
connection wait ``DEFER`` seconds for another worker before it takes it
anyway (so a stuck or dead worker never leaves connections waiting).
"""

from __future__ import annotations

import mmap
import os
import struct

SLACK = 1
DEFER = 0.01
_COUNT = struct.Struct("q")


class Shares:
    def __init__(self, fd: int, workers: int, index: int) -> None:
        self.workers = workers
        self.index = index
        self._map = mmap.mmap(fd, workers * _COUNT.size)

    @classmethod
    def create(cls, workers: int) -> int:
        """A new table for ``workers`` (for the master); returns its descriptor (passed to each worker)."""
        fd = os.memfd_create("a6-runner-shares", os.MFD_CLOEXEC)
        os.ftruncate(fd, workers * _COUNT.size)
        return fd

    def publish(self, connections: int) -> None:
        _COUNT.pack_into(self._map, self.index * _COUNT.size, connections)

    def fair(self) -> bool:
        """Whether this worker should take the next connection now."""
        counts: list[int] = [_COUNT.unpack_from(self._map, i * _COUNT.size)[0] for i in range(self.workers)]
        return counts[self.index] <= min(counts) + SLACK

    def clear(self, index: int) -> None:
        """Worker ``index`` is gone (for the master): it holds nothing."""
        _COUNT.pack_into(self._map, index * _COUNT.size, 0)
