"""The Unix-socket server: accepts APISIX connections and hands them to the worker pool.

A ``socketserver.ThreadingUnixStreamServer`` whose worker threads are a
bounded pool (``pool``) instead of a thread per connection. Rules:

* One selector thread (``serve_forever``) watches the listening socket and
  every connection that is idle between calls; such a connection holds no
  thread. When one becomes readable it is queued for the pool. A new
  connection is queued at once (APISIX connects to send a call): a burst of
  them costs no selector round trip each. Busy connections keep their
  thread while frames keep coming (see ``pool``). A connection whose calls
  are async is served on the event loop instead, between its calls too
  (``loopside``), until a frame needs a thread.
* APISIX opens a second connection for a PrepareConf while the first one waits
  silently: the waiting one sits in the selector, so the nested connection is
  served whatever the pool size.
* Every resource a peer can make us hold is bounded: connections
  (``max_connections``, refused beyond with a throttled log line), bytes of
  frames being received or handled (``memory_budget``), threads (``threads``),
  time (``frame_timeout``: an idle connection holding an unfinished frame is
  swept from the selector once the frame is older than that).
  Accept errors at the descriptor limit are logged once per burst, with the
  limit and what to raise, and accepting backs off instead of spinning.
* Peers not allowed by ``allowed_uids``/``allowed_gids`` are refused at accept.

Shutdown: ``shutdown`` stops the selector thread, ``server_close`` closes the
listener (and removes our socket path), ``drain`` answers every call already
received: idle connections with bytes waiting are served, then closed; parked
ones close at their next park interval unless a frame arrives; busy ones
close after their reply (their ExtraInfo exchanges go on undisturbed). The
same holds on the event loop: a connection waiting there with nothing
received closes at once, one whose frame has begun is answered first.
"""

from __future__ import annotations

import errno
import logging
import resource
import selectors
import socket
import socketserver
import threading
import time

from . import aio, sockets
from .calls import Overrun
from .config import Config
from .connection import Connection, has_bytes, timeval
from .dispatch import Dispatcher, err_frame
from .errors import ConfigError
from .logs import Throttle
from .loopside import OnLoop
from .pool import Worker, WorkerPool
from .protocol import ErrCode
from .shares import DEFER, Shares

log = logging.getLogger(__name__)

ACCEPT_BURST = 64  # connections accepted per wake-up before the selector looks at the others again
PARK_INTERVAL = 0.25  # seconds a parked thread waits before it looks at the pool again
SWEEP_INTERVAL = 0.5  # seconds between looks for unfinished frames past frame_timeout
_PAUSE_MIN, _PAUSE_MAX = 0.05, 1.0  # back-off after an accept failure at the descriptor limit
_ACCEPT_LIMIT_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_LISTENER, _WAKEUP = object(), object()


