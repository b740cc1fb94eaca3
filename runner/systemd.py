"""systemd integration with the standard library only: sd_notify and socket activation.

Both are no-ops outside systemd: without ``NOTIFY_SOCKET`` nothing is sent,
and without ``LISTEN_PID`` equal to our pid no socket is adopted (gunicorn's
``systemd.py`` follows the same rules). The variables are removed after use so
that processes the plugins start do not inherit them.
"""

from __future__ import annotations

import os
import socket

SD_LISTEN_FDS_START = 3


def notify(*states: str) -> bool:
    """Send ``KEY=value`` lines to the service manager; ``False`` if there is none."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(states).encode(), address)
    except OSError:
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WatchdogSec``), or ``None`` if not asked."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


def listen_socket() -> socket.socket | None:
    """The listening Unix socket systemd passed (``ListenStream=``), or ``None``."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    count = int(os.environ.get("LISTEN_FDS", "0") or 0)
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    if count < 1:
        return None
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        raise OSError(f"systemd passed a socket of family {sock.family!r}, type {sock.type!r}; need a Unix stream")
    os.set_inheritable(sock.fileno(), False)
    return sock
