"""The control line: ``apisix-python-runner reload --pid PID`` asks runner PID to reload and waits.

SIGHUP reloads too, but a signal carries no answer: ``systemctl reload``
(``ExecReload=``) and ``docker exec`` need to wait for the outcome and fail
when the reload failed. Rules:

* The runner (the master, with several workers) listens on an abstract Unix
  socket named after its pid: no file to create, so it works with a read-only
  root and inside systemd's sandbox, and it goes away with the process.
* Only root and the runner's own user may ask (``SO_PEERCRED``); anyone else
  is closed without an answer.
* A request is one line, ``reload``; the answer one line, ``ok: ...`` once the
  new plugins serve, or ``failed: ...`` with the reason (the old plugins keep
  serving then).
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

_UCRED = struct.Struct("3i")
#: Called with a function that sends the outcome line back to the asker.
OnReload = Callable[[Callable[[str], None]], None]


def address(pid: int) -> str:
    return f"\0apisix-python-runner/{pid}/control"


def serve(on_reload: OnReload) -> socket.socket:
    """Listen for reload requests on a daemon thread; ``on_reload(reply)`` runs for each."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address(os.getpid()))
    listener.listen(8)
    threading.Thread(target=_accept, args=(listener, on_reload), name="control", daemon=True).start()
    return listener


def _accept(listener: socket.socket, on_reload: OnReload) -> None:
    allowed = {0, os.geteuid()}
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        conn.settimeout(5.0)
        try:
            _, uid, _ = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
            request = conn.recv(64).strip() if uid in allowed else b""
        except OSError:
            request = b""
        if request != b"reload":
            conn.close()
            continue
        conn.settimeout(None)

        def reply(line: str, conn: socket.socket = conn) -> None:
            try:
                conn.sendall(line.encode() + b"\n")
            except OSError:
                pass
            finally:
                conn.close()

        on_reload(reply)


def reload(pid: int, timeout: float) -> tuple[int, str]:
    """Ask runner ``pid`` to reload: ``(exit status, line)``: 0 reloaded, 1 failed, 2 no answer."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(address(pid))
            sock.sendall(b"reload\n")
            answer = sock.makefile().readline().strip()
    except OSError as e:
        return 2, f"no answer from runner {pid}: {e.strerror or e}"
    if answer.startswith("ok"):
        return 0, answer
    if answer.startswith("failed"):
        return 1, answer
    return 2, f"no answer from runner {pid} (is it an apisix-python-runner?)"
