"""The control line: ``apisix-python-runner reload --pid PID`` asks runner PID to reload and waits.

SIGHUP reloads too, but a signal carries no answer: ``systemctl reload``
(``ExecReload=``) and ``docker exec`` need to wait for the outcome and fail
when the reload failed. Rules:

* The runner (the master, with several workers) listens on an abstract Unix
  socket named after its pid: no file to create, so it works with a read-only
  root and inside systemd's sandbox, and it goes away with the process.
* Only root and the runner's own user may ask (``SO_PEERCRED``); anyone else
  is closed without an answer.
* Anyone may bind an abstract address first (there is no file mode to stop
  them): a runner that finds its address taken logs one warning and serves
  on without it (SIGHUP still reloads). The asker checks, with
  ``SO_PEERCRED``, that the process answering is the runner it named (that
  pid; and, unless the asker is root, root's or the asker's uid) before
  believing an answer.
* A request is one line, ``reload``; the answer one line, ``ok: ...`` once the
  new plugins serve, or ``failed: ...`` with the reason (the old plugins keep
  serving then).
"""

from __future__ import annotations

import errno
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


def shown(pid: int) -> str:
    """The address as ``ss -x`` shows it."""
    return "@" + address(pid)[1:]


def serve(on_reload: OnReload) -> socket.socket | None:
    """Listen for reload requests on a daemon thread; ``on_reload(reply)`` runs for each.
    ``None`` (and one warning) if the address cannot be had."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(address(os.getpid()))
        listener.listen(8)
    except OSError as e:
        listener.close()
        why = "in use by another process" if e.errno == errno.EADDRINUSE else f"unusable ({e.strerror})"
        log.warning(
            "control socket %s %s: `apisix-python-runner reload --pid %d` unavailable; use SIGHUP",
            shown(os.getpid()),
            why,
            os.getpid(),
        )
        return None
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
    """Ask runner ``pid`` to reload: ``(exit status, line)``: 0 reloaded, 1 failed, 2 no answer
    (nothing listens, or what listens is not runner ``pid``)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(address(pid))
            peer, uid, _ = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
            # Root may ask a runner of any user (the runner lets it); anyone else only root's or its own.
            if peer != pid or (os.geteuid() != 0 and uid not in (0, os.geteuid())):
                return 2, (
                    f"not asking: control socket {shown(pid)} is held by pid {peer} (uid {uid}), not by runner {pid}; "
                    f"send SIGHUP to {pid} instead"
                )
            sock.sendall(b"reload\n")
            answer = sock.makefile().readline().strip()
    except OSError as e:
        return 2, f"no answer from runner {pid}: {e.strerror or e}"
    if answer.startswith("ok"):
        return 0, answer
    if answer.startswith("failed"):
        return 1, answer
    return 2, f"no answer from runner {pid} (is it an apisix-python-runner?)"
