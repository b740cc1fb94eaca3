"""Process tuning, each piece explicit: CPU pinning (opt-in), the descriptor limit, giving memory back.

* ``cpu``: off by default. Pinned, every thread stays on one CPU: only one
  thread runs Python at a time anyway, and spread over several CPUs every GIL
  hand-off between connection threads becomes a cross-CPU wake-up (measured
  in bench/README.md). Off by default because a pinned runner cannot leave a
  busy CPU.
* The soft open-files limit is raised to the hard one at start: every idle
  APISIX connection is a descriptor, and systemd's default soft limit (1024)
  would cap them far below the hard limit the host allows. The runner waits
  with epoll, never ``select``, so high descriptor numbers are safe.
* Memory goes back: glibc keeps freed heap memory (big bodies are freed in
  the heap, not unmapped, once its dynamic mmap threshold has grown), so
  after large bodies ``release_memory`` asks it to return what is free
  (``malloc_trim``) once the runner is idle again. Elsewhere (musl, macOS)
  there is nothing to do.
* glibc's allocator is tuned at start (``tune_allocator``): one arena, so a
  trim reaches every free byte, not only the main arena's; buffers up to 32
  MiB from the heap, not mapped and unmapped per body (each new mapping is
  zeroed pages faulted in); no trim on every free, only ``release_memory``'s.
  Measured against the same code without it (bench/README.md): 6 concurrent
  15 MiB bodies peaked at 78-109 MiB against 134-151 and idled after at 29
  MiB against 90-150; 1 MiB bodies, pinned, 16 connections: 1.35 times the
  calls/s, 300 µs of kernel CPU per call against 572.
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
from collections.abc import Callable

from .errors import ConfigError

log = logging.getLogger(__name__)


def resolve_cpu(setting: int | str | None, worker: int | None = None) -> int | None:
    """The CPU the ``cpu`` setting names here (``None``: no pinning); ``ConfigError`` if not allowed.

    ``auto`` is the CPU the process runs on; with several workers, worker
    ``i`` gets the i-th CPU the process may run on.
    """
    if setting is None:
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if setting == "auto":
        if worker is not None:
            return allowed[worker % len(allowed)]
        with open("/proc/self/stat") as f:  # field 39: the CPU this process last ran on
            current = int(f.read().rsplit(")", 1)[1].split()[36])
        return current if current in allowed else allowed[0]
    if setting not in allowed:
        shown = ", ".join(map(str, allowed))
        raise ConfigError(f"cpu: {setting} is not one this process may run on ({shown})")
    return int(setting)


def pin_cpu(setting: int | str | None, worker: int | None = None) -> None:
    """Keep every thread on one CPU (threads started later inherit it)."""
    cpu = resolve_cpu(setting, worker)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
        log.info("pinned to CPU %d", cpu)


def raise_fd_limit() -> int:
    """Raise the soft open-files limit to the hard one; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:
            log.debug("cannot raise the open files limit from %d to %d: %s", soft, hard, e)
    return soft


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_trim = _malloc_trim()


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # from <malloc.h>


def tune_allocator() -> None:
    """One glibc arena, big buffers from the heap, trimmed only when asked (the module docstring says why)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_ARENA_MAX, 1)
    mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    mallopt(_M_TRIM_THRESHOLD, 64 << 20)


def release_memory() -> None:
    """Return the heap memory that is free to the system (glibc only)."""
    if _trim is not None:
        _trim(0)
