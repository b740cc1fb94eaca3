"""The Unix-socket server: the only module that touches sockets.

Threading rules:

* One worker thread per APISIX connection (``ThreadingMixIn``). APISIX opens a
  second connection for a PrepareConf while the first one waits silently, so
  connections are never serialised and no lock is held across a call.
* A connection carries one call at a time: read a frame, answer it (asking
  ExtraInfo questions on the same connection in between), repeat until EOF.
  There is no idle timeout: APISIX keeps connections pooled for up to 180 s.
* Every read goes through ``Connection.read_frame``, which returns whole frames
  whatever the fragmentation, ``None`` at EOF on a frame boundary, and raises
  ``FrameError`` at EOF inside a frame.

Shutdown rules: ``close_idle_connections`` marks the server closing and shuts
down the connections that sit idle between calls; each busy connection closes
after its reply, and ``wait_for_calls`` waits (bounded) for those replies.

Socket path rules: refuse a path that exists and is not a socket; bind under a
temporary name, chmod, then ``rename`` onto the path, so the path never exists
with the wrong mode and a runner started by an APISIX reload takes over the
path atomically; on close, unlink the path only if it is still our inode (the
old runner of a reload must not delete the new one's socket).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import socketserver
import stat
import threading

from .dispatch import Dispatcher
from .errors import CallAbandoned, ConfigError, FrameError
from .frame import HEADER_LEN, Frame, FrameDecoder, encode
from .protocol import MessageType

log = logging.getLogger(__name__)

# Per recv; the receive buffer is allocated per read rather than kept per
# connection, so thousands of idle pooled connections cost little memory.
_RECV_SIZE = 64 * 1024
_SUN_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL


class RunnerServer(socketserver.ThreadingUnixStreamServer):
    """Serves APISIX connections on a Unix socket; see the module docstring for the rules."""

    daemon_threads = True  # shutdown drains calls itself (wait_for_calls), bounded in time
    block_on_close = False
    request_queue_size = 1024  # a full backlog makes APISIX's non-blocking connect fail at once

    def __init__(
        self,
        path: str | None,
        dispatcher: Dispatcher,
        mode: int = 0o766,
        group: int | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        """Bind ``path``, or serve ``sock`` when a listening socket is inherited (systemd)."""
        self.dispatcher = dispatcher
        self.mode = mode
        self.group = group
        self._inode: tuple[int, int] | None = None  # set only for a path we bound ourselves
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._connections: set[Connection] = set()
        self._busy = 0
        self.closing = False
        if sock is None:
            if path is None:
                raise ConfigError("socket: no address given (--socket, or APISIX_LISTEN_ADDRESS=unix:/path)")
            super().__init__(path, Connection)
        else:
            super().__init__(sock.getsockname(), Connection, bind_and_activate=False)
            self.socket.close()
            self.socket = sock

    # --- socket path -------------------------------------------------------

    def server_bind(self) -> None:
        path = str(self.server_address)
        check_socket_path(path)
        directory, base = os.path.split(path)
        temp = os.path.join(directory, f".{base}.{os.getpid()}")
        if len(os.fsencode(temp)) > _SUN_PATH_MAX:
            # No room for a temporary name: replace a stale socket in place.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            temp = path
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
        self.socket.bind(temp)
        try:
            os.chmod(temp, self.mode)
            if self.group is not None:
                os.chown(temp, -1, self.group)
            if temp != path:
                os.rename(temp, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        st = os.stat(path)
        self._inode = (st.st_dev, st.st_ino)

    def server_close(self) -> None:
        """Close the listener and remove our socket path (idempotent)."""
        super().server_close()
        inode, self._inode = self._inode, None
        if inode is None:  # inherited (its owner removes it), or already done
            return
        path = str(self.server_address)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) == inode:
            os.unlink(path)
        else:
            log.info("not removing %s: another runner has bound it since", path)

    def handle_error(self, request: object, client_address: object) -> None:
        log.exception("unexpected error on an APISIX connection")

    # --- connection tracking ----------------------------------------------

    def _enter(self, conn: Connection) -> bool:
        with self._lock:
            if self.closing:
                return False
            self._connections.add(conn)
            return True

    def _leave(self, conn: Connection) -> None:
        with self._lock:
            self._connections.discard(conn)
            if conn.busy:
                conn.busy = False
                self._busy -= 1
                self._drained.notify_all()

    def _call_started(self, conn: Connection) -> None:
        with self._lock:
            conn.busy = True
            self._busy += 1

    def _call_ended(self, conn: Connection) -> bool:
        """Mark ``conn`` idle; ``False`` if it must close because the server is stopping."""
        with self._lock:
            conn.busy = False
            self._busy -= 1
            if self._busy == 0:
                self._drained.notify_all()
            return not self.closing

    @property
    def connection_count(self) -> int:
        with self._lock:
            return len(self._connections)

    @property
    def calls_in_flight(self) -> int:
        with self._lock:
            return self._busy

    def close_idle_connections(self) -> None:
        """Start stopping: close the connections idle between calls; busy ones close after their reply."""
        with self._lock:
            self.closing = True
            for conn in self._connections:
                if not conn.busy:
                    conn.close_idle()

    def wait_for_calls(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the calls in flight to be answered; ``True`` if all were."""
        with self._lock:
            return self._drained.wait_for(lambda: self._busy == 0, timeout)


