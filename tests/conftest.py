"""Shared fixtures: the kit's real-runner fixtures (``apisix_runner``, ``apisix``) serving tests/plugins."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

TEST_PLUGINS = Path(__file__).parent / "plugins"
EXAMPLE_PLUGINS = Path(__file__).parent.parent / "plugins"


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


@pytest.fixture(scope="module")
def apisix_runner_plugins() -> str:
    return str(TEST_PLUGINS)
