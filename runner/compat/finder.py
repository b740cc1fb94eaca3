"""The official runner's import paths (``apisix.runner...``), served from ``runner.compat``.

``install()`` puts one meta-path finder first on ``sys.meta_path`` for the
rest of the process, so plugin files import these names at load time and
inside ``filter`` alike. Rules:

* It owns ``apisix`` and everything under ``apisix.runner``: the packages
  and the four modules plugins import (``_MODULES``), each made once and
  holding the very classes ``v010``/``v020`` define. The official runner's
  ``__init__`` files were empty, so the packages export nothing.
* Any other ``apisix.runner`` module was internal to the official runner
  and fails with an ImportError that names the migration guide.
* No file is read and nothing is installed on disk: the distribution's only
  top-level package stays ``runner``.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading
import types
from collections.abc import Sequence

from . import common, v010, v020

__all__ = ["install"]

_PACKAGES = frozenset(("apisix", "apisix.runner", "apisix.runner.plugin", "apisix.runner.http"))

_MODULES: dict[str, dict[str, object]] = {
    "apisix.runner.plugin.base": {"Base": v010.Base},
    "apisix.runner.plugin.core": {"PluginBase": v020.PluginBase},
    "apisix.runner.http.request": {"Request": common.Request},
    "apisix.runner.http.response": {
        "Response": common.Response,
        "PLUGIN_ACTION_STOP": common.PLUGIN_ACTION_STOP,
        "PLUGIN_ACTION_REWRITE": common.PLUGIN_ACTION_REWRITE,
        "RESP_MAX_DATA_SIZE": common.RESP_MAX_DATA_SIZE,
    },
}


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname in _PACKAGES or fullname in _MODULES:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=fullname in _PACKAGES)
        if fullname.startswith("apisix.runner."):
            raise ModuleNotFoundError(
                f"{fullname} was internal to the official APISIX Python runner and is not provided here; "
                "plugins can import apisix.runner.plugin.base, apisix.runner.plugin.core, "
                "apisix.runner.http.request and apisix.runner.http.response (see docs/migration.md)",
                name=fullname,
            )
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        # (Packages get an empty ``__path__`` from their spec: their submodules come from here too.)
        module.__dict__.update(_MODULES.get(module.__name__, {}))


_FINDER = _Finder()
_lock = threading.Lock()


def install() -> None:
    """Make the official runner's import paths importable in this process (idempotent)."""
    with _lock:
        if _FINDER not in sys.meta_path:
            sys.meta_path.insert(0, _FINDER)
