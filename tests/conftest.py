"""Shared fixtures: a real runner process serving tests/plugins, and clients to it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.testing import ApisixClient, RunnerProcess

TEST_PLUGINS = Path(__file__).parent / "plugins"
EXAMPLE_PLUGINS = Path(__file__).parent.parent / "plugins"


def act(**conf: object) -> list[tuple[str, str]]:
    """A route conf running the test plugin ``act`` with ``conf``."""
    return [("act", json.dumps(conf))]


@pytest.fixture(scope="module")
def runner() -> Iterator[RunnerProcess]:
    with RunnerProcess(TEST_PLUGINS) as proc:
        yield proc


@pytest.fixture
def client(runner: RunnerProcess) -> Iterator[ApisixClient]:
    with runner.client() as c:
        yield c
