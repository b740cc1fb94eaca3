"""Loading the plugin directory: only files nobody else can change, only regular files, any failure named."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import cli

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


ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a symlink to another user (os.lchown)")
NOBODY = 65534


@ROOT_ONLY
def test_a_plugin_directory_reached_through_another_users_symlink_is_refused(plugins: Path, tmp_path: Path) -> None:
    link = tmp_path / "current"
    link.symlink_to(plugins)
    os.lchown(link, NOBODY, NOBODY)
    with pytest.raises(PluginLoadError) as info:
        load_plugins(link)
    assert f"{link} (a symlink, owner uid {NOBODY}) belongs to another user" in str(info.value)
    result = cli("check", "--plugins", str(link))  # `check` refuses it as `run` would
    assert result.returncode == 1
    assert f"{link} (a symlink, owner uid {NOBODY}) belongs to another user" in result.stderr


@ROOT_ONLY
def test_a_directory_above_reached_through_another_users_symlink_is_refused(plugins: Path, tmp_path: Path) -> None:
    link = tmp_path / "release"
    link.symlink_to(tmp_path)
    os.lchown(link, NOBODY, NOBODY)
    with pytest.raises(PluginLoadError, match=f"{link} \\(a symlink, owner uid {NOBODY}\\)"):
        load_plugins(link / "plugins")


def test_a_plugin_file_linked_to_a_world_writable_file_is_refused(plugins: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "shared"
    elsewhere.mkdir()
    target = elsewhere / "evil.py"
    target.write_text(PLUGIN.replace("class Ok", "class Evil"))
    target.chmod(0o666)
    (plugins / "evil.py").symlink_to(target)
    with pytest.raises(PluginLoadError) as info:
        load_plugins(plugins)
    assert f"{target} (owner uid {os.geteuid()}, mode 0666) is writable by others" in str(info.value)
    assert f"reached through the symlink {plugins / 'evil.py'}" in str(info.value)
    result = cli("check", "--plugins", str(plugins))
    assert result.returncode == 1 and f"{target} (owner uid {os.geteuid()}, mode 0666)" in result.stderr


def test_our_own_symlink_to_our_plugin_directory_loads_it(plugins: Path, tmp_path: Path) -> None:
    link = tmp_path / "current"
    link.symlink_to(plugins)
    registry = load_plugins(link)
    assert registry.names() == ["ok"]
    assert registry.file_of("ok") == str(link / "ok.py")  # named as configured
    result = cli("check", "--plugins", str(link))
    assert result.returncode == 0 and f"plugin ok: {link / 'ok.py'}" in result.stdout


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare(1) to mount a file system"
)
def test_a_group_writable_file_on_a_read_only_mount_is_refused(tmp_path: Path) -> None:
    # Inside a private mount namespace (gone with the process): a tmpfs holding a 0664 plugin,
    # then remounted read-only. Nobody can change it now, but its mode says the group may
    # (a ConfigMap gets its mode from defaultMode): it is refused like any other.
    mount = tmp_path / "mnt"
    mount.mkdir()
    script = (
        f"mount -t tmpfs -o mode=0755 tmpfs {mount} && mkdir -m 0755 {mount}/plugins && "
        f"printf 'x = 1\\n' > {mount}/plugins/ok.py && chmod 0664 {mount}/plugins/ok.py && "
        f"mount -o remount,ro {mount} && "
        f"{sys.executable} -m runner check --plugins {mount}/plugins"
    )
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parent.parent,
    )
    if "mount:" in result.stderr or "unshare:" in result.stderr:
        pytest.skip(f"cannot mount here: {result.stderr.strip()}")
    assert result.returncode == 1
    assert f"{mount}/plugins/ok.py (owner uid 0, mode 0664) is writable by its group" in result.stderr


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