class Budget:
    """Bytes of frames being received or handled, across all connections, against a limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0  # highest use since the last ``reset_peak``
        self._lock = threading.Lock()

    def take(self, size: int) -> bool:
        with self._lock:
            if self.used + size > self.limit:
                return False
            self.used += size
            self.peak = max(self.peak, self.used)
            return True

    def give(self, size: int) -> None:
        with self._lock:
            self.used -= size

    def reset_peak(self) -> int:
        with self._lock:
            peak, self.peak = self.peak, self.used
            return peak


class RunnerServer(socketserver.ThreadingUnixStreamServer):
    """Serves APISIX connections on a Unix socket; see the module docstring for the rules."""

    request_queue_size = 4096  # a full backlog makes APISIX's non-blocking connect fail at once

    def __init__(
        self,
        config: Config,
        dispatcher: Dispatcher,
        sock: socket.socket | None = None,
        replace: bool = False,
        shares: Shares | None = None,
    ) -> None:
        """Bind ``config.socket`` (taking a live runner's path over only if ``replace``),
        or serve ``sock`` when a listening socket is inherited (systemd, a master)."""
        self.config = config
        self.replace = replace
        # Worker processes share the listener: one connection per wake-up, and
        # only while this worker holds no more than its share (``shares``).
        self.shares = shares
        self.accept_burst = 1 if shares is not None else ACCEPT_BURST
        self._deferred_since = 0.0
        self.dispatcher = dispatcher
        self.stuck = dispatcher.stuck
        self.call_timeout = config.call_timeout
        self.timeout_reply = err_frame(ErrCode.SERVICE_UNAVAILABLE)  # a call past its deadline
        self.budget = Budget(config.memory_budget)
        self.pool: WorkerPool[Connection] = WorkerPool(config.threads, Connection.serve)
        self.on_loop = OnLoop(self)
        self.peers = sockets.PeerCheck(config.allowed_uids, config.allowed_gids)
        self.max_connections = _connection_limit(config.max_connections)
        self.closing = False
        self.inode: tuple[int, int] | None = None  # set only for a path we bound ourselves
        self._lock = threading.Lock()
        self._gone = threading.Condition(self._lock)
        self._connections: set[Connection] = set()
        self._idle: set[Connection] = set()  # registered with the selector
        self._unfinished: set[Connection] = set()  # of those, the ones holding part of a frame
        self._next_sweep = 0.0
        self._selector = selectors.DefaultSelector()
        self._wakeup = socket.socketpair()
        self._stop = False
        self._stopped = threading.Event()
        self._paused_until = 0.0
        self._pause = _PAUSE_MIN
        self._accept_failures = 0
        self._throttle = Throttle()
        if sock is None:
            if config.socket is None:
                raise ConfigError("socket: no address given (--socket, or APISIX_LISTEN_ADDRESS=unix:/path)")
            super().__init__(config.socket, Connection)  # type: ignore[arg-type]
        else:
            super().__init__(sock.getsockname(), Connection, bind_and_activate=False)  # type: ignore[arg-type]
            self.socket.close()
            self.socket = sock
        self.socket.setblocking(False)

    # --- socket path ---------------------------------------------------------

    def server_bind(self) -> None:
        path = str(self.server_address)
        self.inode = sockets.bind(self.socket, path, self.config.socket_mode, self.config.socket_group, self.replace)

    def server_close(self) -> None:
        """Close the listener and remove our socket path (idempotent)."""
        super().server_close()
        inode, self.inode = self.inode, None
        if inode is not None:
            sockets.unlink_if_ours(str(self.server_address), inode)

    def handle_error(self, request: object, client_address: object) -> None:
        log.exception("unexpected error on an APISIX connection")

    # --- the selector thread --------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        sel = self._selector
        sel.register(self.socket, selectors.EVENT_READ, _LISTENER)
        sel.register(self._wakeup[0], selectors.EVENT_READ, _WAKEUP)
        self.pool.start()
        try:
            while not self._stop:
                paused = self._paused_until
                timeout = poll_interval if not paused else max(0.0, paused - time.monotonic())
                for key, _ in sel.select(timeout):
                    if key.data is _LISTENER:
                        self._accept()
                    elif key.data is _WAKEUP:
                        self._wakeup[0].recv(4096)
                    else:
                        self._ready(key.data)
                now = time.monotonic()
                if paused and now >= paused:
                    self._resume_accepting()
                if self._unfinished and now >= self._next_sweep:
                    self._sweep(now)
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop the selector thread and wait for it (call from another thread)."""
        self._stop = True
        self._wakeup[1].send(b"x")
        self._stopped.wait()

    def _ready(self, conn: Connection) -> None:
        with self._lock:
            if conn not in self._idle:
                return
            self._idle.discard(conn)
            self._unfinished.discard(conn)
            self._selector.unregister(conn.sock)
        self.pool.submit(conn)

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + SWEEP_INTERVAL
        limit = self.config.frame_timeout
        with self._lock:
            late = [c for c in self._unfinished if now - c.frame_started > limit]
            for conn in late:
                self._unfinished.discard(conn)
                self._idle.discard(conn)
                self._selector.unregister(conn.sock)
        for conn in late:
            self.overrun(conn, conn.too_slow())
            conn.close()

    def watch(self, conn: Connection) -> None:
        """Take ``conn`` back from a pool thread: it waits in the selector, holding no thread."""
        with self._lock:
            if not self.closing and not conn.closed:
                self._idle.add(conn)
                if conn.decoder.pending:
                    self._unfinished.add(conn)
                self._selector.register(conn.sock, selectors.EVENT_READ, conn)
                return
        conn.close()

    def forget(self, conn: Connection) -> None:
        with self._lock:
            self._connections.discard(conn)
            if self.shares is not None:
                self.shares.publish(len(self._connections))
            if not self._connections:
                self._gone.notify_all()

    # --- accepting ------------------------------------------------------------

    def _accept(self) -> None:
        if self.shares is not None and not self.shares.fair():
            now = time.monotonic()
            if not self._deferred_since:
                self._deferred_since = now
            if now - self._deferred_since < DEFER:
                self._hold_accepting(DEFER)  # another worker, with fewer connections, may take it
                return
        self._deferred_since = 0.0
        for _ in range(self.accept_burst):
            try:
                request, client_address = self.get_request()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in _ACCEPT_LIMIT_ERRORS:
                    self._pause_accepting(e)
                    return
                if e.errno != errno.ECONNABORTED:
                    log.warning("accept failed: %s", e)
                    return
                continue
            if self._accept_failures:
                log.warning("accepting connections again after %d failed attempt(s)", self._accept_failures)
                self._accept_failures, self._pause = 0, _PAUSE_MIN
            if self.verify_request(request, client_address):
                self.process_request(request, client_address)
            else:
                self.shutdown_request(request)

    def _pause_accepting(self, error: OSError) -> None:
        if not self._accept_failures:
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            log.error(
                "cannot accept APISIX connections: %s (open files limit: soft %d, hard %d; %d connections open); "
                "raise the limit (systemd LimitNOFILE=, docker --ulimit nofile=, ulimit -n) or lower max_connections; "
                "retrying with back-off",
                error.strerror,
                soft,
                hard,
                len(self._connections),
            )
        self._accept_failures += 1
        self._hold_accepting(self._pause)
        self._pause = min(_PAUSE_MAX, self._pause * 2)

    def _hold_accepting(self, seconds: float) -> None:
        self._selector.unregister(self.socket)
        self._paused_until = time.monotonic() + seconds

    def _resume_accepting(self) -> None:
        self._paused_until = 0.0
        self._selector.register(self.socket, selectors.EVENT_READ, _LISTENER)

    def verify_request(self, request: object, client_address: object) -> bool:
        assert isinstance(request, socket.socket)
        if len(self._connections) >= self.max_connections:
            self._throttle.log(
                log,
                logging.WARNING,
                "max_connections",
                "refusing an APISIX connection: %d are open (max_connections = %d)",
                len(self._connections),
                self.max_connections,
            )
            return False
        refusal = self.peers.refusal(request)
        if refusal is not None:
            self._throttle.log(log, logging.WARNING, "peer", "refusing a connection: %s", refusal)
            return False
        return True

    def process_request(self, request: object, client_address: object) -> None:
        assert isinstance(request, socket.socket)
        request.setblocking(True)
        # The receive and send timeouts are the park interval: a blocked recv or
        # send returns that often to check the pool and frame_timeout (connection.py).
        interval = timeval(PARK_INTERVAL)
        request.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, interval)
        request.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, interval)
        conn = Connection(self, request)
        with self._lock:
            if self.closing:
                request.close()
                return
            self._connections.add(conn)
            if self.shares is not None:
                self.shares.publish(len(self._connections))
        # Straight to the pool (APISIX connects to send a call at once); a thread
        # that finds nothing yet hands it to the selector unless it may park.
        self.pool.submit(conn)

    # --- budget -------------------------------------------------------------

    def overrun(self, conn: Connection, error: Overrun) -> None:
        """Log a connection dropped for what it would make us hold (one line per setting and second)."""
        advice = {
            "memory_budget": "raise memory_budget, or expect 503s for large bodies at this concurrency",
            "frame_timeout": "a peer this slow is not APISIX on this host, or the host is overloaded",
        }
        self._throttle.log(
            log, logging.WARNING, error.setting, "dropping an APISIX connection: %s; %s", error, advice[error.setting]
        )

    # --- observation ----------------------------------------------------------

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def calls_in_flight(self) -> int:
        return sum(1 for w in self.pool.workers() if w.call is not None)

    def busy_workers(self) -> list[Worker]:
        return [w for w in self.pool.workers() if w.call is not None]

    # --- shutdown -------------------------------------------------------------

    def drain(self, timeout: float) -> int:
        """Answer the calls already received, then close everything; returns how many
        connections were still open when ``timeout`` ran out (0 = all answered)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self.closing = True
            idle = list(self._idle)
            self._idle.clear()
            self._unfinished.clear()
            for conn in idle:
                self._selector.unregister(conn.sock)
        if aio.running():
            aio.loop().call_soon_threadsafe(self.on_loop.drain)
        for conn in idle:
            if conn.decoder.pending or has_bytes(conn.sock):
                self.pool.submit(conn)  # a call that reached us before the drain: answer it
            else:
                conn.close()
        with self._lock:
            self._gone.wait_for(lambda: not self._connections, max(0.0, deadline - time.monotonic()))
            left = len(self._connections)
        self.pool.stop()
        return left


def _connection_limit(configured: int) -> int:
    """``max_connections``, kept below the descriptor limit so accept never fails on our own connections."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    headroom = 64  # plugin files, logs, the metrics endpoint, the selector itself
    if soft != resource.RLIM_INFINITY and configured > soft - headroom:
        limit = max(1, soft - headroom)
        log.warning(
            "max_connections lowered from %d to %d: the open files limit is %d "
            "(raise it with systemd LimitNOFILE=, docker --ulimit nofile=, or ulimit -n)",
            configured,
            limit,
            soft,
        )
        return limit
    return configured