class Connection(socketserver.BaseRequestHandler):
    """One APISIX connection, served on its own thread until EOF."""

    request: socket.socket
    server: RunnerServer

    def setup(self) -> None:
        self.busy = False
        self._decoder = FrameDecoder()
        # Held by the call's ExtraInfo exchange; calls on a connection never overlap.
        self.call_lock = threading.Lock()

    def handle(self) -> None:
        server = self.server
        if not server._enter(self):
            return
        dispatch = server.dispatcher.handle
        sock = self.request
        try:
            while True:
                received = self.read_frame()
                if received is None:
                    return
                server._call_started(self)
                call = _Call(self)
                try:
                    reply = dispatch(received.type, received.payload, call.exchange)
                except CallAbandoned as e:
                    log.debug("call abandoned: %s", e)
                    return
                finally:
                    call.close()
                if call.abandoned:  # a plugin swallowed CallAbandoned: still send nothing
                    return
                sock.sendall(reply)
                if not server._call_ended(self):
                    return
        except FrameError as e:
            log.debug("dropping connection: %s", e)
        except (ConnectionError, TimeoutError) as e:
            log.debug("connection lost: %s", e)
        finally:
            server._leave(self)

    def read_frame(self) -> Frame | None:
        """The next whole frame; ``None`` at a clean EOF; ``FrameError`` at EOF inside a frame."""
        decoder = self._decoder
        sock = self.request
        while (received := decoder.next_frame()) is None:
            if decoder.pending >= HEADER_LEN and decoder.missing() > _RECV_SIZE:
                # A big frame (a body): receive the rest straight into a buffer of
                # its size, which becomes the payload without further copies.
                type_, payload, got = decoder.take_partial()
                with memoryview(payload) as view:
                    while got < len(payload):
                        n = sock.recv_into(view[got:])
                        if not n:
                            raise FrameError(f"connection closed inside a frame ({len(payload) - got} bytes missing)")
                        got += n
                return Frame(type_, payload)
            data = sock.recv(_RECV_SIZE)
            if not data:
                if decoder.pending:
                    raise FrameError(f"connection closed inside a frame ({decoder.pending} bytes buffered)")
                return None
            if (whole := decoder.whole_frame(data)) is not None:  # the usual read: exactly one frame
                return whole
            decoder.feed(data)
        return received

    def close_idle(self) -> None:
        # Wakes the thread blocked in recv with EOF; called with the server lock held.
        with contextlib.suppress(OSError):
            self.request.shutdown(socket.SHUT_RDWR)


class _Call:
    """One call's line to APISIX for ExtraInfo questions, valid only while the call is open.

    Questions go one at a time (a plugin may ask from several threads), and a
    request object kept past its call cannot ask inside a later call.
    """

    __slots__ = ("_conn", "_lock", "_open", "abandoned")

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = conn.call_lock
        self._open = True
        self.abandoned = False

    def close(self) -> None:
        with self._lock:  # waits for a question in flight, so its frames never mix with the reply
            self._open = False

    def exchange(self, question: bytes) -> bytes | bytearray:
        """Ask APISIX one ExtraInfo question on the call's connection; return its answer's payload."""
        with self._lock:
            if not self._open:
                raise RuntimeError("this call has ended: ExtraInfo can only be asked while it is handled")
            if self.abandoned:
                raise CallAbandoned("the connection was already given up")
            try:
                self._conn.request.sendall(encode(MessageType.EXTRA_INFO, question))
                answer = self._conn.read_frame()
            except (OSError, FrameError) as e:
                self.abandoned = True
                raise CallAbandoned(f"connection lost while waiting for ExtraInfo: {e}") from None
            if answer is None or answer.type != MessageType.EXTRA_INFO:
                self.abandoned = True
                got = "EOF" if answer is None else f"a type-{answer.type} frame"
                raise CallAbandoned(f"APISIX answered an ExtraInfo question with {got}")
            return answer.payload


def check_socket_path(path: str) -> None:
    """Refuse paths we must not or cannot bind, with a message that says why."""
    if not os.path.isabs(path):
        raise ConfigError(f"socket path must be absolute: {path!r}")
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise ConfigError(f"socket path is longer than {_SUN_PATH_MAX} bytes: {path!r}")
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise ConfigError(f"socket directory does not exist: {directory}")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"socket path exists and is not a socket: {path}")
