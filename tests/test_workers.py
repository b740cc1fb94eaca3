"""Several worker processes: one socket, one set of conf tokens, one lifecycle, one metrics endpoint."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import SUITE_PLUGINS, act, wait_for

from runner.errors import ErrCode
from runner.testing import ApisixClient, RunnerProcess


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def _pid_of(c: ApisixClient, token: int) -> int:
    reply = c.http_req_call(token)
    assert reply.err is None, reply
    return int(dict(reply.headers)["X-Pid"])


@contextlib.contextmanager
def _spread(proc: RunnerProcess, token: int, count: int = 24) -> Iterator[dict[int, list[ApisixClient]]]:
    """Connections grouped by the worker that serves them (each keeps its worker), closed afterwards."""
    by_worker: dict[int, list[ApisixClient]] = {}
    try:
        for _ in range(count):
            c = proc.client()
            by_worker.setdefault(_pid_of(c, token), []).append(c)
        yield by_worker
    finally:
        for clients in by_worker.values():
            for c in clients:
                c.close()


@contextlib.contextmanager
def _clients(proc: RunnerProcess, count: int) -> Iterator[list[ApisixClient]]:
    """``count`` connections held open, as APISIX pools them (so they spread), closed afterwards."""
    clients = [proc.client() for _ in range(count)]
    try:
        yield clients
    finally:
        for c in clients:
            c.close()


def _plugin_dir(tmp_path: Path, name: str, source: str) -> Path:
    """A plugin directory holding the one file ``name``."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / name).write_text(source)
    return plugins


@pytest.fixture
def two() -> Iterator[RunnerProcess]:
    with RunnerProcess(SUITE_PLUGINS, args=["--workers", "2", "--threads", "4"]) as proc:
        yield proc


def test_workers_1_keeps_a_single_process() -> None:
    with RunnerProcess(SUITE_PLUGINS, args=["--workers", "1"]) as proc:
        assert proc.proc is not None and _children(proc.proc.pid) == []


def test_a_token_prepared_on_one_worker_is_used_on_every_worker(two: RunnerProcess) -> None:
    assert two.proc is not None and len(_children(two.proc.pid)) == 2
    with two.client() as preparer:
        token = preparer.prepare_conf(act(pid_header="X-Pid"))
    with _spread(two, token) as by_worker:
        assert len(by_worker) == 2, "every connection landed on one worker"
        for pid, clients in by_worker.items():
            for c in clients:
                assert _pid_of(c, token) == pid


def test_a_prepare_conf_key_finds_the_same_live_token_on_every_worker(two: RunnerProcess) -> None:
    conf = act(pid_header="X-Pid")
    tokens, pids = set(), set()
    with _clients(two, 24) as clients:
        for c in clients:
            token = c.prepare_conf(conf, key="route#1#ext-plugin-pre-req#7")
            tokens.add(token)
            pids.add(_pid_of(c, token))  # the connection's worker also prepared it
    assert len(pids) == 2 and len(tokens) == 1


def test_tokens_expire_on_every_worker_after_their_ttl_without_use() -> None:
    env = {"APISIX_CONF_EXPIRE_TIME": "1"}  # tokens live 1.2 s after their last use
    with RunnerProcess(SUITE_PLUGINS, args=["--workers", "2"], env=env) as proc:
        with proc.client() as c:
            token = c.prepare_conf(act(pid_header="X-Pid"))
        with _spread(proc, token) as by_worker:
            assert len(by_worker) == 2
            time.sleep(2.5)
            for clients in by_worker.values():
                assert clients[0].http_req_call(token).err == ErrCode.CONF_TOKEN_NOT_FOUND


