"""Loading the plugin directory: which files may run as this runner, and importing them.

Rules:

* Plugin code runs with the runner's privileges, so it is trusted only when
  nobody else can change it: the directory, everything below it, and every
  directory above it must be owned by root or by the runner's user and not be
  writable by group or others. A world-writable directory above it is
  accepted only with the sticky bit (``/tmp``): there nobody can rename or
  replace the entries we own. Files on a read-only filesystem (a Kubernetes
  ConfigMap) cannot be changed at all and pass. Anything else is refused with
  a line saying what to fix, unless ``allow_insecure_plugins`` is set.
* Only regular files are imported (following symlinks): a FIFO, a device or a
  directory named ``*.py`` is refused instead of blocking or reading forever.
* ``load_plugins`` imports every ``*.py`` file (not ``_*``) as a module of a
  fresh private package and registers each ``Plugin`` subclass it defines.
  Plugin files share code through ``_*.py`` helpers with relative imports.
  Any exception an import raises, ``SystemExit`` and ``KeyboardInterrupt``
  included, is a ``PluginLoadError`` naming the file.
* Each load runs the ``startup`` hooks of its classes once they are all
  registered (a hook that raises fails the load like an import error), and
  their ``shutdown`` hooks when its registry is garbage-collected, or at
  SIGTERM (``shutdown_all``).
* Each load reads every ``*.py`` file of the directory (and of its packages)
  once, into a snapshot (``read_plugins``: audited and read, nothing
  imported; a master of several workers keeps it and hands it to them), and
  is a new package whose imports execute those bytes (``load_files``), at
  load time or later: a reload re-executes the files, and a plugin
  of an old token that imports lazily (``from . import _helper`` in
  ``filter``) still gets the code it was loaded with, after any number of
  reloads, until its registry is garbage-collected (when no conf token
  prepared with it is alive). The snapshot is also what was audited: a file
  changed between the check and the import is never run; and no bytecode
  cache is read or written in the plugin directory.
"""

from __future__ import annotations

import base64
import importlib.abc
import importlib.machinery
import importlib.util
import itertools
import logging
import os
import secrets
import stat
import sys
import time
import types
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import aio
from .errors import PluginLoadError
from .plugins import Plugin, PluginRegistry, is_async, plugin_name

log = logging.getLogger(__name__)

_generations = itertools.count(1)  # next() is atomic: loads from two threads get distinct packages


@dataclass(frozen=True)
class PluginFiles:
    """A plugin directory as one load reads it: its path, and every file's bytes by relative path
    (``"auth.py"``, ``"pkg/__init__.py"``), in the order they are loaded."""

    root: str
    files: dict[str, bytes]

    def pack(self) -> dict[str, Any]:
        """As plain JSON data (what a master sends its workers)."""
        return {"root": self.root, "files": {rel: base64.b64encode(b).decode() for rel, b in self.files.items()}}

    @classmethod
    def unpack(cls, data: dict[str, Any]) -> PluginFiles:
        return cls(str(data["root"]), {str(rel): base64.b64decode(b) for rel, b in data["files"].items()})


def read_plugins(directory: str | Path, allow_insecure: bool = False) -> PluginFiles:
    """Audit ``directory`` and read its plugin files, importing nothing; ``PluginLoadError`` names the first problem."""
    root = Path(directory)
    if not root.is_dir():
        raise PluginLoadError(str(root), "plugin directory does not exist")
    problems = audit(root)
    if problems:
        if not allow_insecure:
            raise PluginLoadError(str(root), problems[0] + " (or set allow_insecure_plugins = yes)")
        for problem in problems:
            log.warning("loading plugins anyway (allow_insecure_plugins): %s", problem)
    files: dict[str, bytes] = {}
    _read(root, "", files)
    return PluginFiles(str(root), files)


def _read(directory: Path, prefix: str, files: dict[str, bytes]) -> None:
    for path in sorted(directory.iterdir()):
        if path.suffix == ".py" and path.stem != "__init__":
            files[prefix + path.name] = _source(path)
        elif path.is_dir() and (path / "__init__.py").is_file():
            files[f"{prefix}{path.name}/__init__.py"] = _source(path / "__init__.py")
            _read(path, f"{prefix}{path.name}/", files)


