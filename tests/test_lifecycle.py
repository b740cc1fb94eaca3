"""The process lifecycle: start-up failures, reloads that cannot wedge, SIGTERM that always ends it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import cli, status_kib, wait_for

from runner.testing import RunnerProcess, answer_extra_info, decode_req_call_reply, req_call_req

VERSION = textwrap.dedent(
    """
    from runner import Plugin

    class Version(Plugin):
        name = "version"

        def filter(self, request, response):
            from . import _v  # imported lazily, inside the call
            request.headers["X-Version"] = _v.VERSION
    """
)


@pytest.fixture
def plugins() -> Iterator[Path]:
    path = Path(f"/tmp/a6l-{os.getpid()}-{threading.get_ident() % 10000}")
    path.mkdir(mode=0o755)
    (path / "version.py").write_text(VERSION)
    (path / "_v.py").write_text("VERSION = '1'\n")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _version(c: object, token: int) -> list[tuple[str, str | None]]:
    return c.http_req_call(token).headers  # type: ignore[attr-defined, no-any-return]


def test_system_exit_at_import_on_start_exits_1_naming_the_file(plugins: Path) -> None:
    (plugins / "quits.py").write_text("import sys\nsys.exit(0)\n")
    result = cli("run", "--socket", f"{plugins}/r.sock", "--plugins", str(plugins))
    assert result.returncode == 1
    assert "cannot start" in result.stderr and "quits.py" in result.stderr and "SystemExit" in result.stderr
    assert not os.path.exists(f"{plugins}/r.sock")


@pytest.mark.parametrize(
    "bad",
    ["import sys\nsys.exit(0)\n", "raise KeyboardInterrupt\n", "def broken(:\n"],
    ids=["exit", "interrupt", "syntax"],
)
def test_a_failed_reload_keeps_the_old_set_and_sigterm_still_works(plugins: Path, bad: str) -> None:
    with RunnerProcess(plugins) as proc, proc.client() as c:
        token = c.prepare_conf([("version", "")])
        (plugins / "bad.py").write_text(bad)
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload failed" in proc.log, "the failed reload")
        assert "bad.py" in proc.log.split("reload failed")[1].splitlines()[0]
        fresh = c.prepare_conf([("version", "")], key="route#2#ext-plugin-pre-req#1")
        assert _version(c, fresh) == [("X-Version", "1")]
        assert _version(c, token) == [("X-Version", "1")]
        assert proc.stop(signal.SIGTERM, timeout=5) == 0


def test_old_tokens_keep_their_code_after_two_reloads_lazy_imports_included(plugins: Path) -> None:
    with RunnerProcess(plugins) as proc, proc.client() as c:
        tokens = {}
        for version in ("1", "2", "3"):
            if version != "1":
                (plugins / "_v.py").write_text(f"VERSION = '{version}'\n")
                proc.send_signal(signal.SIGHUP)
                wait_for(lambda v=version: proc.log.count("reloaded 1 plugin") >= int(v) - 1, "the reload")
            tokens[version] = c.prepare_conf([("version", "")], key=f"route#1#ext-plugin-pre-req#{version}")
        for version, token in tokens.items():
            assert _version(c, token) == [("X-Version", version)]


def test_a_reload_stuck_on_a_fifo_or_an_endless_import_does_not_block_sigterm(plugins: Path) -> None:
    with RunnerProcess(plugins) as proc, proc.client() as c:
        os.mkfifo(plugins / "fifo.py")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload failed" in proc.log, "the refused FIFO")
        assert "fifo.py: is not a regular file" in proc.log
        os.unlink(plugins / "fifo.py")
        (plugins / "endless.py").write_text("while True:\n    pass\n")
        proc.send_signal(signal.SIGHUP)
        token = c.prepare_conf([("version", "")])  # the old set serves while the reload spins
        assert _version(c, token) == [("X-Version", "1")]
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "a reload is still running" in proc.log, "the refused second SIGHUP")
        assert proc.stop(signal.SIGTERM, timeout=5) == 0
        assert not os.path.exists(proc.socket_path)


def test_sigterm_during_a_slow_start_up_import_exits_at_once(plugins: Path) -> None:
    started = plugins / "import-started"
    (plugins / "slow_import.py").write_text(f"import time\nopen({str(started)!r}, 'w').close()\ntime.sleep(60)\n")
    proc = RunnerProcess(plugins)
    try:
        with open(proc.log_path, "ab") as log:
            proc.proc = subprocess.Popen(proc.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=proc.env)
        wait_for(started.exists, "the import to start")
        assert proc.stop(signal.SIGTERM, timeout=5) == 0
        assert "before start-up finished" in proc.log
    finally:
        proc.__exit__(None, None, None)


def test_sigterm_ends_the_process_whatever_threads_a_plugin_started(plugins: Path) -> None:
    (plugins / "spawner.py").write_text(
        "import threading, time\nthreading.Thread(target=time.sleep, args=(3600,), daemon=False).start()\n"
    )
    with RunnerProcess(plugins) as proc:
        with proc.client() as c:
            assert _version(c, c.prepare_conf([("version", "")])) == [("X-Version", "1")]
        assert proc.stop(signal.SIGTERM, timeout=5) == 0
        assert not os.path.exists(proc.socket_path)


def test_the_drain_answers_a_call_that_arrived_just_before_sigterm(plugins: Path) -> None:
    for _ in range(5):
        with RunnerProcess(plugins) as proc:
            with proc.client() as c:
                token = c.prepare_conf([("version", "")])
                idle = [proc.client() for _ in range(8)]
                for conn in idle:  # served once: now idle, in the selector or parked
                    assert _version(conn, token) == [("X-Version", "1")]
                payload = req_call_req(
                    id=9, token=token, method="GET", path="/", args=[], headers=[], src_ip=b"\1\2\3\4"
                )
                for conn in idle:
                    conn.send_frame(2, payload)
                proc.send_signal(signal.SIGTERM)
                for conn in idle:  # every call that reached the runner is answered, none sees EOF
                    type_, _ = conn.read_frame()
                    assert type_ == 2
                    conn.close()
            assert proc.wait(5) == 0


def test_a_shut_down_runner_refuses_new_connections_at_once(plugins: Path) -> None:
    with RunnerProcess(plugins) as proc:
        path = proc.socket_path
        proc.stop()
    with socket.socket(socket.AF_UNIX) as s, pytest.raises(OSError):
        s.connect(path)


def test_the_drain_lets_a_call_finish_its_extra_info_exchange(plugins: Path) -> None:
    (plugins / "asks.py").write_text(
        "from runner import Plugin\n"
        "class Asks(Plugin):\n"
        "    name = 'asks'\n"
        "    def filter(self, request, response):\n"
        "        request.headers['X-Addr'] = request.var('remote_addr')\n"
    )
    with RunnerProcess(plugins) as proc, proc.client() as c:
        token = c.prepare_conf([("asks", "")])
        c.send_frame(
            2, req_call_req(id=3, token=token, method="GET", path="/", args=[], headers=[], src_ip=b"\1\2\3\4")
        )
        question = c.read_frame()
        assert question[0] == 3
        proc.send_signal(signal.SIGTERM)
        c.send_frame(3, answer_extra_info(question[1], {"remote_addr": "10.0.0.1"}, {}, []))
        type_, payload = c.read_frame()  # answered, not cut off by the drain
        assert type_ == 2 and decode_req_call_reply(payload).headers == [("X-Addr", "10.0.0.1")]
        assert proc.wait(5) == 0


CHILD = textwrap.dedent(
    """
    import subprocess
    from runner import Plugin

    class Child(Plugin):
        name = "child"

        {kind}def filter(self, request, response):
            request.headers["X-Child"] = str(subprocess.Popen(["sleep", "300"]).pid)
    """
)


def _signal_mask(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith(field + ":")).split()[1], 16)


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("kind", ["", "async "], ids=["sync", "async"])
def test_a_process_a_plugin_starts_gets_sigterm_and_sigterm_still_drains(
    plugins: Path, kind: str, workers: str
) -> None:
    (plugins / "child.py").write_text(CHILD.format(kind=kind))
    children = []
    try:
        with RunnerProcess(plugins, args=["--workers", workers]) as proc:
            with proc.client() as c:
                token = c.prepare_conf([("child", "")])
                for _ in range(3):
                    children.append(int(dict(_version(c, token))["X-Child"]))
            for child in children:
                for field in ("SigBlk", "SigIgn"):
                    mask = _signal_mask(child, field)
                    assert [s for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT) if mask >> (s - 1) & 1] == []
            assert proc.stop(signal.SIGTERM, timeout=5) == 0
            assert not os.path.exists(proc.socket_path)
    finally:
        for child in children:
            os.kill(child, signal.SIGKILL)


def test_a_plugin_directory_made_group_writable_under_a_running_runner_fails_the_reload(plugins: Path) -> None:
    with RunnerProcess(plugins) as proc, proc.client() as c:
        token = c.prepare_conf([("version", "")])
        plugins.chmod(0o775)
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload failed" in proc.log, "the refused reload")
        line = proc.log.split("reload failed")[1].splitlines()[0]
        assert f"{plugins} (owner uid {os.getuid()}, mode 0775) is writable by its group" in line
        assert _version(c, token) == [("X-Version", "1")]  # the old set keeps serving
        assert _version(c, c.prepare_conf([("version", "")], key="route#2#ext-plugin-pre-req#1")) == [
            ("X-Version", "1")
        ]
        result = cli("check", "--plugins", str(plugins))
        assert result.returncode == 1
        assert f"{plugins} (owner uid {os.getuid()}, mode 0775)" in result.stdout + result.stderr
        assert proc.stop(signal.SIGTERM, timeout=5) == 0


@pytest.mark.parametrize("kind", ["zero", "fifo"])
def test_a_device_or_fifo_named_py_fails_the_reload_in_one_line_without_growing(plugins: Path, kind: str) -> None:
    with RunnerProcess(plugins) as proc, proc.client() as c:
        token = c.prepare_conf([("version", "")])
        assert proc.proc is not None
        rss = status_kib(proc.proc.pid, "VmRSS")
        name = f"{kind}.py"
        if kind == "zero":
            os.symlink("/dev/zero", plugins / name)
        else:
            os.mkfifo(plugins / name)
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload failed" in proc.log, "the refused reload")
        failed = [line for line in proc.log.splitlines() if "reload failed" in line]
        assert len(failed) == 1 and f"{name}: is not a regular file" in failed[0]
        assert status_kib(proc.proc.pid, "VmRSS") < rss + 64 * 1024
        assert _version(c, token) == [("X-Version", "1")]
        assert proc.stop(signal.SIGTERM, timeout=5) == 0
