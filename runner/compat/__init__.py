"""Plugin files written for the official APISIX Python runner, loaded unchanged.

The official runner had two plugin APIs: 0.1.0 (``Base``) and 0.2.0
(``PluginBase``). This package serves their import paths and runs their
plugins as runner plugins. The plugin loader calls two functions:

* ``install()``, before it imports plugin files: makes
  ``apisix.runner.plugin.base``, ``apisix.runner.plugin.core``,
  ``apisix.runner.http.request`` and ``apisix.runner.http.response``
  importable in this process, from then on (``finder``).
* ``plugins_in(module, path)``, after importing each file: a runner ``Plugin``
  subclass for each legacy plugin the file defines, with one log line each
  (``discover``).

``adapt(cls)`` gives the runner plugin class for one legacy class, e.g. to run
it with ``runner.testing``.

Rules: only the runner's public plugin API is used (``runner.Plugin``,
``Request``, ``Response``, ``Headers``, ``Args``). A legacy plugin's request
and response are adapters over the call's runner ``Request``/``Response``
(``v010``, ``v020``), so what APISIX receives comes from the runner's own
encoder, and a legacy plugin that raises fails its call closed like any
plugin. What differs from the official runner, and why, is in docs/migration.md.
"""

from .discover import adapt, plugins_in
from .finder import install

__all__ = ["adapt", "install", "plugins_in"]
