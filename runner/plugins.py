"""Plugins: the base class authors subclass, and the registry of plugin classes by name.

Discovery and registration are separate (pluggy's rule): ``loader`` imports
the files, ``PluginRegistry.register`` validates each class. Every problem is
found at start-up (or at a reload) and named with its file, never when a
request arrives.

A plugin instance belongs to one (conf token, conf entry) and may serve many
calls at once on different threads, or as different tasks of the event loop.
So ``stop()``/``rewrite()`` record the decision for the *current call*, never
on the instance: in thread-local state for sync plugins, in a context variable
(one per task) for async ones.

Plugin methods may be coroutine functions (``async def filter``, also
``response_filter`` and ``configure``); such a plugin's calls run on the event
loop (``aio``). A class may also define ``startup``/``shutdown`` class methods
(sync or async) for clients it keeps across calls: ``startup`` runs when its
file is loaded (start-up or reload), ``shutdown`` when no live conf token uses
that load any more, and at SIGTERM.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import threading
from collections.abc import Awaitable
from typing import Any, cast

from .errors import PluginLoadError
from .http import Request, Response

log = logging.getLogger(__name__)

_decision = threading.local()
# An async plugin's decision: a one-item list while its call runs in a task.
_task_decision: contextvars.ContextVar[list[object] | None] = contextvars.ContextVar("decision", default=None)


class Plugin:
    """Base class of runner plugins.

    Define ``filter(request, response)`` for the request phase
    (``ext-plugin-pre-req`` / ``ext-plugin-post-req``) and/or
    ``response_filter(response)`` for the response phase
    (``ext-plugin-post-resp``). ``name`` is what route confs use (default: the
    class name; matched case-insensitively). ``self.config`` holds this route's
    parsed JSON conf for the plugin; define ``configure(config)`` to validate it
    (raise to reject) or convert it (a non-``None`` return value replaces it).
    """

    name: str = ""
    config: Any = None
    #: True: ``self.config`` and ``configure`` get the conf value as the string
    #: APISIX sent, not parsed as JSON (the official runner's 0.2.0 plugins did).
    raw_config: bool = False

    def __init__(self, name: str | None = None) -> None:
        # The seed's form, ``super().__init__(self.__class__.__name__)``, lands here.
        if name:
            self.name = name

    def filter(self, request: Request, response: Response) -> None:
        """Request phase: read or change ``request``; fill ``response`` and call ``stop()`` to answer."""

    def response_filter(self, response: Response) -> None:
        """Response phase: read or change the upstream's ``response``."""

    def configure(self, config: Any) -> Any:
        """Validate or convert this route's conf; raise to reject it."""
        return None

    def stop(self) -> None:
        """End the request with ``response`` (status, headers, body) instead of proxying it.

        Call it from the thread running ``filter``: the decision belongs to that call.
        """
        _decide(True)

    def rewrite(self) -> None:
        """Let the request go on upstream with this call's changes (the default)."""
        _decide(False)


Base = Plugin  # the seed runner's name for the base class


_IN_RESPONSE_PHASE = "response"


def _decide(stop: bool) -> None:
    # The thread's decision first: a sync filter (the usual case) never needs the task's.
    current = getattr(_decision, "stop", None)
    in_task = _task_decision.get() if current is None else None
    if in_task is not None:
        current = in_task[0]
    if current is None:
        # From another thread the call it belongs to is unknowable; failing
        # loudly beats a stop() that silently lets the request through.
        raise RuntimeError("stop()/rewrite() must be called from the thread running filter()")
    if current is _IN_RESPONSE_PHASE:
        raise RuntimeError(
            "stop()/rewrite() have no meaning in response_filter(): the upstream has answered; "
            "change response.status_code, headers or body instead"
        )
    if in_task is not None:
        in_task[0] = stop
    else:
        _decision.stop = stop


def call_filter(plugin: Plugin, request: Request, response: Response) -> bool:
    """Run ``plugin.filter`` and return whether it asked to stop."""
    _decision.stop = False
    try:
        plugin.filter(request, response)
        return bool(_decision.stop)
    finally:
        _decision.stop = None


def call_response_filter(plugin: Plugin, response: Response) -> None:
    _decision.stop = _IN_RESPONSE_PHASE
    try:
        plugin.response_filter(response)
    finally:
        _decision.stop = None


async def call_filter_async(plugin: Plugin, request: Request, response: Response) -> bool:
    """Await ``plugin.filter`` (a coroutine function) and return whether it asked to stop."""
    holder: list[object] = [False]
    token = _task_decision.set(holder)
    try:
        await cast(Awaitable[None], plugin.filter(request, response))
        return bool(holder[0])
    finally:
        _task_decision.reset(token)


async def call_response_filter_async(plugin: Plugin, response: Response) -> None:
    token = _task_decision.set([_IN_RESPONSE_PHASE])
    try:
        await cast(Awaitable[None], plugin.response_filter(response))
    finally:
        _task_decision.reset(token)


def is_async(method: object) -> bool:
    return inspect.iscoroutinefunction(method)


def has_filter(plugin: Plugin) -> bool:
    return type(plugin).filter is not Plugin.filter


def has_response_filter(plugin: Plugin) -> bool:
    return type(plugin).response_filter is not Plugin.response_filter


def plugin_name(cls: type[Plugin]) -> str:
    """The name a route conf uses for ``cls``, lower-cased for matching."""
    return (cls.name or cls.__name__).lower()


class PluginRegistry:
    """Plugin classes by (lower-cased) name, with the file each came from.

    A registry built by ``loader`` owns the private package its files were
    imported as; the package stays importable (lazy ``from . import x`` inside
    a plugin keeps working) for as long as the registry lives, i.e. as long as
    the dispatcher or any live conf token prepared with it holds it.
    """

    def __init__(self, package: str = "") -> None:
        self._classes: dict[str, type[Plugin]] = {}
        self._files: dict[str, str] = {}
        self.package = package

    def register(self, cls: type[Plugin], path: str = "<code>") -> str:
        """Add ``cls``; return its name. Rejects duplicates and classes that define no filter."""
        if not (isinstance(cls, type) and issubclass(cls, Plugin)):
            raise PluginLoadError(path, f"{cls!r} is not a Plugin subclass")
        name = plugin_name(cls)
        if name in self._classes:
            raise PluginLoadError(
                path, f"plugin name {name!r} of {cls.__name__} is already taken by {self._files[name]}"
            )
        if cls.filter is Plugin.filter and cls.response_filter is Plugin.response_filter:
            raise PluginLoadError(path, f"{cls.__name__} defines neither filter() nor response_filter()")
        for method in ("filter", "response_filter", "configure", "startup", "shutdown"):
            found = getattr(cls, method, None)
            if inspect.isasyncgenfunction(found) or inspect.isgeneratorfunction(found):
                # Iterated by nobody, it would do nothing and let every request through.
                raise PluginLoadError(path, f"{cls.__name__}.{method} must be a function or a coroutine function")
        self._classes[name] = cls
        self._files[name] = path
        return name

    def get(self, name: str) -> type[Plugin] | None:
        return self._classes.get(name.lower())

    def canonical(self, name: str) -> str | None:
        """The registered name that ``name`` (any case) stands for."""
        key = name.lower()
        return key if key in self._classes else None

    def file_of(self, name: str) -> str:
        return self._files[name.lower()]

    def classes(self) -> list[type[Plugin]]:
        return [self._classes[name] for name in sorted(self._classes)]

    def names(self) -> list[str]:
        return sorted(self._classes)

    def __len__(self) -> int:
        return len(self._classes)
