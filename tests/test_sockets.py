"""The socket path: bound without races, refused with a reason, never taken from a live runner silently."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from helpers import SUITE_PLUGINS, cli, wait_for

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
