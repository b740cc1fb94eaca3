"""pytest fixtures for plugin authors, registered through the ``pytest11`` entry point.

``apisix`` is a fake APISIX connected to a real runner process
(``apisix_runner``) that serves the directory named by the
``apisix_runner_plugins`` fixture: the ini option of that name, relative to
pytest's rootdir (default ``plugins``), so the tests find it from any current
directory; override the fixture in a ``conftest.py`` to choose per module. The
runner is started once per test module.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .testing import ApisixClient, RunnerProcess


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "apisix_runner_plugins", "plugin directory the apisix fixtures serve, relative to rootdir", "string", "plugins"
    )


@pytest.fixture(scope="module")
def apisix_runner_plugins(request: pytest.FixtureRequest) -> str:
    """The plugin directory the runner serves; override this fixture to choose another."""
    return str(request.config.rootpath / str(request.config.getini("apisix_runner_plugins")))


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
