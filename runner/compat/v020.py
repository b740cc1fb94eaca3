"""The official runner's 0.2.0 plugin API (``PluginBase``), run as a runner ``Plugin``.

A 0.2.0 plugin is a ``PluginBase`` subclass with ``name()``, ``config(conf)``
and ``filter(conf, request, response)``. ``Plugin020`` (subclassed once per
legacy class by ``discover``) runs it with these rules:

* Each call makes a new legacy instance, calls ``config()`` with the route
  conf value exactly as APISIX sent it (a string, not parsed), then
  ``filter()`` with what ``config()`` returned, as the official runner did.
* ``Request020`` reads the call's runner request. Its setters return ``True``
  or ``False`` and refuse empty values, as in the official runner. The
  headers, args and path the plugin changed are set on the runner request
  after ``filter()`` returns, only where they differ, so untouched repeated
  headers stay intact. ``set_method``, ``set_body``, ``set_var``,
  ``set_remote_addr``, ``set_id`` and ``set_conf_token`` stay local to the
  plugin's request object (the official runner never sent them either).
* ``get_var()`` and ``get_body()`` ask APISIX through the runner (once per
  call and name, cached even when empty) and decode the answer one character
  per byte (Latin-1), as the official runner did.
* ``Response020`` starts empty. If the plugin set a body, a header or a status
  (``changed()``), the call stops with them (status 200 if unset) and the
  chain ends. Request changes do not matter then.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from runner import Plugin
from runner import Request as RunnerRequest
from runner import Response as RunnerResponse

from .common import Fields, Request, Response, apply_sets, exploded, latin1

__all__ = ["Plugin020", "PluginBase", "Request020", "Response020"]

# What the official set_method accepted (case-insensitively, stored as given).
_SETTABLE_METHODS = frozenset(("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"))


class PluginBase:
    """``apisix.runner.plugin.core.PluginBase``: subclass it and define ``name``, ``config``, ``filter``."""

    def name(self) -> str | None:
        """The name route confs use. Called once, on the class (``cls.name(cls)``), when the file loads."""
        return None

    def config(self, conf: Any) -> Any:
        """Turn the route conf value (a string) into what ``filter`` gets as ``conf``."""
        return None

    def filter(self, conf: Any, req: Request020, reps: Response020) -> None:
        """Read and change ``req``; set something on ``reps`` to answer the client instead."""


F = TypeVar("F", bound=Callable[..., Any])


def _dict_methods(attr: str) -> tuple[Callable[..., Any], Callable[..., bool], Callable[..., Any], Callable[..., bool]]:
    """0.2.0's four methods over the ``Fields`` in ``self.<attr>``: get one, set one, get all, set all."""

    def get_one(self: Any, key: str) -> Any:
        fields: Fields = getattr(self, attr)
        return fields.get(key)

    def set_one(self: Any, key: str, value: Any) -> bool:
        fields: Fields = getattr(self, attr)
        return fields.set(key, value)

    def get_all(self: Any) -> Any:
        fields: Fields = getattr(self, attr)
        return fields.all()

    def set_all(self: Any, values: Any) -> bool:
        fields: Fields = getattr(self, attr)
        return fields.replace(values)

    return get_one, set_one, get_all, _named(set_all, "self", attr.lstrip("_"))


def _setter(attr: str, param: str) -> Callable[[Any, Any], bool]:
    """A 0.2.0 setter of ``self.<attr>``: an empty value is refused (``False``), as in the official runner.

    Its parameter is named ``param``, as there.
    """

    def set_value(self: Any, value: Any) -> bool:
        if not value:
            return False
        setattr(self, attr, value)
        return True

    return _named(set_value, "self", param)


def _named(fn: F, *params: str) -> F:
    """``fn`` with its first parameters renamed ``params``: the official runner's names, for keyword callers."""
    code = fn.__code__
    fn.__code__ = code.replace(co_varnames=params + code.co_varnames[len(params) :])
    return fn


