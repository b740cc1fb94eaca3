"""Plugin discovery, registration and per-call decisions."""

from __future__ import annotations

import sys
import textwrap
import threading
from pathlib import Path

import pytest
from helpers import run_in_threads

from runner.errors import PluginLoadError
from runner.http import Request, Response
from runner.loader import load_plugins
from runner.plugins import Base, Plugin, PluginRegistry, call_filter, has_filter, has_response_filter


def write(directory: Path, name: str, source: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


def noop(cls: str, name: str | None = None, method: str = "filter") -> str:
    """The source of a plugin class ``cls`` (with ``name`` if given) whose ``method`` does nothing."""
    name_line = f"    name = {name!r}\n" if name is not None else ""
    args = "self, request, response" if method == "filter" else "self, response"
    return f"class {cls}(Plugin):\n{name_line}    def {method}({args}):\n        pass\n"


def plugin_file(*classes: str) -> str:
    """A plugin file defining ``classes`` (each from ``noop``)."""
    return "\n".join(["from runner import Plugin\n", *classes])


# --- load_plugins: what gets registered ------------------------------------------------


def test_subclasses_are_registered_under_their_name_or_lower_cased_class_name(tmp_path: Path) -> None:
    write(
        tmp_path,
        "greeting.py",
        plugin_file(noop("Greeter", "Hello-World"), noop("Tagger"), noop("After", method="response_filter")),
    )
    registry = load_plugins(tmp_path)
    assert registry.names() == ["after", "hello-world", "tagger"]
    assert len(registry) == 3
    greeter = registry.get("HELLO-WORLD")
    assert greeter is not None
    assert greeter.__name__ == "Greeter"
    assert registry.get("Tagger") is registry.get("tagger")
    assert registry.get("greeter") is None  # the class name is not a second name
    assert registry.file_of("hello-world") == str(tmp_path / "greeting.py")


def test_private_files_are_not_loaded(tmp_path: Path) -> None:
    write(tmp_path, "_helpers.py", "raise RuntimeError('must not be imported')\n")
    write(tmp_path, "__init__.py", "raise RuntimeError('must not be imported either')\n")
    write(tmp_path, "public.py", plugin_file(noop("Public")))
    assert load_plugins(tmp_path).names() == ["public"]


def test_non_python_files_and_subdirectories_are_ignored(tmp_path: Path) -> None:
    write(tmp_path, "notes.txt", "not python")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", "nested.py", "raise RuntimeError('not loaded')\n")
    assert load_plugins(tmp_path).names() == []


def test_empty_directory_gives_an_empty_registry(tmp_path: Path) -> None:
    registry = load_plugins(tmp_path)
    assert len(registry) == 0
    assert registry.names() == []


def test_imported_but_not_defined_classes_are_not_registered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    module = "a6_test_shared_plugins_lib"
    write(lib, f"{module}.py", plugin_file(noop("Shared")))
    monkeypatch.syspath_prepend(str(lib))
    monkeypatch.delitem(sys.modules, module, raising=False)
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    for stem in ("one", "two"):  # both import Shared: no duplicate, and not registered
        write(
            plugins,
            f"{stem}.py",
            f"""
            from runner import Plugin, Base
            from runner.plugins import Plugin as AlsoPlugin
            from {module} import Shared

            class Own{stem.title()}(Shared):
                pass
            """,
        )
    try:
        registry = load_plugins(plugins)
    finally:
        sys.modules.pop(module, None)
    assert registry.names() == ["ownone", "owntwo"]
    assert registry.get("shared") is None
    assert registry.get("plugin") is None
    assert registry.get("base") is None


def test_plugin_classes_can_subclass_each_other_within_a_file(tmp_path: Path) -> None:
    write(
        tmp_path,
        "family.py",
        """
        from runner import Plugin

        class Parent(Plugin):
            def filter(self, request, response):
                request.headers["X-Who"] = self.name

        class Child(Parent):
            name = "kid"
        """,
    )
    registry = load_plugins(tmp_path)
    assert registry.names() == ["kid", "parent"]


# --- load_plugins: what is refused ---------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "raise RuntimeError('boom at import')\n",
        "def broken(:\n    pass\n",
        "import a6_module_that_does_not_exist\n",
    ],
    ids=["raises", "syntax-error", "missing-import"],
)
def test_import_error_is_refused_naming_the_file(tmp_path: Path, source: str) -> None:
    write(tmp_path, "good.py", plugin_file(noop("Good")))
    bad = write(tmp_path, "broken.py", source)
    with pytest.raises(PluginLoadError) as info:
        load_plugins(tmp_path)
    assert info.value.path == str(bad)
    assert str(bad) in str(info.value)


