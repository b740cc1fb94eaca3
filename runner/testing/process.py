"""``RunnerProcess``: a real ``python -m runner run`` on a fresh socket, for tests.

Ready when the runner itself says so (sd_notify ``READY=1``); its stderr goes
to ``log``; stopped with SIGTERM (SIGKILL after a timeout) on exit.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence

from .client import ApisixClient
from .reasons import LogTail


class RunnerProcess:
    """Starts ``python -m runner run`` on a fresh socket and stops it; its stderr goes to ``log``.

    ``with RunnerProcess("plugins") as runner: runner.client().prepare_conf(...)``
    """

    def __init__(
        self,
        plugins: str | os.PathLike[str],
        *,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        socket_path: str | None = None,
        log_level: str = "debug",
    ) -> None:
        # sun_path holds 107 bytes: keep the socket under a short directory.
        self._dir = tempfile.TemporaryDirectory(prefix="a6r-", dir="/tmp")
        self.socket_path = socket_path or os.path.join(self._dir.name, "runner.sock")
        self.log_path = os.path.join(self._dir.name, "runner.log")
        self.argv = [
            sys.executable, "-m", "runner", "run", "--socket", self.socket_path,
            "--plugins", os.fspath(plugins), "--log-level", log_level, *args,
        ]  # fmt: skip
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> RunnerProcess:
        """Spawn the runner and wait until it reports ready (sd_notify ``READY=1``).

        Readiness comes from the runner itself, not from a connect probe, which
        another process still serving the same path would pass.
        """
        ready: socket.socket | None = None
        env = dict(self.env)
        if "NOTIFY_SOCKET" not in env:  # else the caller listens itself: fall back to probing
            ready = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            ready.bind(os.path.join(self._dir.name, "notify"))
            ready.settimeout(0.05)
            env["NOTIFY_SOCKET"] = ready.getsockname()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"runner exited with {self.proc.returncode}:\n{self.log}")
                if self._ready(ready):
                    return self
        finally:
            if ready is not None:
                ready.close()
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"runner did not get ready on {self.socket_path} within {timeout} s:\n{self.log}")

    def _ready(self, notify: socket.socket | None) -> bool:
        if notify is not None:
            try:
                return b"READY=1" in notify.recv(4096).split(b"\n")
            except TimeoutError:
                return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.connect(self.socket_path)
            return True
        except OSError:
            time.sleep(0.02)
            return False

    def client(self, timeout: float = 30.0) -> ApisixClient:
        """A new APISIX connection that reads the runner's reasons from ``log`` (see ``reasons``)."""
        return ApisixClient(self.socket_path, timeout, LogTail(self.log_path))

    @property
    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def send_signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send ``signum`` and return the exit status (SIGKILL after ``timeout``)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> RunnerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._dir.cleanup()