class _Snapshot(importlib.abc.SourceLoader):
    """The files of one load; imports of its package execute these bytes."""

    def __init__(self, package: str, plugins: PluginFiles) -> None:
        self.package = package
        self.files: dict[str, tuple[Path, bytes, bool]] = {}  # module name -> (path, source, is a package)
        for rel, source in plugins.files.items():
            *dirs, name = rel.split("/")
            is_package = name == "__init__.py"
            module = ".".join([package, *dirs] if is_package else [package, *dirs, name.removesuffix(".py")])
            self.files[module] = (Path(plugins.root, rel), source, is_package)

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        entry = self.files.get(fullname)
        if entry is None:
            return None
        origin, _, is_package = entry
        return importlib.util.spec_from_file_location(
            fullname, origin, loader=self, submodule_search_locations=[] if is_package else None
        )

    def get_filename(self, fullname: str) -> str:
        return str(self.files[fullname][0])

    def get_data(self, path: str) -> bytes:
        for origin, source, _ in self.files.values():
            if str(origin) == path:
                return source
        raise OSError(f"{path} is not part of this load")


class _Snapshots(importlib.abc.MetaPathFinder):
    """The one finder on ``sys.meta_path`` for every load's private package."""

    def __init__(self) -> None:
        self.loads: dict[str, _Snapshot] = {}

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        snapshot = self.loads.get(fullname.partition(".")[0])
        return None if snapshot is None else snapshot.find_spec(fullname)


_snapshots = _Snapshots()
sys.meta_path.insert(0, _snapshots)


def _source(path: Path) -> bytes:
    try:
        kind = os.stat(path).st_mode
    except OSError as e:
        raise PluginLoadError(str(path), f"cannot be read: {e.strerror}") from None
    if not stat.S_ISREG(kind):
        raise PluginLoadError(str(path), "is not a regular file (only regular files are imported)")
    try:
        return path.read_bytes()
    except OSError as e:
        raise PluginLoadError(str(path), f"cannot be read: {e.strerror}") from None


def load_plugins(directory: str | Path, allow_insecure: bool = False) -> PluginRegistry:
    """Import every plugin file of ``directory``; ``PluginLoadError`` names the first problem."""
    return load_files(read_plugins(directory, allow_insecure))


def load_files(plugins: PluginFiles) -> PluginRegistry:
    """Import the plugin files ``read_plugins`` read; ``PluginLoadError`` names the first problem."""
    from . import compat  # (here: runner.compat builds on the plugin API)

    compat.install()  # plugin files may import the official runner's paths (apisix.runner...)
    # Unique in the process even if another copy of this module loads plugins too.
    package = f"_a6_plugins{next(_generations)}_{secrets.token_hex(4)}"
    snapshot = _Snapshot(package, plugins)
    module = types.ModuleType(package)
    module.__path__ = []  # submodules come from the snapshot only
    sys.modules[package] = module
    _snapshots.loads[package] = snapshot
    registry = PluginRegistry(package)
    weakref.finalize(registry, _unload, package)
    try:
        for name, (path, _, is_package) in snapshot.files.items():
            if name.count(".") == 1 and not is_package and not path.name.startswith("_"):
                _load_module(registry, name, path)
        if any(is_async(getattr(cls, m, None)) for cls in registry.classes() for m in _ASYNC_METHODS):
            aio.loop()  # started with the first async plugin, not at its first call
        _run_hooks(registry, "startup")
    except BaseException:
        _unload(package)
        raise
    if _hooked(registry, "shutdown"):
        _live.append(weakref.finalize(registry, _finalize_hooks, _hooked(registry, "shutdown")))
    return registry


def _load_module(registry: PluginRegistry, name: str, path: Path) -> None:
    try:
        module = importlib.import_module(name)
    except BaseException as e:  # a plugin's sys.exit() or KeyboardInterrupt fails its load, not the runner
        raise PluginLoadError(str(path), f"import failed: {type(e).__name__}: {e}") from e
    for obj in vars(module).values():
        if isinstance(obj, type) and issubclass(obj, Plugin) and obj.__module__ == name:
            registry.register(obj, str(path))
    from . import compat

    for cls in compat.plugins_in(module, str(path)):  # plugins written for the official runner
        registry.register(cls, str(path))


