"""The control line: a squatted address costs only ``reload --pid``, and an impostor is never believed."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from helpers import SUITE_PLUGINS, cli, wait_for

from runner import control
from runner.testing import ApisixClient


@contextlib.contextmanager
def squatter(pid: int) -> Iterator[socket.socket]:
    """Another process's listener on runner ``pid``'s control address, answering every asker
    as a runner would after a reload that worked (a lie)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(control.address(pid))
    listener.listen(8)

    def lie() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):  # an asker that hangs up unanswered
                conn.recv(64)
                conn.sendall(b"ok: reloaded 9 plugin(s): forged\n")

    threading.Thread(target=lie, daemon=True).start()
    try:
        yield listener
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()


def test_a_squatted_control_address_leaves_the_runner_serving_with_one_warning(short_dir: Path) -> None:
    sock, log = short_dir / "r.sock", short_dir / "log"
    # The runner's pid is the shell's (exec): known before the runner binds anything.
    run = [sys.executable, "-m", "runner", "run", "--socket", str(sock), "--plugins", str(SUITE_PLUGINS)]
    with open(log, "wb") as out:
        runner = subprocess.Popen(
            ["sh", "-c", 'read go; exec "$@" </dev/null', "sh", *run], stdin=subprocess.PIPE, stderr=out
        )
    try:
        with squatter(runner.pid):
            assert runner.stdin is not None
            runner.stdin.write(b"go\n")
            runner.stdin.close()
            wait_for(lambda: "serving on" in log.read_text(), "the runner to serve")
            with ApisixClient(str(sock), 10.0) as c:
                assert c.http_req_call(c.prepare_conf(None)).action == "none"
            warnings = [line for line in log.read_text().splitlines() if "control socket" in line]
            assert len(warnings) == 1 and "WARNING" in warnings[0]
            assert f"{control.shown(runner.pid)} in use by another process" in warnings[0]
            assert "reload --pid" in warnings[0] and "use SIGHUP" in warnings[0]
            runner.send_signal(signal.SIGHUP)  # what the warning offers still works
            wait_for(lambda: "reloaded" in log.read_text(), "the SIGHUP reload")
    finally:
        runner.terminate()
        assert runner.wait(10) == 0


def test_reload_refuses_to_believe_a_process_that_is_not_the_runner(short_dir: Path) -> None:
    with subprocess.Popen(["sleep", "30"]) as bystander:  # a real pid, of something that is no runner
        try:
            with squatter(bystander.pid):
                result = cli("reload", "--pid", str(bystander.pid), "--timeout", "5")
        finally:
            bystander.kill()
    assert result.returncode == 2 and "forged" not in result.stdout + result.stderr
    assert f"control socket {control.shown(bystander.pid)} is held by pid {os.getpid()}" in result.stderr
    assert f"not by runner {bystander.pid}" in result.stderr