def test_a_killed_worker_is_started_again_and_the_other_keeps_serving(two: RunnerProcess) -> None:
    with two.client() as c:
        token = c.prepare_conf(act(pid_header="X-Pid"))
    with _spread(two, token) as by_worker:
        victim, survivor = sorted(by_worker)
        os.kill(victim, signal.SIGKILL)
        for c in by_worker[survivor]:
            for _ in range(5):
                assert _pid_of(c, token) == survivor
        wait_for(lambda: "worker 0 is serving again" in two.log or "worker 1 is serving again" in two.log, "respawn")
        with _spread(two, token) as fresh:  # the token, prepared before the kill, still works everywhere
            assert len(fresh) == 2 and victim not in fresh


VERSION = textwrap.dedent(
    """
    import os
    from runner import Plugin

    class Version(Plugin):
        name = "version"

        def filter(self, request, response):
            request.headers["X-Version"] = "{version}"
            request.headers["X-Pid"] = str(os.getpid())
    """
)


def test_sighup_reloads_every_worker_and_old_tokens_keep_their_code(tmp_path: Path) -> None:
    plugins = _plugin_dir(tmp_path, "version.py", VERSION.format(version="1"))
    with RunnerProcess(plugins, args=["--workers", "2"]) as proc:
        with proc.client() as c:
            old = c.prepare_conf([("version", "")], key="route#1#ext-plugin-pre-req#1")
        (plugins / "version.py").write_text(VERSION.format(version="2"))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "in 2 worker(s)" in proc.log, "the reload")
        with proc.client() as c:
            new = c.prepare_conf([("version", "")], key="route#1#ext-plugin-pre-req#1")
        assert new != old
        with _clients(proc, 24) as clients:
            for token, version in ((old, "1"), (new, "2")):
                seen = set()
                for c in clients:
                    headers = dict(c.http_req_call(token).headers)
                    assert headers["X-Version"] == version
                    seen.add(headers["X-Pid"])
                assert len(seen) == 2


def test_a_reload_that_fails_keeps_the_old_plugins_in_every_worker(tmp_path: Path) -> None:
    plugins = _plugin_dir(tmp_path, "version.py", VERSION.format(version="1"))
    with RunnerProcess(plugins, args=["--workers", "2"]) as proc:
        (plugins / "broken.py").write_text("raise SystemExit(3)\n")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload failed" in proc.log, "the failed reload")
        line = next(x for x in proc.log.splitlines() if "reload failed" in x)
        assert "broken.py" in line and "worker" in line
        with _clients(proc, 12) as clients:
            seen = set()
            for c in clients:
                token = c.prepare_conf([("version", "")], key="route#9#ext-plugin-pre-req#1")
                headers = dict(c.http_req_call(token).headers)
                assert headers["X-Version"] == "1"
                seen.add(headers["X-Pid"])
            assert len(seen) == 2


def test_sigterm_stops_every_worker_and_removes_the_socket(two: RunnerProcess) -> None:
    assert two.proc is not None
    workers = _children(two.proc.pid)
    assert two.stop(signal.SIGTERM, timeout=5) == 0
    assert not os.path.exists(two.socket_path)
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_worker_that_cannot_start_makes_the_master_exit_1_with_the_reason(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "bad.py").write_text("import no_such_module\n")
    proc = RunnerProcess(plugins, args=["--workers", "2"])
    with pytest.raises(RuntimeError, match="exited with 1"):
        proc.start()
    assert "bad.py" in proc.log and "No module named 'no_such_module'" in proc.log
    proc.__exit__(None, None, None)


def test_one_metrics_endpoint_sums_every_worker() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with RunnerProcess(SUITE_PLUGINS, args=["--workers", "2", "--metrics-port", str(port)]) as proc:
        with proc.client() as c:
            token = c.prepare_conf(act(pid_header="X-Pid"))
        with _spread(proc, token, 20) as by_worker:
            assert len(by_worker) == 2
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            lines = response.read().decode().splitlines()
    assert 'apisix_runner_calls_total{type="http_req_call",outcome="ok"} 20' in lines
    assert 'apisix_runner_plugin_duration_seconds_count{plugin="act"} 20' in lines
    assert "apisix_runner_workers 2" in lines and "apisix_runner_conf_tokens 1" in lines


