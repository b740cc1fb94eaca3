"""Helpers shared by the tests: paths, waiting, threads, and what a runner process holds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

TESTS = Path(__file__).parent
SUITE_PLUGINS = TESTS / "suite_plugins"
EXAMPLE_PLUGINS = TESTS.parent / "plugins"


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` if it never does."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def run_in_threads(target: Callable[..., object], calls: Iterable[tuple[object, ...]], timeout: float = 60) -> None:
    """Run ``target(*args)`` for each of ``calls`` on its own thread, all at once; fail if
    any raised (re-raising the first) or is still running after ``timeout`` s."""
    errors: list[BaseException] = []

    def run(*args: object) -> None:
        try:
            target(*args)
        except BaseException as e:  # surfaced in the calling thread below
            errors.append(e)

    threads = [threading.Thread(target=run, args=args) for args in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "threads still running"
    if errors:
        raise errors[0]


def act(**conf: object) -> list[tuple[str, str]]:
    """A route conf running the test plugin ``act`` with ``conf``."""
    return [("act", json.dumps(conf))]


def cli(*args: str, env: dict[str, str] | None = None, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m runner ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def status_kib(pid: int, key: str) -> int:
    """A ``/proc/PID/status`` figure in KiB (VmRSS, VmHWM...)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


#: Threads a runner process has besides its pool: main, selector, watchdog, control, event loop.
RUNNER_THREADS = 5


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class StubCall:
    """A call with no APISIX behind it, for driving ``Dispatcher.handle`` directly:
    every ExtraInfo question is answered with no result."""

    NO_RESULT = b"\x08\x00\x00\x00\x04\x00\x04\x00\x04\x00\x00\x00"  # ExtraInfo.Resp without a result

    def __init__(self, timeout: float = 60.0) -> None:
        self.plugin: str | None = None
        self.request_id = 0
        self.conf_token = 0
        self.deadline = time.monotonic() + timeout
        self.given_up = False

    def ask(self, question: bytes) -> bytes:
        return self.NO_RESULT

    async def ask_async(self, question: bytes) -> bytes:
        return self.NO_RESULT
