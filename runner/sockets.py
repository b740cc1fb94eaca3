"""The socket path and who may connect: binding it without races, never taking it by surprise.

Rules:

* A path that exists and is not a socket (a directory, a file, a symlink) is
  refused; so is a path whose directory is missing or not writable, with a
  message naming the path, our uid and the directory's owner and mode.
* Binding is race-free whatever the directory's permissions: the socket is
  bound inside a private directory (mode 0700, random name) created next to
  the path, given its mode and group there, and then renamed onto the path.
  The private directory is opened once (``O_NOFOLLOW``) and checked (ours,
  0700); binding, chmod, chown and rename all go through that fd
  (``/proc/self/fd/N/s``), so a directory swapped for a symlink or another
  directory after ``mkdtemp`` is refused, never written through. So the path
  never exists with the wrong mode, no predictable name is used in a shared
  directory, and a runner replacing another takes the path over atomically.
  (The socket's own address, in ``ss -x`` or ``/proc/net/unix``, is the
  ``/proc/self/fd/...`` name it was bound with, not the path.)
* A live runner's socket is never taken silently: before replacing a socket,
  ``probe`` connects to it. A socket nobody answers on is stale and replaced;
  a live one is refused unless replacing was asked for (``replace_socket``),
  and a takeover is logged either way.
* On exit the path is removed only if it is still the inode we bound (the old
  runner of an APISIX reload must not delete the new one's socket).
* Peer credentials: with ``allowed_uids``/``allowed_gids`` set, a connection
  is kept only if the peer's uid is listed or one of its groups is
  (``SO_PEERCRED``, plus ``SO_PEERGROUPS`` where the kernel has it). Root and
  the runner's own uid are always admitted then: root could bypass any check
  anyway, and the runner's own ``health`` probe runs as its user.
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
    fd = _open_private(private, path)  # refused: what is there now is not ours to remove
    try:
        _bind_private(sock, fd, private, path, mode, group)
    except OSError as e:
        raise ConfigError(f"socket {path}: cannot bind it (via {private}): {e.strerror or e}") from None
    finally:
        _remove_private(private, fd, path)
    st = os.stat(path)
    return st.st_dev, st.st_ino


_NAME = "s"  # the socket's name inside the private directory


def _open_private(private: str, path: str) -> int:
    """An fd of the private directory, once it is known to be the one we made: ours, mode 0700."""
    try:
        fd = os.open(private, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise ConfigError(
            f"socket {path}: the private directory {private} made to bind it cannot be opened "
            f"({e.strerror}): was it replaced? the socket directory must not be writable by others"
        ) from None
    st = os.fstat(fd)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) != 0o700:
        os.close(fd)
        raise ConfigError(
            f"socket {path}: the private directory {private} made to bind it is not ours any more "
            f"({_owner(st)}): the socket directory must not be writable by others"
        )
    return fd


def _bind_private(sock: socket.socket, fd: int, private: str, path: str, mode: int, group: int | None) -> None:
    """Bind in the private directory ``fd``, set mode and group there, rename onto ``path``."""
    via_fd = f"/proc/self/fd/{fd}/{_NAME}"  # ~20 bytes: always fits in sun_path
    if os.path.isdir(f"/proc/self/fd/{fd}"):
        # Resolved through the fd: the directory checked above, whatever its path names now.
        sock.bind(via_fd)
    elif len(os.fsencode(os.path.join(private, _NAME))) <= SUN_PATH_MAX:
        # No /proc (a bare chroot): by path, then made sure it landed in the directory we hold.
        sock.bind(os.path.join(private, _NAME))
        try:
            landed = stat.S_ISSOCK(os.stat(_NAME, dir_fd=fd, follow_symlinks=False).st_mode)
        except FileNotFoundError:
            landed = False
        if not landed:
            raise ConfigError(f"socket {path}: the private directory {private} was replaced while binding")
    else:
        # Neither /proc nor room for the private directory in sun_path: bind in place; the
        # umask gives the mode at creation, so no chmod follows a swapped path.
        _bind_in_place(sock, path, mode)
        if group is not None:
            os.chown(path, -1, group, follow_symlinks=False)
        return
    # By name in the fd: the socket nobody else can reach yet. (A plain chmod: the name is
    # our socket in our 0700 directory, and chmod's follow_symlinks=False is not on every libc.)
    os.chmod(_NAME, mode, dir_fd=fd)
    if group is not None:
        os.chown(_NAME, -1, group, dir_fd=fd, follow_symlinks=False)
    os.rename(_NAME, path, src_dir_fd=fd)


def _remove_private(private: str, fd: int, path: str) -> None:
    """Remove the private directory ``fd`` if ``private`` still names it (rmdir removes only an
    empty directory and never follows a symlink); a leftover is logged, not fatal."""
    try:
        held = os.fstat(fd)
        st = os.lstat(private)
        if (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino):
            os.rmdir(private)
        else:
            log.warning("socket %s: not removing %s: it is no longer the private directory we made", path, private)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("socket %s: cannot remove the private directory %s: %s", path, private, e.strerror)
    finally:
        os.close(fd)


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
    """Which peers may connect: everyone, or the listed uids and groups (and root and us)."""

    def __init__(self, uids: tuple[int, ...] = (), gids: tuple[int, ...] = ()) -> None:
        self.active = bool(uids or gids)
        self.uids = frozenset(uids) | {0, os.geteuid()}
        self.gids = frozenset(gids)

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
        return (
            f"peer pid {pid} uid {uid} gid {gid} is not in allowed_uids/allowed_gids (nor root, nor the runner's uid)"
        )


def _peer_groups(conn: socket.socket) -> frozenset[int]:
    try:
        raw = conn.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, 4 * 256)
    except OSError:
        return frozenset()
    return frozenset(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))