_ASYNC_METHODS = ("filter", "response_filter", "configure", "startup", "shutdown")
HOOK_TIMEOUT = 10.0  # seconds a startup or shutdown hook may take
_live: list[weakref.finalize[Any, Any]] = []  # loads whose shutdown hooks have not run yet


def _hooked(registry: PluginRegistry, hook: str) -> list[type[Plugin]]:
    return [cls for cls in registry.classes() if callable(getattr(cls, hook, None))]


def _run_hooks(registry: PluginRegistry, hook: str) -> None:
    for cls in _hooked(registry, hook):
        try:
            _call_hook(cls, hook)
        except BaseException as e:
            path = registry.file_of(plugin_name(cls))
            raise PluginLoadError(path, f"{cls.__name__}.{hook}() failed: {type(e).__name__}: {e}") from e


def _call_hook(cls: type[Plugin], hook: str) -> None:
    method = getattr(cls, hook)
    if is_async(method):
        aio.run(method(), HOOK_TIMEOUT)
    else:
        method()


def _finalize_hooks(classes: list[type[Plugin]]) -> None:
    """The ``shutdown`` hooks of a load nobody uses any more (async ones are not waited for)."""
    for cls in classes:
        method = cls.shutdown  # type: ignore[attr-defined]
        try:
            if is_async(method):
                aio.submit(method())
            else:
                method()
        except BaseException:
            log.exception("%s.shutdown() failed", cls.__name__)


def shutdown_all(timeout: float) -> None:
    """SIGTERM: every live load's ``shutdown`` hooks, all within ``timeout`` (the rest is abandoned)."""
    deadline = time.monotonic() + timeout
    while _live:
        detached = _live.pop().detach()
        if detached is None:
            continue
        for cls in detached[2][0]:
            left = deadline - time.monotonic()
            try:
                if is_async(cls.shutdown):
                    aio.run(cls.shutdown(), max(0.0, left))
                elif left > 0:
                    cls.shutdown()
            except TimeoutError:
                log.warning("%s.shutdown() did not finish in time: exiting without it", cls.__name__)
            except BaseException:
                log.exception("%s.shutdown() failed", cls.__name__)


def _unload(package: str) -> None:
    _snapshots.loads.pop(package, None)
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        del sys.modules[name]


# --- who could change the plugins -------------------------------------------------


def audit(root: Path) -> list[str]:
    """Why the code under ``root`` could be changed by someone other than root or us (empty: it cannot)."""
    me = os.geteuid()
    problems: list[str] = []
    top = Path(os.path.realpath(root))
    for ancestor in reversed(top.parents):
        problem = _writable_by_others(ancestor, me, ancestor=True)
        if problem:
            problems.append(problem)
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        for name in [".", *dirnames, *filenames]:
            path = Path(dirpath, name) if name != "." else Path(dirpath)
            try:
                target = Path(os.path.realpath(path))
                if target != path and not target.is_relative_to(top):
                    # A link out of the directory: what it points to must be safe too.
                    problems += [p for p in (_writable_by_others(d, me, ancestor=True) for d in target.parents) if p]
                problem = _writable_by_others(target, me, ancestor=False)
            except OSError as e:
                problem = f"{path} cannot be checked: {e.strerror}"
            if problem:
                problems.append(problem)
    return list(dict.fromkeys(problems))


def _writable_by_others(path: Path, me: int, ancestor: bool) -> str | None:
    st = os.stat(path)
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        return None  # never imported (``_load_file`` refuses it), nor opened here (a FIFO would block)
    if os.statvfs(path).f_flag & os.ST_RDONLY:
        return None
    mode = stat.S_IMODE(st.st_mode)
    what = f"{path} (owner uid {st.st_uid}, mode {mode:04o})"
    if st.st_uid not in (0, me):
        return f"{what} belongs to another user, who can change the plugins run by this runner (uid {me})"
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        if ancestor and stat.S_ISDIR(st.st_mode) and mode & stat.S_ISVTX:
            return None  # sticky: others cannot rename or replace the entries we own
        who = "others" if mode & stat.S_IWOTH else "its group"
        return f"{what} is writable by {who}, who could then run code as this runner (uid {me}): chmod go-w it"
    return None
