"""Shared fixtures: the kit's real-runner fixtures (``apisix_runner``, ``apisix``) serving tests/plugins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TEST_PLUGINS = Path(__file__).parent / "plugins"
EXAMPLE_PLUGINS = Path(__file__).parent.parent / "plugins"


def act(**conf: object) -> list[tuple[str, str]]:
    """A route conf running the test plugin ``act`` with ``conf``."""
    return [("act", json.dumps(conf))]


@pytest.fixture(scope="module")
def apisix_runner_plugins() -> str:
    return str(TEST_PLUGINS)
