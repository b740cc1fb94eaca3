"""The official runner's 0.1.0 plugin API (``Base``), run as a runner ``Plugin``.

A 0.1.0 plugin is a ``Base`` subclass defining ``filter(self, request,
response)``. ``Plugin010`` (subclassed once per legacy class by ``discover``)
runs it with these rules:

* PrepareConf: one legacy instance per route conf entry, made with no
  arguments and shared by every call on that conf, as in the official runner.
  ``self.config`` is the value parsed as JSON when that gives a non-empty
  dict, else ``{}``. A value that is not JSON refuses the conf, so every call
  on it fails closed (the official runner sent no reply at all).
* Each call gets a fresh ``Request010`` (plain attributes and dicts read from
  the call's runner request) and a fresh, empty ``Response010``. Changing
  ``request`` sends nothing. The action belongs to the call: rewrite unless
  the plugin calls ``stop()`` during it (the official runner kept the action
  on the shared instance, so one ``stop()`` went on stopping later requests).
* Stop: ``status_code`` (0 means 200), ``headers`` and ``body`` go into the
  runner response, and the chain ends.
* Rewrite: ``response.path``, ``response.headers`` and ``response.args`` are
  changes to the upstream request (0.1.0's wire rule). Only entries that
  differ from the request are set, and an empty path leaves the path alone
  (the official runner sent ``/``).
"""

from __future__ import annotations

import json
import threading
from typing import Any, ClassVar

from runner import Plugin
from runner import Request as RunnerRequest
from runner import Response as RunnerResponse

from .common import PLUGIN_ACTION_REWRITE, PLUGIN_ACTION_STOP, Request, Response, apply_sets, collapsed, exploded

__all__ = ["Base", "Plugin010", "Request010", "Response010"]


class _Call(threading.local):
    action: int | None = None  # the running call's action; None outside filter()


_call = _Call()


class Base:
    """``apisix.runner.plugin.base.Base``: subclass it and define ``filter(self, request, response)``."""

    _name = ""  # (for subclasses whose __init__ skips this one's)

    def __init__(self, name: str = "") -> None:
        # The official Base required ``name``. The idiom passes the class name,
        # which nothing reads, so it is optional here.
        self._name = name
        self._config: dict[str, Any] = {}

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, name: str) -> None:
        self._name = name

    @property
    def config(self) -> dict[str, Any]:
        """This route's conf: its JSON value if that is a non-empty dict, else ``{}``."""
        return self._config

    @config.setter
    def config(self, config: object) -> None:
        self._config = config if config and isinstance(config, dict) else {}

    @property
    def action(self) -> int:
        """``PLUGIN_ACTION_STOP`` or ``PLUGIN_ACTION_REWRITE`` for the call this thread is running."""
        action = _call.action
        return PLUGIN_ACTION_REWRITE if action is None else action

    @action.setter
    def action(self, action: int) -> None:
        if _call.action is None:
            # From another thread the call it belongs to is unknowable; a stop()
            # that silently let the request through would fail open.
            raise RuntimeError("stop()/rewrite() must be called from the thread running filter()")
        _call.action = action

    def stop(self) -> None:
        """Answer the client with ``response.status_code``, ``headers`` and ``body``."""
        self.action = PLUGIN_ACTION_STOP

    def rewrite(self) -> None:
        """Send the request upstream with ``response.path``, ``headers`` and ``args`` (the default)."""
        self.action = PLUGIN_ACTION_REWRITE

    def filter(self, request: Request010, response: Response010) -> None:
        """Defined by each plugin; a class that does not define it is not loaded."""
        raise NotImplementedError


def _read_on_first_use(name: str, doc: str) -> property:
    """A plain, settable dict attribute ``name``, read from the runner request's on first use (``collapsed``)."""
    attr = f"_{name}"

    def get(self: Request010) -> dict[str, Any]:
        value: dict[str, Any] | None = getattr(self, attr)
        if value is None:
            value = collapsed(getattr(self._source, name))
            setattr(self, attr, value)
        return value

    def set(self: Request010, value: dict[str, Any]) -> None:
        setattr(self, attr, value)

    return property(get, set, doc=doc)


class Request010(Request):
    """A 0.1.0 ``request``: plain read/write attributes. Changing them sends nothing."""

    def __init__(self, request: RunnerRequest) -> None:
        self._source = request
        self.id = request.id
        self.method = request.method
        self.path = request.path
        self.src_ip = exploded(request.src_ip)
        self.conf_token = 0  # not in the runner's plugin API, and of no use to a plugin
        self.configs: dict[str, Any] = {}  # the official runner filled it only at PrepareConf
        self._headers: dict[str, Any] | None = None
        self._args: dict[str, Any] | None = None

    headers = _read_on_first_use("headers", "Header names as APISIX sent them (lower case), each with its last value.")
    args = _read_on_first_use("args", 'Query arguments, each with its last value (a bare ``?flag`` is ``""``).')


class Response010(Response):
    """A 0.1.0 ``response``: what the plugin fills in. Its action decides which parts are used."""

    def __init__(self, request_id: int) -> None:
        self.id = request_id
        self.status_code = 0
        self.headers: dict[str, Any] = {}
        self.body: str | bytes = ""
        self.path = ""
        self.args: dict[str, Any] = {}
        self.action_type = PLUGIN_ACTION_REWRITE

    def changed(self) -> bool:
        return bool(self.body or self.headers or self.status_code)


def _parse(value: str) -> Any:
    if not value.strip():
        return {}
    try:
        return json.loads(value)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"not JSON ({e}); a 0.1.0 plugin's conf is a JSON object") from None


class Plugin010(Plugin):
    """Runs the 0.1.0 plugin class ``legacy_class`` as a runner plugin."""

    legacy_class: ClassVar[type[Base]] = Base
    raw_config = True
    legacy: Base

    def configure(self, config: str) -> None:
        legacy = self.legacy_class()
        legacy.config = _parse(config)
        self.legacy = legacy

    def filter(self, request: RunnerRequest, response: RunnerResponse) -> None:
        legacy_request, legacy_response = Request010(request), Response010(request.id)
        _call.action = PLUGIN_ACTION_REWRITE
        try:
            self.legacy.filter(legacy_request, legacy_response)
            action = _call.action
        finally:
            _call.action = None
        if action == PLUGIN_ACTION_STOP:
            body = legacy_response.body
            if not isinstance(body, str | bytes):
                raise TypeError(f"response.body must be str or bytes, not {type(body).__name__}")
            response.status_code = legacy_response.status_code or 200
            apply_sets(response.headers, legacy_response.headers, "response.headers")
            if body:
                response.body = body
            self.stop()
        else:
            path = legacy_response.path
            if path and path != request.path:
                request.path = path
            apply_sets(request.headers, legacy_response.headers, "response.headers")
            apply_sets(request.args, legacy_response.args, "response.args")
