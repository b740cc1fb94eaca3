"""The runner as operators run it: real processes, real signals, real sockets."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import EXAMPLE_PLUGINS, SUITE_PLUGINS, cli, wait_for

from runner.errors import ErrCode
from runner.testing import ApisixClient, RunnerProcess

# --- start-up errors ------------------------------------------------------------


def test_missing_socket_address_exits_1_naming_the_setting() -> None:
    env = {k: v for k, v in os.environ.items() if k != "APISIX_LISTEN_ADDRESS"}
    result = subprocess.run(
        [sys.executable, "-m", "runner", "run", "--plugins", str(SUITE_PLUGINS)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert result.returncode == 1
    assert "socket" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_path_that_is_not_a_socket_is_refused(short_dir: Path) -> None:
    path = short_dir / "file.sock"
    path.write_text("precious")
    result = cli("run", "--socket", str(path), "--plugins", str(SUITE_PLUGINS))
    assert result.returncode == 1
    assert f"socket path {path} exists and is not a socket" in result.stderr
    assert path.read_text() == "precious"


def test_plugin_import_error_exits_1_naming_the_file(short_dir: Path) -> None:
    (short_dir / "broken.py").write_text("import no_such_module_anywhere\n")
    result = cli("run", "--socket", str(short_dir / "r.sock"), "--plugins", str(short_dir))
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(short_dir / "broken.py") in lines[0] and "ModuleNotFoundError" in lines[0]


def test_duplicate_plugin_names_exit_1_naming_both_files(short_dir: Path) -> None:
    for stem in ("one", "two"):
        (short_dir / f"{stem}.py").write_text(
            "from runner import Plugin\nclass P(Plugin):\n    name = 'same'\n    def filter(self, q, r): pass\n"
        )
    result = cli("run", "--socket", str(short_dir / "r.sock"), "--plugins", str(short_dir))
    assert result.returncode == 1
    assert "'same'" in result.stderr and "one.py" in result.stderr and "two.py" in result.stderr


def test_invalid_setting_exits_1_naming_it() -> None:
    result = cli("run", "--socket", "/tmp/x.sock", env={"APISIX_CONF_EXPIRE_TIME": "soon"})
    assert result.returncode == 1
    assert "conf_expire_time (from $APISIX_CONF_EXPIRE_TIME)" in result.stderr


# --- check and health -------------------------------------------------------------


def test_check_lists_every_plugin_with_its_file_and_exits_0(short_dir: Path) -> None:
    result = cli("check", "--socket", str(short_dir / "r.sock"), "--plugins", str(EXAMPLE_PLUGINS))
    assert result.returncode == 0, result.stdout + result.stderr
    listed = [line for line in result.stdout.splitlines() if line.startswith("plugin ")]
    assert f"plugin verify_signature: {EXAMPLE_PLUGINS / 'verify_signature.py'}" in listed
    files = {str(path) for path in EXAMPLE_PLUGINS.glob("*.py") if not path.name.startswith("_")}
    assert {line.split(": ", 1)[1] for line in listed} == files  # each example file defines one plugin
    assert f"ok: {len(listed)} plugin(s)" in result.stdout
    assert not (short_dir / "r.sock").exists()  # check binds nothing


def test_check_without_a_socket_passes_for_systemd_exec_start_pre() -> None:
    result = cli("check", "--plugins", str(EXAMPLE_PLUGINS), env={"APISIX_LISTEN_ADDRESS": ""})
    assert result.returncode == 0 and "socket: none configured" in result.stdout


def test_check_fails_on_a_broken_plugin(short_dir: Path) -> None:
    (short_dir / "bad.py").write_text("syntax error here\n")
    result = cli("check", "--socket", str(short_dir / "r.sock"), "--plugins", str(short_dir))
    assert result.returncode == 1 and "bad.py" in result.stderr


def test_health_is_0_against_a_live_runner_and_1_without_one(short_dir: Path) -> None:
    with RunnerProcess(SUITE_PLUGINS) as proc:
        ok = cli("health", "--socket", f"unix:{proc.socket_path}")
        assert (ok.returncode, ok.stdout.strip()) == (0, "ok")
    down = cli("health", "--socket", str(short_dir / "none.sock"), "--timeout", "1")
    assert down.returncode == 1 and "unhealthy" in down.stderr


def test_config_precedence_file_then_env_then_flags(short_dir: Path) -> None:
    toml = short_dir / "runner.toml"
    toml.write_text(f'socket = "{short_dir}/from-file.sock"\nplugins = "{EXAMPLE_PLUGINS}"\nsocket_mode = "0660"\n')
    env = {"APISIX_LISTEN_ADDRESS": f"unix:{short_dir}/from-env.sock"}
    no_env = {"APISIX_LISTEN_ADDRESS": ""}
    assert f"{short_dir}/from-file.sock (mode 0660)" in cli("check", "--config", str(toml), env=no_env).stdout
    assert f"{short_dir}/from-env.sock" in cli("check", "--config", str(toml), env=env).stdout
    flagged = cli("check", "--config", str(toml), "--socket", f"{short_dir}/flag.sock", "--socket-mode", "600", env=env)
    assert f"{short_dir}/flag.sock (mode 0600)" in flagged.stdout
    toml.write_text("sockett = 1\n")
    typo = cli("check", "--config", str(toml), env=env)
    assert typo.returncode == 1 and "unknown setting(s) sockett" in typo.stderr


# --- signals -------------------------------------------------------------------------


def test_sigterm_lets_the_call_in_flight_finish_removes_the_socket_and_exits_0(short_dir: Path) -> None:
    started, release = short_dir / "started", short_dir / "release"
    with RunnerProcess(SUITE_PLUGINS) as proc:
        conf = json.dumps({"started": str(started), "release": str(release)})
        with proc.client() as c:
            token = c.prepare_conf([("slow", conf)])
            result: list[object] = []
            caller = threading.Thread(target=lambda: result.append(c.http_req_call(token, id=42)))
            caller.start()
            wait_for(started.exists, "the plugin to start")
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.05)  # let the runner begin its shutdown while the call is still blocked
            release.touch()
            caller.join(10)
        assert proc.wait() == 0
        reply = result[0]
        assert getattr(reply, "id", None) == 42 and getattr(reply, "headers", None) == [("X-Slow", "done")]
        assert not os.path.exists(proc.socket_path)


def test_sigterm_closes_idle_connections_and_exits_promptly() -> None:
    with RunnerProcess(SUITE_PLUGINS) as proc:
        idle = [proc.client() for _ in range(20)]
        for c in idle:  # pooled connections have served calls before they sit idle
            c.prepare_conf(None)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
        for c in idle:
            assert c.sock.recv(1) == b""  # closed by the runner, not left hanging
            c.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a socket to another group needs root")
def test_socket_mode_and_group_are_configurable(short_dir: Path) -> None:
    path = short_dir / "g.sock"
    with RunnerProcess(SUITE_PLUGINS, socket_path=str(path), args=["--socket-mode", "0660", "--socket-group", "4321"]):
        st = os.stat(path)
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o660, 4321)


PLUGIN_V = textwrap.dedent(
    """
    from runner import Plugin

    class Version(Plugin):
        name = "version"

        def filter(self, request, response):
            request.headers["X-Version"] = "{version}"
    """
)


def test_sighup_reloads_changed_plugins_for_new_confs(short_dir: Path) -> None:
    plugins = short_dir / "plugins"
    plugins.mkdir()
    (plugins / "version.py").write_text(PLUGIN_V.format(version="1"))
    with RunnerProcess(plugins) as proc, proc.client() as c:
        key = "route#1#ext-plugin-pre-req#1"
        old_token = c.prepare_conf([("version", "")], key=key)
        assert c.http_req_call(old_token).headers == [("X-Version", "1")]
        (plugins / "version.py").write_text(PLUGIN_V.format(version="2"))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reloaded 1 plugin(s)" in proc.log, "the reload")
        new_token = c.prepare_conf([("version", "")], key=key)
        assert new_token != old_token
        assert c.http_req_call(new_token).headers == [("X-Version", "2")]
        assert c.http_req_call(old_token).headers == [("X-Version", "1")]  # issued tokens keep their plugins


def test_failed_reload_keeps_the_old_plugins(short_dir: Path) -> None:
    plugins = short_dir / "plugins"
    plugins.mkdir()
    (plugins / "version.py").write_text(PLUGIN_V.format(version="1"))
    with RunnerProcess(plugins) as proc, proc.client() as c:
        (plugins / "version.py").write_text("def broken(:\n")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload failed" in proc.log, "the failed reload")
        assert "version.py" in proc.log.split("reload failed")[1].splitlines()[0]
        token = c.prepare_conf([("version", "")], key="route#2#ext-plugin-pre-req#1")
        assert c.http_req_call(token).headers == [("X-Version", "1")]


# --- systemd -------------------------------------------------------------------------


def test_sd_notify_ready_reloading_watchdog_and_stopping(short_dir: Path) -> None:
    notify_path = str(short_dir / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(notify_path)
        notify.settimeout(10)

        def messages_until(state: str) -> list[str]:
            seen: list[str] = []
            while not any(m.startswith(state) for m in seen):
                seen += notify.recv(4096).decode().split("\n")
            return seen

        env = {"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "200000"}
        with RunnerProcess(SUITE_PLUGINS, env=env) as proc:
            ready = messages_until("READY=1")
            assert any(m.startswith("STATUS=serving") for m in ready)
            assert f"MAINPID={proc.proc.pid}" in ready  # type: ignore[union-attr]
            assert "WATCHDOG=1" in messages_until("WATCHDOG=1")
            proc.send_signal(signal.SIGHUP)
            reloading = messages_until("RELOADING=1")
            assert any(m.startswith("MONOTONIC_USEC=") for m in reloading)
            messages_until("READY=1")
            proc.send_signal(signal.SIGTERM)
            messages_until("STOPPING=1")
            assert proc.wait() == 0


def test_socket_activation_serves_the_inherited_socket_and_leaves_it(short_dir: Path) -> None:
    path = str(short_dir / "activated.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    # What systemd does: the socket on fd 3, LISTEN_PID = the service's own pid, then exec.
    trampoline = textwrap.dedent(
        f"""
        import os, sys
        os.dup2({listener.fileno()}, 3)
        os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1")
        os.execv(sys.executable, [sys.executable, "-m", "runner", "run", "--plugins", "{SUITE_PLUGINS}"])
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "APISIX_LISTEN_ADDRESS"}
    with open(short_dir / "log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", trampoline],
            pass_fds=[listener.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
        )
    listener.close()
    try:
        with ApisixClient(path) as c:
            assert c.http_req_call(c.prepare_conf(None)).action == "none"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert os.path.exists(path)  # systemd's socket: its owner removes it
        assert "serving on inherited socket" in (short_dir / "log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- orphans -------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, reparented and not reaped yet, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("parent", ["nginx", "sh"])
def test_exit_with_parent_auto_follows_only_an_nginx_parent(short_dir: Path, parent: str) -> None:
    # APISIX's nginx spawns the runner with a stdin pipe (ngx.pipe) and APISIX's variables. The
    # same from a shell (or a container runtime) must not tie the runner to its parent.
    shell = short_dir / parent
    shutil.copy("/bin/sh", shell)  # /proc/PID/comm is the executable's name
    sock, log = short_dir / "o.sock", short_dir / "log"
    run = f"{sys.executable} -m runner run --socket {sock} --plugins {SUITE_PLUGINS} --log-level debug 2>{log}; true"
    env = dict(os.environ, APISIX_CONF_EXPIRE_TIME="3600")
    spawner = subprocess.Popen([str(shell), "-c", run], stdin=subprocess.PIPE, env=env)
    wait_for(lambda: sock.exists(), "the runner to listen")
    with open(f"/proc/{spawner.pid}/task/{spawner.pid}/children") as f:
        (runner_pid,) = (int(x) for x in f.read().split())
    try:
        # The runner says what it decided after it has bound the socket: wait for the line.
        wait_for(lambda: "exit_with_parent = auto:" in log.read_text(), "the runner's exit_with_parent line")
        decided = "exiting with" if parent == "nginx" else "not watching"
        assert f"exit_with_parent = auto: {decided} parent" in log.read_text()
        spawner.kill()
        spawner.wait()
        assert spawner.stdin is not None
        spawner.stdin.close()  # the pipe's last writer: the runner's stdin reads EOF
        if parent == "nginx":
            wait_for(lambda: not _alive(runner_pid), "the orphaned runner to exit")
            assert not sock.exists()
        else:
            time.sleep(2.5)  # past the runner's next ticks: a wrong watcher would have fired
            assert _alive(runner_pid)
            with ApisixClient(str(sock)) as c:
                assert c.http_req_call(c.prepare_conf(None)).action == "none"
    finally:
        if _alive(runner_pid):
            os.kill(runner_pid, signal.SIGKILL)


def test_exit_with_parent_yes_keeps_running_while_the_parent_lives() -> None:
    # stdin is /dev/null here (as under systemd or docker): EOF on it must not count as "parent gone".
    with RunnerProcess(SUITE_PLUGINS, args=["--exit-with-parent", "yes"]) as proc, proc.client() as c:
        time.sleep(0.3)  # give a wrong watcher time to fire
        assert proc.proc is not None and proc.proc.poll() is None
        assert c.http_req_call(c.prepare_conf(None)).action == "none"


# --- observability ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _thread_cpus(pid: int) -> set[str]:
    cpus = set()
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        for line in status.read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                cpus.add(line.split()[1])
    return cpus


@pytest.mark.parametrize("choice", ["auto", "last"])
def test_cpu_setting_pins_every_thread_to_one_cpu(choice: str) -> None:
    allowed = os.sched_getaffinity(0)
    cpu = "auto" if choice == "auto" else str(max(allowed))
    with RunnerProcess(SUITE_PLUGINS, args=["--cpu", cpu]) as proc, proc.client() as c:
        token = c.prepare_conf([("act", "{}")])
        assert c.http_req_call(token).err is None  # a connection thread now exists
        assert proc.proc is not None
        cpus = _thread_cpus(proc.proc.pid)
    assert len(cpus) == 1
    pinned = int(cpus.pop())
    assert pinned in allowed and (choice == "auto" or pinned == max(allowed))


def test_cpu_the_process_may_not_use_exits_1_naming_it() -> None:
    result = cli("run", "--socket", "/tmp/x.sock", "--cpu", "4095")
    assert result.returncode == 1
    assert "cpu: 4095 is not one this process may run on" in result.stderr


def test_check_refuses_a_cpu_the_process_may_not_use(short_dir: Path) -> None:
    result = cli("check", "--plugins", str(SUITE_PLUGINS), "--cpu", "4095")
    assert result.returncode == 1
    assert "cpu: 4095 is not one this process may run on" in result.stderr
    allowed = cli("check", "--plugins", str(SUITE_PLUGINS), "--cpu", str(min(os.sched_getaffinity(0))))
    assert allowed.returncode == 0, allowed.stdout


def test_metrics_endpoint_counts_calls_errors_extra_info_and_gauges() -> None:
    port = _free_port()
    with RunnerProcess(SUITE_PLUGINS, args=["--metrics-port", str(port)]) as proc, proc.client() as c:
        ok = c.prepare_conf([("act", '{"vars_to_headers": {"host": "X-H"}}')])
        for _ in range(3):
            assert c.http_req_call(ok, vars={"host": "h"}).err is None
        boom = c.prepare_conf([("act", '{"raise": "x"}')], key="route#2#ext-plugin-pre-req#1")
        assert c.http_req_call(boom).err == ErrCode.SERVICE_UNAVAILABLE
        assert c.http_req_call(12345).err == ErrCode.CONF_TOKEN_NOT_FOUND
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = response.read().decode()
    lines = set(text.splitlines())
    assert 'apisix_runner_calls_total{type="http_req_call",outcome="ok"} 3' in lines
    assert 'apisix_runner_calls_total{type="http_req_call",outcome="service_unavailable"} 1' in lines
    assert 'apisix_runner_calls_total{type="http_req_call",outcome="conf_token_not_found"} 1' in lines
    assert 'apisix_runner_calls_total{type="prepare_conf",outcome="ok"} 2' in lines
    assert 'apisix_runner_plugin_errors_total{plugin="act"} 1' in lines
    assert 'apisix_runner_extra_info_total{kind="var"} 3' in lines
    assert 'apisix_runner_plugin_duration_seconds_count{plugin="act"} 4' in lines
    assert "apisix_runner_conf_tokens 2" in lines
    assert "apisix_runner_connections 1" in lines
    assert "apisix_runner_calls_in_flight 0" in lines
    assert text.endswith("\n")


def test_json_log_lines_parse_and_carry_call_fields() -> None:
    with RunnerProcess(SUITE_PLUGINS, args=["--log-format", "json"]) as proc, proc.client() as c:
        token = c.prepare_conf([("act", '{"raise": "json-boom"}')])
        assert c.http_req_call(token, id=321).err == ErrCode.SERVICE_UNAVAILABLE
        wait_for(lambda: "json-boom" in proc.log, "the error line")
        proc.stop()
        entries = [json.loads(line) for line in proc.log.splitlines() if line.strip()]
    error = next(e for e in entries if "json-boom" in e["msg"])
    assert (error["level"], error["request_id"], error["plugin"]) == ("error", 321, "act")
    assert "Traceback" in error["exc"]
    assert any(e["msg"].startswith("serving on") for e in entries)


# --- reload and health for service managers --------------------------------------------


def test_reload_command_waits_for_the_outcome_and_fails_visibly(short_dir: Path) -> None:
    plugins = short_dir / "plugins"
    plugins.mkdir()
    (plugins / "version.py").write_text(PLUGIN_V.format(version="1"))
    with RunnerProcess(plugins) as proc, proc.client() as c:
        assert proc.proc is not None
        (plugins / "version.py").write_text(PLUGIN_V.format(version="2"))
        ok = cli("reload", "--pid", str(proc.proc.pid))
        assert ok.returncode == 0 and "reloaded 1 plugin(s): version" in ok.stdout
        token = c.prepare_conf([("version", "")])  # right after the command: the new code
        assert c.http_req_call(token).headers == [("X-Version", "2")]
        (plugins / "broken.py").write_text("raise SystemExit(1)\n")
        failed = cli("reload", "--pid", str(proc.proc.pid))
        assert failed.returncode == 1 and "broken.py" in failed.stderr and "SystemExit" in failed.stderr
        assert c.http_req_call(token).headers == [("X-Version", "2")]


def test_reload_command_without_a_runner_exits_2() -> None:
    result = cli("reload", "--pid", str(os.getpid()), "--timeout", "1")
    assert result.returncode == 2 and "no answer from runner" in result.stderr


def test_reload_command_works_with_workers(short_dir: Path) -> None:
    with RunnerProcess(SUITE_PLUGINS, args=["--workers", "2"]) as proc:
        assert proc.proc is not None
        ok = cli("reload", "--pid", str(proc.proc.pid))
        assert ok.returncode == 0 and "in 2 worker(s)" in ok.stdout


def test_health_follows_the_socket_of_a_runner_pid(short_dir: Path) -> None:
    path = str(short_dir / "other.sock")
    with RunnerProcess(SUITE_PLUGINS, socket_path=path) as proc:
        assert proc.proc is not None
        env = {"APISIX_LISTEN_ADDRESS": "unix:/run/a6/runner.sock"}  # an image's default, not what it serves
        result = cli("health", "--pid", str(proc.proc.pid), env=env)
        assert (result.returncode, result.stdout.strip()) == (0, "ok")


def test_check_errors_reach_the_journal_at_priority_err(short_dir: Path) -> None:
    (short_dir / "bad.py").write_text("raise ValueError('broken')\n")
    err = short_dir / "stderr"
    with open(err, "wb") as f:
        st = os.fstat(f.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        argv = [sys.executable, "-m", "runner", "check", "--plugins", str(short_dir)]
        result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=f, env=env, timeout=30)
    assert result.returncode == 1 and b"error" not in result.stdout
    assert err.read_text().startswith("<3>error: ") and "bad.py" in err.read_text()