def test_duplicate_plugin_name_is_rejected_at_startup_naming_both_files(tmp_path: Path) -> None:
    first = write(tmp_path, "a_first.py", plugin_file(noop("One", "dup")))
    second = write(tmp_path, "b_second.py", plugin_file(noop("Dup")))  # its class name gives the same plugin name
    with pytest.raises(PluginLoadError) as info:
        load_plugins(tmp_path)
    message = str(info.value)
    assert str(first) in message
    assert str(second) in message
    assert "dup" in message


def test_duplicate_plugin_name_within_one_file_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "twice.py", plugin_file(noop("A", "same"), noop("B", "SAME")))
    with pytest.raises(PluginLoadError) as info:
        load_plugins(tmp_path)
    assert info.value.path == str(path)
    assert "same" in str(info.value)


def test_plugin_with_neither_filter_nor_response_filter_is_rejected(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "idle.py",
        """
        from runner import Plugin

        class Idle(Plugin):
            def configure(self, config):
                return config
        """,
    )
    with pytest.raises(PluginLoadError) as info:
        load_plugins(tmp_path)
    assert info.value.path == str(path)
    assert "Idle" in str(info.value)


def test_missing_plugin_directory_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(PluginLoadError) as info:
        load_plugins(missing)
    assert str(missing) in str(info.value)


def test_plugin_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "plugin.py", "")
    with pytest.raises(PluginLoadError):
        load_plugins(path)


def test_registry_refuses_a_class_that_is_not_a_plugin() -> None:
    class NotAPlugin:
        def filter(self, request: Request, response: Response) -> None:
            pass

    with pytest.raises(PluginLoadError):
        PluginRegistry().register(NotAPlugin)  # type: ignore[arg-type]


# --- seed-style plugins ---------------------------------------------------------------


def test_seed_style_plugin_with_its_own_init_loads_and_stops(tmp_path: Path) -> None:
    write(
        tmp_path,
        "say.py",
        """
        from runner import Base

        class Say(Base):
            def __init__(self):
                super().__init__(self.__class__.__name__)

            def filter(self, request, response):
                headers = request.headers
                headers["X-Resp-A6-Runner"] = "Python"
                response.body = "Hello, Python Runner of APISIX"
                response.status_code = 201
                response.headers = headers
                self.stop()
        """,
    )
    registry = load_plugins(tmp_path)
    cls = registry.get("say")
    assert cls is not None
    plugin = cls()
    assert plugin.name == "Say"
    request, response = Request(headers=[("host", "h")]), Response()
    assert call_filter(plugin, request, response) is True
    assert response.status_code == 201
    assert response.body_for_client == b"Hello, Python Runner of APISIX"
    assert response.headers.get("x-resp-a6-runner") == "Python"


def test_seed_base_is_the_plugin_base() -> None:
    assert Base is Plugin


def test_plugin_without_stop_lets_the_request_go_on() -> None:
    class Tag(Plugin):
        def filter(self, request: Request, response: Response) -> None:
            request.headers["X-Tag"] = "1"
            self.rewrite()

    request = Request()
    assert call_filter(Tag(), request, Response()) is False
    assert request.headers["x-tag"] == "1"


