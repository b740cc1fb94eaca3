"""Loading the plugin directory: only files nobody else can change, only regular files, any failure named."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from runner.errors import PluginLoadError
from runner.loader import load_plugins

PLUGIN = textwrap.dedent(
    """
    from runner import Plugin

    class Ok(Plugin):
        def filter(self, request, response):
            pass
    """
)


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    directory = tmp_path / "plugins"
    directory.mkdir(mode=0o755)
    (directory / "ok.py").write_text(PLUGIN)
    return directory


@pytest.mark.parametrize("mode", [0o775, 0o777, 0o757])
def test_a_plugin_directory_writable_by_group_or_others_is_refused(plugins: Path, mode: int) -> None:
    plugins.chmod(mode)
    with pytest.raises(PluginLoadError) as info:
        load_plugins(plugins)
    message = str(info.value)
    assert str(plugins) in message and f"mode {mode:04o}" in message
    assert "chmod go-w" in message and "allow_insecure_plugins" in message


@pytest.mark.parametrize("mode", [0o664, 0o666])
def test_a_writable_plugin_file_is_refused(plugins: Path, mode: int) -> None:
    (plugins / "ok.py").chmod(mode)
    with pytest.raises(PluginLoadError, match="ok.py"):
        load_plugins(plugins)


def test_a_writable_helper_or_pycache_is_refused_too(plugins: Path) -> None:
    cache = plugins / "__pycache__"
    cache.mkdir()
    cache.chmod(0o777)
    with pytest.raises(PluginLoadError, match="__pycache__"):
        load_plugins(plugins)


def test_a_world_writable_directory_above_is_refused_unless_sticky(tmp_path: Path, plugins: Path) -> None:
    tmp_path.chmod(0o777)
    with pytest.raises(PluginLoadError, match=str(tmp_path)):
        load_plugins(plugins)
    tmp_path.chmod(0o1777)  # like /tmp: nobody can rename or replace what we own in it
    assert load_plugins(plugins).names() == ["ok"]


def test_a_file_owned_by_another_user_is_refused(plugins: Path) -> None:
    os.chown(plugins / "ok.py", 12345, 12345)
    with pytest.raises(PluginLoadError, match="belongs to another user"):
        load_plugins(plugins)


def test_allow_insecure_plugins_loads_them_with_a_warning(plugins: Path, caplog: pytest.LogCaptureFixture) -> None:
    plugins.chmod(0o777)
    assert load_plugins(plugins, allow_insecure=True).names() == ["ok"]
    assert any("allow_insecure_plugins" in r.getMessage() and str(plugins) in r.getMessage() for r in caplog.records)


def test_a_fifo_named_like_a_plugin_is_refused_without_blocking(plugins: Path) -> None:
    os.mkfifo(plugins / "pipe.py", 0o644)
    with pytest.raises(PluginLoadError, match="pipe.py: is not a regular file"):
        load_plugins(plugins)


@pytest.mark.parametrize("allow_insecure", [False, True])
def test_a_symlink_to_a_device_is_refused(plugins: Path, allow_insecure: bool) -> None:
    (plugins / "zero.py").symlink_to("/dev/zero")
    with pytest.raises(PluginLoadError, match="zero.py: is not a regular file"):
        load_plugins(plugins, allow_insecure)


def test_a_symlink_to_a_safe_regular_file_is_loaded(plugins: Path, tmp_path: Path) -> None:
    # How Kubernetes mounts a ConfigMap: every file is a link into a hidden directory.
    data = plugins / "..data"
    data.mkdir()
    (data / "linked.py").write_text(PLUGIN.replace("class Ok", "class Linked"))
    (plugins / "linked.py").symlink_to(data / "linked.py")
    assert load_plugins(plugins).names() == ["linked", "ok"]


@pytest.mark.parametrize(
    ("source", "shown"),
    [
        ("import sys\nsys.exit(0)\n", "SystemExit: 0"),
        ("raise KeyboardInterrupt('at import')\n", "KeyboardInterrupt: at import"),
        ("class Boom(BaseException): pass\nraise Boom('mine')\n", "Boom: mine"),
    ],
)
def test_any_exception_at_import_is_a_load_error_naming_the_file(plugins: Path, source: str, shown: str) -> None:
    (plugins / "bad.py").write_text(source)
    with pytest.raises(PluginLoadError) as info:
        load_plugins(plugins)
    assert "bad.py" in str(info.value) and shown in str(info.value)


def test_a_registry_keeps_its_package_importable_for_lazy_imports(plugins: Path) -> None:
    (plugins / "_helper.py").write_text("VALUE = 'helped'\n")
    (plugins / "lazy.py").write_text(
        textwrap.dedent(
            """
            from runner import Plugin

            class Lazy(Plugin):
                def filter(self, request, response):
                    from . import _helper
                    request.headers["X-Helper"] = _helper.VALUE
            """
        )
    )
    old = load_plugins(plugins)
    load_plugins(plugins)
    load_plugins(plugins)  # two reloads since
    from runner.testing import run_filter

    cls = old.get("lazy")
    assert cls is not None
    assert run_filter(cls).headers == [("X-Helper", "helped")]
