"""Helpers shared by the tests of runner.compat: plugin files, the official runner's reference request."""

from __future__ import annotations

import importlib
import textwrap
from pathlib import Path
from typing import Any

from runner import compat
from runner.testing import ReqCallReply, RunnerProcess

LEGACY_PLUGINS = Path(__file__).parent / "legacy_plugins"

#: The request docs/migration.md gives the official examples' replies for, as APISIX sends it.
REFERENCE_REQUEST: dict[str, Any] = {
    "method": "GET",
    "path": "/hello",
    "args": [("q", "1")],
    "headers": [("host", "x"), ("x-a", "1"), ("x-a", "2")],
    "vars": {"host": "x"},
}


def write(directory: Path, files: dict[str, str]) -> Path:
    """Write each ``name: source`` (dedented) into ``directory``; return it."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        (directory / name).write_text(textwrap.dedent(source), encoding="utf-8")
    return directory


def runner_process(plugins: Path) -> RunnerProcess:
    # Unbuffered, so what plugins print reaches the log as they print it.
    return RunnerProcess(plugins, env={"PYTHONUNBUFFERED": "1"})


def call(runner: RunnerProcess, conf: list[tuple[str, str]], **request: Any) -> ReqCallReply:
    """PrepareConf ``conf``, then one HTTPReqCall: the reference request with ``request``'s changes."""
    with runner.client() as client:
        token = client.prepare_conf(conf)
        return client.http_req_call(token, **{**REFERENCE_REQUEST, **request})


def legacy_module(name: str) -> Any:
    """An official runner module (``apisix.runner.plugin.core``...) as plugin files import it."""
    compat.install()
    return importlib.import_module(name)