def test_has_filter_and_has_response_filter_tell_the_phases_apart() -> None:
    class Req(Plugin):
        def filter(self, request: Request, response: Response) -> None:
            pass

    class Resp(Plugin):
        def response_filter(self, response: Response) -> None:
            pass

    assert has_filter(Req()) and not has_response_filter(Req())
    assert has_response_filter(Resp()) and not has_filter(Resp())


# --- stop()/rewrite(): per call, per thread ------------------------------------------


class Gate(Plugin):
    """Stops for /stop; for anything else, rewrites. Both wait on ``barrier`` in between."""

    barrier: threading.Barrier | None = None

    def filter(self, request: Request, response: Response) -> None:
        barrier = type(self).barrier
        assert barrier is not None
        barrier.wait()  # both calls are inside filter before either decides
        if request.path == "/stop":
            self.stop()
            barrier.wait()  # the other call decides after this one stopped
            barrier.wait()  # ... and has decided
        else:
            barrier.wait()
            self.rewrite()
            barrier.wait()


def test_a_stop_in_one_call_does_not_leak_into_the_next() -> None:
    class Toggle(Plugin):
        def filter(self, request: Request, response: Response) -> None:
            if request.path == "/stop":
                self.stop()

    plugin = Toggle()
    assert call_filter(plugin, Request(path="/stop"), Response()) is True
    assert call_filter(plugin, Request(path="/go"), Response()) is False
    assert call_filter(plugin, Request(path="/stop"), Response()) is True


def test_stop_and_rewrite_decisions_are_per_thread_on_a_shared_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Gate, "barrier", threading.Barrier(2, timeout=30))
    plugin = Gate()  # one instance, as for one conf token serving two requests at once
    results: dict[str, bool] = {}

    def run(path: str) -> None:
        results[path] = call_filter(plugin, Request(path=path), Response())

    run_in_threads(run, [("/stop",), ("/go",)])
    assert results == {"/stop": True, "/go": False}


# --- reloads ----------------------------------------------------------------------------


def test_loading_the_same_directory_twice_gives_fresh_classes(tmp_path: Path) -> None:
    write(
        tmp_path,
        "counter.py",
        """
        from runner import Plugin

        SEEN = []

        class Counter(Plugin):
            def filter(self, request, response):
                SEEN.append(request.path)
        """,
    )
    loads = [load_plugins(tmp_path), load_plugins(tmp_path)]  # a load's modules live as long as its registry
    first, second = (registry.get("counter") for registry in loads)
    assert first is not None and second is not None
    assert first is not second
    assert first.__module__ != second.__module__

    call_filter(first(), Request(path="/one"), Response())
    assert sys.modules[first.__module__].SEEN == ["/one"]
    assert sys.modules[second.__module__].SEEN == []  # module state is not shared


def test_reload_picks_up_an_edited_file(tmp_path: Path) -> None:
    source = """
        from runner import Plugin

        class Edit(Plugin):
            def filter(self, request, response):
                request.headers["X-Version"] = "{version}"
        """
    write(tmp_path, "edit.py", source.format(version="1"))
    old = load_plugins(tmp_path).get("edit")
    write(tmp_path, "edit.py", source.format(version="two"))
    new = load_plugins(tmp_path).get("edit")
    assert old is not None and new is not None
    request = Request()
    call_filter(new(), request, Response())
    assert request.headers["x-version"] == "two"
    call_filter(old(), request, Response())
    assert request.headers["x-version"] == "1"  # the old class still runs its own code


def test_plugin_files_can_share_a_helper_module_and_base_class(tmp_path: Path) -> None:
    (tmp_path / "_common.py").write_text("from runner import Plugin\nclass Base(Plugin):\n    greeting = 'hi'\n")
    (tmp_path / "greet.py").write_text(
        "from ._common import Base\n"
        "class Greet(Base):\n"
        "    def filter(self, request, response):\n"
        "        request.headers['X-Greeting'] = self.greeting\n"
    )
    registry = load_plugins(tmp_path)
    assert registry.names() == ["greet"]