def test_json_log_lines_of_a_worker_carry_its_index() -> None:
    with RunnerProcess(SUITE_PLUGINS, args=["--workers", "2", "--log-format", "json"]) as proc:
        with proc.client() as c:
            assert c.http_req_call(c.prepare_conf(act(raise_path=True))).err == ErrCode.SERVICE_UNAVAILABLE
        wait_for(lambda: "raised RuntimeError" in proc.log, "the error line")
        log = proc.log
    entries = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    error = next(e for e in entries if "raised RuntimeError" in e["msg"])
    assert error["worker"] in (0, 1)


def test_a_worker_started_again_serves_its_siblings_plugins_whatever_the_disk_holds(tmp_path: Path) -> None:
    plugins = _plugin_dir(tmp_path, "version.py", VERSION.format(version="1"))
    with RunnerProcess(plugins, args=["--workers", "2"]) as proc:
        (plugins / "version.py").write_text(VERSION.format(version="2"))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "in 2 worker(s)" in proc.log, "the reload")
        (plugins / "version.py").write_text(VERSION.format(version="3"))  # on disk, never reloaded
        (plugins / "broken.py").write_text("raise SystemExit(3)\n")
        assert proc.proc is not None
        os.kill(_children(proc.proc.pid)[0], signal.SIGKILL)
        wait_for(lambda: "is serving again" in proc.log, "the respawn")
        with _clients(proc, 24) as clients:
            seen = {}
            for c in clients:
                token = c.prepare_conf([("version", "")], key="route#1#ext-plugin-pre-req#1")
                headers = dict(c.http_req_call(token).headers)
                seen.setdefault(headers["X-Pid"], set()).add(headers["X-Version"])
            assert len(seen) == 2 and all(versions == {"2"} for versions in seen.values()), seen


def _fd_targets(pid: int) -> list[str]:
    """What the descriptors of ``pid`` point at (one closed meanwhile is left out: ``sleep`` opens and closes
    its locale files as it starts)."""
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return targets


SPAWNER = textwrap.dedent(
    """
    import os, subprocess, time
    from runner import Plugin

    class Spawner(Plugin):
        name = "spawner"

        def filter(self, request, response):
            if {fork!r}:
                child = os.fork()
                if child == 0:  # a child that keeps every descriptor of the worker, and never execs
                    time.sleep(300)
                    os._exit(0)
            else:
                # close_fds=False (or os.system, os.posix_spawn): the child keeps what is inheritable
                child = subprocess.Popen(["sleep", "300"], close_fds=False, start_new_session=True).pid
            with open({spawned!r}, "a") as f:  # every child, for the test to end them
                f.write(f"{{child}}\\n")
            request.headers["X-Child"] = str(child)
            request.headers["X-Pid"] = str(os.getpid())
    """
)


@pytest.mark.parametrize("fork", [False, True], ids=["popen", "fork"])
def test_a_worker_whose_plugin_left_a_child_running_is_started_again_when_killed(tmp_path: Path, fork: bool) -> None:
    spawned = tmp_path / "spawned"
    plugins = _plugin_dir(tmp_path, "spawner.py", SPAWNER.format(fork=fork, spawned=str(spawned)))
    with RunnerProcess(plugins, args=["--workers", "2"]) as proc:
        try:
            with proc.client() as c:
                token = c.prepare_conf([("spawner", "")])
                headers = dict(c.http_req_call(token).headers)
            child = int(headers["X-Child"])
            if not fork:  # an exec'd child inherits none of the worker's sockets
                assert not [target for target in _fd_targets(child) if target.startswith("socket:")]
            victim = int(headers["X-Pid"])
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: "is serving again" in proc.log, "the respawn")
            with _spread(proc, token) as by_worker:
                for clients in by_worker.values():
                    for c in clients:
                        assert "X-Child" in dict(c.http_req_call(token).headers)
            assert len(by_worker) == 2 and victim not in by_worker
        finally:
            for child in map(int, spawned.read_text().split()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
