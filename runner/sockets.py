"""The socket path and who may connect: binding it without races, never taking it by surprise.

Rules:

* A path that exists and is not a socket (a directory, a file, a symlink) is
  refused; so is a path whose directory is missing or not writable, with a
  message naming the path, our uid and the directory's owner and mode.
* Binding is race-free whatever the directory's permissions: the socket is
  bound inside a private directory (mode 0700, random name) created next to
  the path, given its mode and group there, where nobody else can swap it, and
  then renamed onto the path. So the path never exists with the wrong mode, no
  predictable name is used in a shared directory, and a runner replacing
  another takes the path over atomically.
* A live runner's socket is never taken silently: before replacing a socket,
  ``probe`` connects to it. A socket nobody answers on is stale and replaced;
  a live one is refused unless replacing was asked for (``replace_socket``),
  and a takeover is logged either way.
* On exit the path is removed only if it is still the inode we bound (the old
  runner of an APISIX reload must not delete the new one's socket).
* Peer credentials: with ``allowed_uids``/``allowed_gids`` set, a connection
  is kept only if the peer's uid is listed or one of its groups is
  (``SO_PEERCRED``, plus ``SO_PEERGROUPS`` where the kernel has it).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
import struct
import tempfile

from .errors import ConfigError

log = logging.getLogger(__name__)

SUN_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL
_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13
_UCRED = struct.Struct("3i")


def _owner(st: os.stat_result) -> str:
    return f"owner uid {st.st_uid} gid {st.st_gid}, mode {stat.S_IMODE(st.st_mode):04o}"


def check_path(path: str) -> None:
    """Refuse paths we must not or cannot bind, with a message that says why."""
    if not os.path.isabs(path):
        raise ConfigError(f"socket path must be absolute: {path!r}")
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise ConfigError(f"socket path is longer than {SUN_PATH_MAX} bytes: {path!r}")
    directory = os.path.dirname(path)
    try:
        st = os.stat(directory)
    except OSError as e:
        raise ConfigError(f"socket directory {directory}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"socket directory {directory} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(
            f"socket directory {directory} is not writable by this runner (uid {os.geteuid()}, "
            f"gid {os.getegid()}; directory {_owner(st)}): make it writable for the runner's user, "
            "or use a directory it owns"
        )
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"socket path {path} exists and is not a socket: remove it or choose another path")


def probe(path: str, timeout: float = 0.5) -> bool:
    """Whether something accepts connections on the socket at ``path`` (a live runner)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            return False  # nothing there, or a stale socket nobody listens on
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.ETIMEDOUT) or isinstance(e, TimeoutError):
                return True  # a full backlog: somebody listens
            raise ConfigError(f"cannot tell whether a runner serves {path}: {e.strerror or e}") from None
        return True


def bind(sock: socket.socket, path: str, mode: int, group: int | None, replace: bool) -> tuple[int, int]:
    """Bind ``sock`` at ``path`` as the module docstring says; returns the bound inode ``(dev, ino)``."""
    check_path(path)
    if os.path.lexists(path) and probe(path):
        if not replace:
            raise ConfigError(
                f"another runner is serving {path}: stop it first, choose another socket path, "
                "or set replace_socket = yes to take the path over"
            )
        log.warning("taking over %s from the runner serving it (replace_socket)", path)
    directory = os.path.dirname(path)
    private = tempfile.mkdtemp(prefix=".a6-", dir=directory)  # mode 0700, unguessable name
    try:
        inner = os.path.join(private, "s")
        if len(os.fsencode(inner)) > SUN_PATH_MAX:
            # No room for the private directory in sun_path: bind in place; the
            # umask gives the mode at creation, so no chmod follows a swapped path.
            os.rmdir(private)
            private = ""
            _bind_in_place(sock, path, mode)
        else:
            sock.bind(inner)
            os.chmod(inner, mode)
            if group is not None:
                os.chown(inner, -1, group)
            os.rename(inner, path)
        if group is not None and not private:
            os.chown(path, -1, group, follow_symlinks=False)
    finally:
        if private:
            with contextlib.suppress(OSError):
                os.rmdir(private)
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _bind_in_place(sock: socket.socket, path: str, mode: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # stale (probed above)
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(path)
    finally:
        os.umask(old)


def still_ours(path: str, inode: tuple[int, int]) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == inode


def unlink_if_ours(path: str, inode: tuple[int, int]) -> None:
    if still_ours(path, inode):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    elif os.path.lexists(path):
        log.info("not removing %s: another runner has bound it since", path)


class PeerCheck:
    """Which peers may connect: everyone, or the listed uids and groups."""

    def __init__(self, uids: tuple[int, ...] = (), gids: tuple[int, ...] = ()) -> None:
        self.uids = frozenset(uids)
        self.gids = frozenset(gids)

    @property
    def active(self) -> bool:
        return bool(self.uids or self.gids)

    def refusal(self, conn: socket.socket) -> str | None:
        """``None`` if the peer may stay, else why not (for the log)."""
        if not self.active:
            return None
        try:
            pid, uid, gid = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        except OSError as e:
            return f"its credentials are unreadable ({e.strerror})"
        if uid in self.uids or gid in self.gids:
            return None
        if self.gids and self.gids & _peer_groups(conn):
            return None
        return f"peer pid {pid} uid {uid} gid {gid} is not in allowed_uids/allowed_gids"


def _peer_groups(conn: socket.socket) -> frozenset[int]:
    try:
        raw = conn.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, 4 * 256)
    except OSError:
        return frozenset()
    return frozenset(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))
