"""Which classes of a plugin file are official-runner plugins, and the runner plugin class for each.

Rules:

* 0.1.0 (``Base``): the official runner's file-to-class rule. The file
  ``my_plugin.py`` is plugin ``my_plugin`` and its class is ``MyPlugin``
  (each ``_``-separated part capitalised, the rest of the part lower-cased).
  A file that defines ``Base`` subclasses but not that one is refused, naming
  the class the rule looks for. That class without a ``filter`` is skipped
  with a warning, so a conf naming it fails as an unknown plugin.
* 0.2.0 (``PluginBase``): each subclass defined in the file whose ``name()``,
  called on the class as the official runner did, gives a non-empty string.
  Classes whose ``name()`` gives nothing (helper base classes) are skipped. A
  class whose name an earlier class of the same file already has is skipped
  with a warning (the official runner kept the first one silently).
* The runner plugin class is a subclass of ``Plugin010`` or ``Plugin020``
  named like the legacy class. Its ``name`` is matched as every runner
  plugin's name is, case-insensitively, and the registry refuses duplicates.
* One info line per plugin found, naming the file, the class and the API.
"""

from __future__ import annotations

import logging
import types
from pathlib import Path
from typing import Any, TypeGuard, TypeVar, cast

from runner import Plugin
from runner.errors import PluginLoadError

from .v010 import Base, Plugin010
from .v020 import Plugin020, PluginBase

__all__ = ["adapt", "plugins_in"]

log = logging.getLogger("runner.compat")

T = TypeVar("T")


def plugins_in(module: types.ModuleType, path: str) -> list[type[Plugin]]:
    """A runner plugin class for each official-runner plugin that the imported plugin file ``path`` defines.

    Raises ``PluginLoadError`` naming the file when its legacy classes cannot be loaded.
    """
    return [*_plugins_010(module, path), *_plugins_020(module, path)]


def adapt(cls: type, name: str | None = None) -> type[Plugin]:
    """The runner plugin class that runs the official-runner plugin class ``cls``, e.g. for ``runner.testing``.

    ``name`` defaults to the official runner's: what ``name()`` gives (0.2.0),
    or the lower-cased class name (0.1.0, where it really comes from the file name).
    """
    if _is_subclass(cls, Base):
        return _wrap(Plugin010, cls, name or cls.__name__.lower())
    if _is_subclass(cls, PluginBase):
        return _wrap(Plugin020, cls, name or _name_of(cls))
    raise TypeError(f"{cls!r} is not a subclass of the official runner's Base or PluginBase")


def _plugins_010(module: types.ModuleType, path: str) -> list[type[Plugin]]:
    stem = Path(path).stem
    class_name = "".join(part.capitalize() for part in stem.split("_"))
    cls = getattr(module, class_name, None)
    if not _is_subclass(cls, Base):
        defined = [c.__name__ for c in _defined(module, Base)]
        if defined:
            raise PluginLoadError(
                path,
                f"defines {', '.join(defined)} for the official runner's 0.1.0 API, which takes "
                f"the class named after the file: {class_name}",
            )
        return []
    if cls.filter is Base.filter:
        log.warning("%s: class %s (official runner 0.1.0 API) defines no filter(): not loaded", path, class_name)
        return []
    return [_found(Plugin010, cls, stem.lower(), path, "0.1.0 (Base)")]


def _plugins_020(module: types.ModuleType, path: str) -> list[type[Plugin]]:
    found: list[type[Plugin]] = []
    taken: dict[str, str] = {}
    for cls in _defined(module, PluginBase):
        try:
            name = _name_of(cls)
        except Exception as e:
            raise PluginLoadError(path, f"{cls.__name__}.name() failed: {type(e).__name__}: {e}") from e
        if not name:
            log.debug("%s: class %s (official runner 0.2.0 API) has no name(): not a plugin", path, cls.__name__)
            continue
        if not isinstance(name, str):
            raise PluginLoadError(path, f"{cls.__name__}.name() gives {name!r}, not a string")
        if name in taken:
            log.warning(
                "%s: class %s (official runner 0.2.0 API) not loaded: its name %r is class %s's",
                path, cls.__name__, name, taken[name],
            )  # fmt: skip
            continue
        taken[name] = cls.__name__
        found.append(_found(Plugin020, cls, name, path, "0.2.0 (PluginBase)"))
    return found


def _found(base: type[Plugin], cls: type, name: str, path: str, api: str) -> type[Plugin]:
    log.info("%s: plugin %r is class %s, written for the official runner's %s API", path, name, cls.__name__, api)
    return _wrap(base, cls, name)


def _wrap(base: type[Plugin], cls: type, name: str) -> type[Plugin]:
    namespace = {
        "name": name,
        "legacy_class": cls,
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
    }
    return cast(type[Plugin], type(cls.__name__, (base,), namespace))


def _name_of(cls: type) -> Any:
    # The official runner called the instance method on the class itself, at class creation.
    method: Any = cls.name  # type: ignore[attr-defined]
    return method(cls)


def _is_subclass(obj: object, base: type[T]) -> TypeGuard[type[T]]:
    return isinstance(obj, type) and issubclass(obj, base) and obj is not base


def _defined(module: types.ModuleType, base: type[T]) -> list[type[T]]:
    """The ``base`` subclasses defined in ``module`` itself (not imported into it), in order."""
    return [obj for obj in vars(module).values() if _is_subclass(obj, base) and obj.__module__ == module.__name__]
