"""The event loop that runs async plugins: one per process, on its own thread, started on first need.

Rules:

* ``loop()`` starts the loop the first time an async plugin (or an async
  ``startup``/``shutdown`` hook) is loaded; a runner without async plugins
  has no loop thread.
* A call whose plugin chain has an async method runs there, in its
  connection's task (``loopside``), holding no pool thread while it awaits
  or while the connection waits for its next call. Sync plugins of such a
  chain run on a small executor (``sync_step``), so their blocking ExtraInfo
  questions and any other blocking work never stall the loop.
* ``on_loop()`` tells whether the caller is the loop thread: the blocking
  forms of ExtraInfo refuse to run there.
* ``run(coro)`` runs a coroutine on the loop and waits for it from another
  thread (loading hooks, the in-process test kit, the final shutdown).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_ident: int | None = None  # the loop thread's (``threading.get_ident`` is cheap, ``current_thread`` is not)
_executor: concurrent.futures.ThreadPoolExecutor | None = None
SYNC_STEP_THREADS = 32  # sync plugins of async chains running at once


def loop() -> asyncio.AbstractEventLoop:
    """The process's loop, started on first use."""
    global _loop, _ident
    with _lock:
        if _loop is None:
            ready = threading.Event()
            new = asyncio.new_event_loop()

            def run() -> None:
                asyncio.set_event_loop(new)
                new.call_soon(ready.set)
                new.run_forever()

            thread = threading.Thread(target=run, name="asyncio", daemon=True)
            thread.start()
            ready.wait()
            _ident, _loop = thread.ident, new
        return _loop


def running() -> bool:
    return _loop is not None


def on_loop() -> bool:
    return threading.get_ident() == _ident


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    return asyncio.run_coroutine_threadsafe(coro, loop())


def run(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run ``coro`` on the loop and wait for its result (never call this on the loop)."""
    if on_loop():
        raise RuntimeError("aio.run() would block the event loop")
    return submit(coro).result(timeout)


async def sync_step(fn: Callable[..., T], *args: Any) -> T:
    """Run a sync plugin method of an async chain off the loop, in the calling task's context."""
    global _executor
    if _executor is None:
        with _lock:
            if _executor is None:
                _executor = concurrent.futures.ThreadPoolExecutor(SYNC_STEP_THREADS, "sync-step")
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(_executor, functools.partial(context.run, fn, *args))