class Request020(Request):
    """A 0.2.0 ``request``: ``get_*``/``set_*`` methods over the call's runner request."""

    def __init__(self, request: RunnerRequest) -> None:
        self._source = request
        self._headers = Fields(lambda: request.headers)
        self._args = Fields(lambda: request.args)
        self._uri: str | None = None
        self._method: str | None = None
        self._remote_addr: str | None = None
        self._id = request.id
        self._conf_token = 0  # not in the runner's plugin API, and of no use to a plugin
        self._vars: dict[str, Any] = {}
        self._body: Any = None
        self._configs: dict[str, Any] = {}  # the official runner filled it only at PrepareConf

    # headers and args: live dicts, last value per name
    get_header, set_header, get_headers, set_headers = _dict_methods("_headers")
    get_arg, set_arg, get_args, set_args = _dict_methods("_args")

    def get_uri(self) -> str:
        return self._source.path if self._uri is None else self._uri

    def set_uri(self, uri: Any) -> bool:
        if not (isinstance(uri, str) and uri.startswith("/")):
            return False
        self._uri = uri
        return True

    # ExtraInfo: asked through the runner, Latin-1 text

    def get_var(self, key: str) -> Any:
        cached = self._vars.get(key)
        if cached:
            return cached
        value = self._source.var(key)
        return "" if value is None else latin1(value)

    def set_var(self, key: str, value: Any) -> bool:
        if not (key and value):
            return False
        self._vars[key] = value
        return True

    def get_body(self) -> Any:
        return self._body if self._body else latin1(self._source.body)

    set_body = _setter("_body", "body")

    # local values

    def get_method(self) -> str:
        return self._source.method if self._method is None else self._method

    def set_method(self, method: Any) -> bool:
        if not (isinstance(method, str) and method.upper() in _SETTABLE_METHODS):
            return False
        self._method = method
        return True

    def get_remote_addr(self) -> str:
        return exploded(self._source.src_ip) if self._remote_addr is None else self._remote_addr

    set_remote_addr = _setter("_remote_addr", "remote_addr")

    def get_id(self) -> int:
        return self._id

    set_id = _setter("_id", "id")

    def get_conf_token(self) -> int:
        return self._conf_token

    set_conf_token = _setter("_conf_token", "conf_token")

    def get_config(self, key: str) -> Any:
        return self._configs.get(key)

    def set_config(self, key: str, value: Any) -> bool:
        if not (key and value):
            return False
        self._configs[key] = value
        return True

    def get_configs(self) -> dict[str, Any]:
        return self._configs

    set_configs = _setter("_configs", "configs")

    def apply(self) -> None:
        """Set what the plugin changed (path, headers, args) on the runner request."""
        request = self._source
        if self._uri is not None and self._uri != request.path:
            request.path = self._uri
        if self._headers.value is not None:
            apply_sets(request.headers, self._headers.value, "the request headers")
        if self._args.value is not None:
            apply_sets(request.args, self._args.value, "the request args")


class Response020(Response):
    """A 0.2.0 ``response``: setting anything on it answers the client instead of proxying."""

    def __init__(self, request_id: int) -> None:
        self._headers = Fields()
        self._body: Any = ""
        self._status = 0
        self._req_id = request_id

    get_header, set_header, get_headers, set_headers = _dict_methods("_headers")

    def get_body(self) -> Any:
        return self._body

    set_body = _setter("_body", "body")

    def get_status_code(self) -> int:
        return self._status or 200

    def set_status_code(self, code: Any) -> bool:
        if not (isinstance(code, int) and not isinstance(code, bool) and 100 <= code <= 599):
            return False
        self._status = code
        return True

    def get_req_id(self) -> int:
        return self._req_id

    set_req_id = _setter("_req_id", "id")

    def changed(self) -> bool:
        """Whether the call stops: a body, a header or a status was set."""
        return bool(self._body or self._headers.value or self._status)

    def apply(self, response: RunnerResponse) -> None:
        """Fill the runner response with the stop the plugin asked for."""
        body = self._body
        if not isinstance(body, str | bytes):
            raise TypeError(f"the response body must be str or bytes, not {type(body).__name__}")
        response.status_code = self._status or 200
        apply_sets(response.headers, self._headers.value, "the response headers")
        if body:
            response.body = body


class Plugin020(Plugin):
    """Runs the 0.2.0 plugin class ``legacy_class`` as a runner plugin."""

    legacy_class: ClassVar[type[PluginBase]] = PluginBase
    raw_config = True

    def filter(self, request: RunnerRequest, response: RunnerResponse) -> None:
        legacy = self.legacy_class()
        conf = legacy.config(self.config)
        legacy_request, legacy_response = Request020(request), Response020(request.id)
        legacy.filter(conf, legacy_request, legacy_response)
        if legacy_response.changed():
            legacy_response.apply(response)
            self.stop()
        else:
            legacy_request.apply()
