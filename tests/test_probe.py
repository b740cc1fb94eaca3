"""The health probe's socket lookup: a name from /proc, offered only when it is a path."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from runner import probe

HOLD = """
import socket, sys
from runner import sockets
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
if sys.argv[2] == "fd":
    sockets.bind(s, sys.argv[1], 0o600, None, False)
else:
    s.bind(sys.argv[1])
s.listen(1)
print("listening", flush=True)
sys.stdin.read()
"""


def _holder(path: Path, how: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), how], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "listening\n"
    return proc


def test_socket_of_names_the_path_a_process_bound_and_listens_on(short_dir: Path) -> None:
    path = short_dir / "plain.sock"
    holder = _holder(path, "path")
    try:
        assert probe.socket_of(holder.pid) == str(path)
        # Only a name: replaced at the path by someone else, /proc still shows it (the docstring's warning).
        path.unlink()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
            other.bind(str(path))
            assert probe.socket_of(holder.pid) == str(path)
    finally:
        holder.communicate("")


def test_socket_of_offers_no_name_for_a_socket_bound_through_a_directory_fd(short_dir: Path) -> None:
    path = short_dir / "runner.sock"
    holder = _holder(path, "fd")  # how the runner binds its own socket
    try:
        assert path.exists()
        assert probe.socket_of(holder.pid) is None  # not /proc/self/fd/N/s, which names the asker's own fd
    finally:
        holder.communicate("")
