"""pytest fixtures for plugin authors, registered through the ``pytest11`` entry point.

``apisix`` is a fake APISIX connected to a real runner process
(``apisix_runner``) that serves the directory named by the
``apisix_runner_plugins`` fixture (default ``./plugins``; override it in your
``conftest.py``). The runner is started once per test module.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .testing import ApisixClient, RunnerProcess


@pytest.fixture(scope="module")
def apisix_runner_plugins() -> str:
    """The plugin directory the runner serves; override this fixture to choose another."""
    return "plugins"


@pytest.fixture(scope="module")
def apisix_runner(apisix_runner_plugins: str) -> Iterator[RunnerProcess]:
    """A runner process on a temporary socket; ``.log`` holds its output."""
    with RunnerProcess(apisix_runner_plugins) as proc:
        yield proc


@pytest.fixture
def apisix(apisix_runner: RunnerProcess) -> Iterator[ApisixClient]:
    """A new APISIX connection to the runner (``prepare_conf``, ``http_req_call``, ``http_resp_call``)."""
    with apisix_runner.client() as client:
        yield client
