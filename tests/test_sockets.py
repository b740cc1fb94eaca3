"""The socket path: bound without races, refused with a reason, never taken from a live runner silently."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import SUITE_PLUGINS, cli, wait_for

from runner import sockets
from runner.errors import ConfigError
from runner.testing import RunnerProcess


def test_symlinks_planted_in_the_socket_directory_leave_their_target_untouched(short_dir: Path) -> None:
    victim = short_dir / "victim"
    victim.write_text("root's secret")
    victim.chmod(0o600)
    sock = short_dir / "runner.sock"
    # Every name a runner has used or might guess: the old temporary name, the path's neighbours.
    for pid in range(os.getpid() - 50, os.getpid() + 5000, 7):
        (short_dir / f".runner.sock.{pid}").symlink_to(victim)
    (short_dir / ".a6-guess").symlink_to(victim)
    with RunnerProcess(SUITE_PLUGINS, socket_path=str(sock), args=["--socket-mode", "0766"]) as proc:
        with proc.client() as c:
            assert c.http_req_call(c.prepare_conf(None)).action == "none"
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o766
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert victim.read_text() == "root's secret"
    assert not [p for p in short_dir.iterdir() if p.name.startswith(".a6-") and p.is_dir()]  # no private dir left


def _swap_every_new_entry(shared: Path, keep: set[str], victim: Path, victim_dir: Path, done: threading.Event) -> None:
    """The attacker: each new entry of ``shared`` becomes a symlink to a victim, as soon as seen."""
    seen = set(keep)
    n = 0
    while not done.is_set():
        for name in os.listdir(shared):
            if name in seen or name.startswith("~"):  # ``~``: the attacker's own names
                continue
            seen.add(name)
            n += 1
            entry = shared / name
            with contextlib.suppress(OSError):  # lost the race for this one: the runner removed it
                if entry.is_dir() and not entry.is_symlink():
                    os.rename(entry, shared / f"~moved{n}")
                    os.symlink(victim_dir, entry)
                else:
                    os.symlink(victim, shared / f"~link{n}")
                    os.rename(shared / f"~link{n}", entry)


def test_entries_swapped_for_symlinks_while_runners_start_leave_the_victims_untouched(short_dir: Path) -> None:
    victim = short_dir / "victim"
    victim.write_text("root's secret")
    victim.chmod(0o600)
    victim_dir = short_dir / "victim-dir"
    victim_dir.mkdir(mode=0o700)
    (victim_dir / "keep").write_text("kept")
    shared = short_dir / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp: anyone may add entries
    sock = shared / "r.sock"
    done = threading.Event()
    attacker = threading.Thread(target=_swap_every_new_entry, args=(shared, {"r.sock"}, victim, victim_dir, done))
    attacker.start()
    outcomes = []
    try:
        for _ in range(20):
            proc = RunnerProcess(SUITE_PLUGINS, socket_path=str(sock), args=["--socket-mode", "0766"])
            try:
                with proc:
                    with proc.client() as c:
                        assert c.http_req_call(c.prepare_conf(None)).action == "none"
                    assert proc.stop(timeout=5) == 0
                    outcomes.append("served")
            except RuntimeError:  # it exited before getting ready
                assert proc.proc is not None and proc.proc.returncode == 1
                errors = [line for line in proc.log.splitlines() if " ERROR " in line or " CRITICAL " in line]
                assert len(errors) == 1 and str(sock) in errors[0], proc.log
                outcomes.append("refused")
            finally:
                proc.__exit__(None, None, None)
    finally:
        done.set()
        attacker.join(10)
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600 and victim.read_text() == "root's secret"
    assert stat.S_IMODE(victim_dir.stat().st_mode) == 0o700
    assert os.listdir(victim_dir) == ["keep"] and (victim_dir / "keep").read_text() == "kept"
    assert len(outcomes) == 20


def test_a_symlink_at_the_socket_path_is_refused_and_its_target_untouched(short_dir: Path) -> None:
    victim = short_dir / "victim"
    victim.write_text("x")
    victim.chmod(0o600)
    (short_dir / "runner.sock").symlink_to(victim)
    result = cli("run", "--socket", str(short_dir / "runner.sock"), "--plugins", str(SUITE_PLUGINS))
    assert result.returncode == 1
    assert "exists and is not a socket" in result.stderr
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600


def test_a_directory_at_the_socket_path_is_refused(short_dir: Path) -> None:
    (short_dir / "runner.sock").mkdir()
    result = cli("run", "--socket", str(short_dir / "runner.sock"), "--plugins", str(SUITE_PLUGINS))
    assert result.returncode == 1
    assert f"socket path {short_dir}/runner.sock exists and is not a socket" in result.stderr


def test_a_missing_socket_directory_is_named(short_dir: Path) -> None:
    result = cli("run", "--socket", str(short_dir / "nope" / "r.sock"), "--plugins", str(SUITE_PLUGINS))
    assert result.returncode == 1
    assert f"socket directory {short_dir}/nope: No such file or directory" in result.stderr


def test_check_refuses_what_run_refuses(short_dir: Path) -> None:
    (short_dir / "runner.sock").mkdir()
    result = cli("check", "--socket", str(short_dir / "runner.sock"), "--plugins", str(SUITE_PLUGINS))
    assert result.returncode == 1
    assert "exists and is not a socket" in result.stderr


def test_a_live_runner_socket_is_not_taken_over_unless_asked() -> None:
    with RunnerProcess(SUITE_PLUGINS) as live:
        result = cli("run", "--socket", live.socket_path, "--plugins", str(SUITE_PLUGINS))
        assert result.returncode == 1
        assert f"another runner is serving {live.socket_path}" in result.stderr
        with live.client() as c:  # still the live runner's socket, still answering
            assert c.http_req_call(c.prepare_conf(None)).action == "none"


def test_a_takeover_is_logged_on_both_sides() -> None:
    # What an APISIX reload does: the new runner starts on the path while the old one still serves it.
    with RunnerProcess(SUITE_PLUGINS) as old:
        with RunnerProcess(SUITE_PLUGINS, socket_path=old.socket_path, args=["--replace-socket", "yes"]) as new:
            wait_for(lambda: "no longer ours" in old.log, "the old runner to notice the takeover")
            assert "taking over" in new.log
            assert old.stop() == 0
            assert os.path.exists(new.socket_path)  # the old runner left the new one's socket alone
            assert "another runner has bound it" in old.log
            with new.client() as c:
                assert c.http_req_call(c.prepare_conf(None)).action == "none"


@pytest.mark.parametrize("parent", ["nginx", "sh"])
def test_replace_socket_auto_takes_over_only_when_apisix_spawned_the_runner(short_dir: Path, parent: str) -> None:
    # APISIX's nginx owns the path it gives ext-plugin.cmd: the runner it spawns on a reload takes
    # it over. The same command from a shell finds a live runner there and leaves it alone.
    shell = short_dir / parent
    shutil.copy("/bin/sh", shell)  # /proc/PID/comm is the executable's name
    with RunnerProcess(SUITE_PLUGINS, socket_path=str(short_dir / "r.sock")) as first:
        log = short_dir / "second.log"
        run = (
            f"{sys.executable} -m runner run --socket {first.socket_path} --plugins {SUITE_PLUGINS}"
            f" --replace-socket auto 2>{log}; echo exit=$? >>{log}"
        )
        env = dict(os.environ, APISIX_CONF_EXPIRE_TIME="3600")
        spawner = subprocess.Popen([str(shell), "-c", run], stdin=subprocess.PIPE, env=env)
        try:
            if parent == "nginx":
                wait_for(lambda: "no longer ours" in first.log, "the first runner to notice the takeover")
                assert f"taking over {first.socket_path} from the runner serving it" in log.read_text()
                assert first.stop() == 0
                with first.client() as c:  # the path is the second runner's now
                    assert c.http_req_call(c.prepare_conf(None)).action == "none"
            else:
                assert spawner.wait(30) == 0
                lines = log.read_text().splitlines()
                assert lines[-1] == "exit=1"
                refused = [line for line in lines if f"another runner is serving {first.socket_path}" in line]
                assert len(refused) == 1 and "replace_socket = yes" in refused[0]
                assert "no longer ours" not in first.log
                with first.client() as c:
                    assert c.http_req_call(c.prepare_conf(None)).action == "none"
        finally:
            if spawner.poll() is None:  # the second runner still runs under it
                with open(f"/proc/{spawner.pid}/task/{spawner.pid}/children") as f:
                    for pid in f.read().split():
                        os.kill(int(pid), signal.SIGTERM)
            assert spawner.stdin is not None
            spawner.stdin.close()
            spawner.wait(30)


def test_a_stale_socket_is_replaced_without_asking(short_dir: Path) -> None:
    path = str(short_dir / "stale.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(path)  # bound, never listening: what a killed runner leaves behind
    with RunnerProcess(SUITE_PLUGINS, socket_path=path) as proc, proc.client() as c:
        assert c.http_req_call(c.prepare_conf(None)).action == "none"


def test_check_warns_when_every_local_user_may_connect(short_dir: Path) -> None:
    result = cli("check", "--socket", str(short_dir / "r.sock"), "--plugins", str(SUITE_PLUGINS))
    assert result.returncode == 0
    assert "lets every local user use APISIX's routes" in result.stderr
    quiet = cli(
        "check", "--socket", str(short_dir / "r.sock"), "--plugins", str(SUITE_PLUGINS), "--socket-mode", "0660"
    )
    assert quiet.returncode == 0 and "every local user" not in quiet.stderr


def _swap_private_dir(monkeypatch: pytest.MonkeyPatch, replace: Callable[[Path], None]) -> list[Path]:
    """What an attacker with write access to the socket directory could do between ``mkdtemp``
    and the bind: move the fresh private directory away and put ``replace(path)`` there."""
    made: list[Path] = []
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(**kwargs: str) -> str:
        private = Path(real_mkdtemp(**kwargs))
        private.rename(private.with_name("moved-away"))
        replace(private)
        made.append(private)
        return str(private)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    return made


def _victim(short_dir: Path) -> Path:
    victim = short_dir / "victim"
    victim.mkdir(mode=0o700)
    (victim / "secret").write_text("root's")
    return victim


def test_a_private_directory_swapped_for_a_symlink_is_refused_and_its_target_untouched(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = _victim(short_dir)
    made = _swap_private_dir(monkeypatch, lambda private: private.symlink_to(victim))
    path = short_dir / "r.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock, pytest.raises(ConfigError) as info:
        sockets.bind(sock, str(path), 0o666, None, False)
    assert f"socket {path}: the private directory {made[0]} made to bind it cannot be opened" in str(info.value)
    assert sorted(p.name for p in victim.iterdir()) == ["secret"]  # nothing bound, renamed or removed there
    assert stat.S_IMODE(victim.stat().st_mode) == 0o700 and (victim / "secret").read_text() == "root's"
    assert not path.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a directory another user owns")
def test_a_private_directory_swapped_for_another_users_directory_is_refused(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def theirs(private: Path) -> None:
        private.mkdir(mode=0o700)
        os.chown(private, 65534, 65534)

    made = _swap_private_dir(monkeypatch, theirs)
    path = short_dir / "r.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock, pytest.raises(ConfigError) as info:
        sockets.bind(sock, str(path), 0o666, None, False)
    assert f"socket {path}: the private directory {made[0]} made to bind it is not ours any more" in str(info.value)
    assert "owner uid 65534" in str(info.value)
    assert list(made[0].iterdir()) == [] and not path.exists()


@pytest.mark.parametrize("proc", [True, False], ids=["via-proc-fd", "no-proc"])
def test_bind_leaves_the_socket_at_its_path_with_its_mode_and_no_private_directory(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch, proc: bool
) -> None:
    if not proc:  # a chroot without /proc: bound by path in the private directory
        isdir = os.path.isdir
        monkeypatch.setattr(os.path, "isdir", lambda p: not str(p).startswith("/proc/self/fd/") and isdir(p))
    path = short_dir / "r.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        inode = sockets.bind(sock, str(path), 0o660, os.getegid(), False)
        sock.listen(1)
        st = path.lstat()
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == os.getegid()
        assert (st.st_dev, st.st_ino) == inode
        assert sorted(p.name for p in short_dir.iterdir()) == ["r.sock"]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))  # served at the path, not where it was bound
