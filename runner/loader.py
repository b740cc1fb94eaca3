"""Loading the plugin directory: which files may run as this runner, and importing them.

Rules:

* Plugin code runs with the runner's privileges, so it is trusted only when
  nobody else can change it: the directory, everything below it, and every
  directory above it must be owned by root or by the runner's user and not be
  writable by group or others. A world-writable directory above it is
  accepted only with the sticky bit (``/tmp``): there nobody can rename or
  replace the entries we own. A read-only mount is no exception: its modes
  are what the files had when mounted (a Kubernetes ConfigMap's come from the
  volume's ``defaultMode``, 0644 unless set) and must pass like any other.
  Anything else is refused with a line saying what to fix, unless
  ``allow_insecure_plugins`` is set.
* Symlinks: every path is walked one component at a time with ``lstat``
  (``audit``), the plugin directory's own path as well as each entry below
  it. A symlink met on the way (the directory, a directory above it, a
  plugin file, a link to a directory) is followed only if it belongs to root
  or to the runner's user; its target is then walked the same way. The files
  are read from the real paths found by that walk, so what was audited is
  what is imported.
* Only regular files are imported: a FIFO, a device or a directory named
  ``*.py`` is refused instead of blocking or reading forever.
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
import errno
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
    real, problems = audit(root)
    if problems:
        if not allow_insecure:
            raise PluginLoadError(str(root), problems[0] + " (or set allow_insecure_plugins = yes)")
        for problem in problems:
            log.warning("loading plugins anyway (allow_insecure_plugins): %s", problem)
    return PluginFiles(str(root), {rel: _source(root / rel, path) for rel, path in real.items()})


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


def _source(shown: Path, real: str) -> bytes:
    """The bytes of the plugin file ``shown``, read from its audited real path ``real``."""
    try:
        # O_NOFOLLOW: ``real`` has no symlink left, a link swapped in since is refused;
        # O_NONBLOCK: opening a FIFO does not wait for a writer.
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise PluginLoadError(str(shown), f"cannot be read: {e.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PluginLoadError(str(shown), "is not a regular file (only regular files are imported)")
        with open(fd, "rb", closefd=False) as file:
            return file.read()
    except OSError as e:
        raise PluginLoadError(str(shown), f"cannot be read: {e.strerror}") from None
    finally:
        os.close(fd)


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


def audit(root: Path) -> tuple[dict[str, str], list[str]]:
    """The plugin files under ``root`` (relative path -> real path, in load order) and why the code
    could be changed by someone other than root or us (empty: it cannot)."""
    me = os.geteuid()
    problems: list[str] = []
    files: dict[str, str] = {}
    _note(problems, _writable_by_others("/", os.lstat("/"), me, ancestor=True))
    try:
        top, st = _walk("/", os.path.join(os.getcwd(), root), me, problems)
    except OSError as e:
        return files, [f"{root} cannot be checked: {e.strerror}"]
    _scan(top, "", True, me, problems, files, {(st.st_dev, st.st_ino)})
    return files, list(dict.fromkeys(problems))


def _scan(
    directory: str,
    rel: str,
    package: bool,
    me: int,
    problems: list[str],
    files: dict[str, str],
    seen: set[tuple[int, int]],
) -> None:
    """Audit every entry of ``directory`` (a real path), recording the plugin files of a package."""
    try:
        names = sorted(os.listdir(directory))
    except OSError as e:
        problems.append(f"{directory} cannot be listed: {e.strerror}")
        return
    for name in names:
        try:
            real, st = _walk(directory, name, me, problems)
        except OSError as e:
            problems.append(f"{os.path.join(directory, name)} cannot be checked: {e.strerror}")
            continue
        if package and os.path.splitext(name)[1] == ".py" and (rel or name != "__init__.py"):
            files[rel + name] = real  # whatever it is: ``_source`` refuses anything but a regular file
        elif stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            inner = package and os.path.isfile(os.path.join(real, "__init__.py"))
            _scan(real, f"{rel}{name}/", inner, me, problems, files, seen)


_MAX_LINKS = 40  # as the kernel's path walk: more is a loop


def _walk(start: str, path: str, me: int, problems: list[str]) -> tuple[str, os.stat_result]:
    """The real path of ``path`` (relative to ``start``, a real directory already audited) and its
    ``lstat``, noting every directory walked through, every symlink followed and the end that
    someone else could change."""
    current, pending, via, links = start, path.split("/")[::-1], "", 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            current = os.path.dirname(current)  # walked through already
            continue
        candidate = os.path.join(current, part)
        st = os.lstat(candidate)
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > _MAX_LINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), candidate)
            # A link's own mode is always 0777 and means nothing (changing a link means replacing
            # it, which its directory's mode governs); its owner made it, and in a sticky
            # directory like /tmp its owner may replace it at will.
            if st.st_uid not in (0, me):
                _note(
                    problems,
                    f"{candidate} (a symlink, owner uid {st.st_uid}) belongs to another user: only symlinks "
                    f"of root or of this runner (uid {me}) are followed",
                    via,
                )
            via = via or candidate
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = "/"
            pending.extend(target.split("/")[::-1])
            continue
        _note(problems, _writable_by_others(candidate, st, me, ancestor=True), via)
        current = candidate
    st = os.lstat(current)
    _note(problems, _writable_by_others(current, st, me, ancestor=False), via)
    return current, st


def _note(problems: list[str], problem: str | None, via: str = "") -> None:
    if problem:
        problems.append(f"{problem} (reached through the symlink {via})" if via else problem)


def _writable_by_others(path: str, st: os.stat_result, me: int, ancestor: bool) -> str | None:
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        return None  # never imported (``_source`` refuses it), nor opened here (a FIFO would block)
    mode = stat.S_IMODE(st.st_mode)
    what = f"{path} (owner uid {st.st_uid}, mode {mode:04o})"
    if st.st_uid not in (0, me):
        return f"{what} belongs to another user, who can change the plugins run by this runner (uid {me})"
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        if ancestor and stat.S_ISDIR(st.st_mode) and mode & stat.S_ISVTX:
            # Sticky (/tmp, root's or ours, checked above): others may add entries but cannot
            # rename or replace the ones we own, so a path through it stays ours.
            return None
        who = "others" if mode & stat.S_IWOTH else "its group"
        return f"{what} is writable by {who}, who could then run code as this runner (uid {me}): chmod go-w it"
    return None
