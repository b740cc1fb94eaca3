"""The kit's real-runner fixtures (``apisix_runner``, ``apisix``) serve the suite's own plugins."""

from __future__ import annotations

import pytest
from helpers import SUITE_PLUGINS


@pytest.fixture(scope="module")
def apisix_runner_plugins() -> str:
    return str(SUITE_PLUGINS)
