"""The kit's real-runner fixtures (``apisix_runner``, ``apisix``) serve the suite's own plugins."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import SUITE_PLUGINS


@pytest.fixture(scope="module")
def apisix_runner_plugins() -> str:
    return str(SUITE_PLUGINS)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A fresh directory with a short path: a socket's path must fit in 107 bytes."""
    path = Path(f"/tmp/a6t-{os.getpid()}-{threading.get_ident() % 10000}")
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)
