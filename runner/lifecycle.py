"""Serving one runner process: start-up, the main thread's event loop, reloads and shutdown.

The main thread only waits for events (``events``), which signal handlers
and helper threads queue (gunicorn's arbiter rule: a handler does nothing
else). Rules:

* Plugins are imported on a helper thread, at start-up and at each reload,
  while the main thread keeps handling signals: a slow or endless import (or a
  FIFO named ``*.py``) never delays SIGTERM.
* Start-up: any problem (a setting, the socket path, a plugin file) ends the
  process with exit status 1 and one line naming the cause.
* SIGTERM / SIGINT: stop accepting and remove our socket path at once, answer
  every call already received within ``drain_timeout`` (APISIX sends SIGKILL
  1 s after SIGTERM), close idle connections, exit 0. The process ends with
  ``os._exit``: no thread a plugin started, daemon or not, can keep it alive.
* SIGHUP: reload the plugin directory; if the reload fails, the plugins loaded
  before keep serving and the log says why. A SIGHUP during a reload is
  refused with a line. Connections and issued tokens are untouched.
* Parent gone (when APISIX spawned us: its pipe on stdin reads EOF, or we were
  re-parented): stop as for SIGTERM, so no orphan holds the socket.
* Every second: the systemd watchdog ping, STATUS, a check that our socket
  path is still ours (a takeover is logged), and memory given back after
  large bodies once no frame is held.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import stat
import threading
import time
from collections.abc import Callable
from typing import Any

from . import control, metrics, sockets, systemd, tuning
from .cache import ConfCache
from .config import Config
from .dispatch import Dispatcher, TokenStore, err_frame
from .errors import PluginLoadError, RunnerError
from .events import Events
from .loader import load_plugins, shutdown_all
from .phases import Prepared
from .plugins import PluginRegistry
from .protocol import ErrCode
from .server import RunnerServer
from .shares import Shares
from .watchdog import StuckCalls, Watchdog

log = logging.getLogger("runner")

STATUS_EVERY = 10.0
HOOKS_GRACE = 0.2  # seconds after the drain for the plugins' shutdown hooks (APISIX kills at 1 s)
_TRIM_AFTER = 1 << 20  # bytes of frames held since the last trim worth giving back


#: What APISIX runs as (its nginx, or OpenResty's binary): the parent of a runner it spawned.
APISIX_PARENTS = ("nginx", "openresty")


def parent_name() -> str:
    """The parent process's command name (``/proc/PPID/comm``: its executable's basename)."""
    try:
        with open(f"/proc/{os.getppid()}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def spawned_by_apisix() -> bool:
    """Whether APISIX's ``ext-plugin.cmd`` started us: our parent is nginx (or openresty),
    stdin is the pipe ``ngx.pipe`` gives its child, APISIX set its variables, and we are
    not a container's init. A shell or a container runtime with the same stdin is not APISIX."""
    if os.getpid() == 1 or "APISIX_CONF_EXPIRE_TIME" not in os.environ or parent_name() not in APISIX_PARENTS:
        return False
    try:
        return stat.S_ISFIFO(os.fstat(0).st_mode)
    except OSError:
        return False


def watch_parent(config: Config, gone: Callable[[], None]) -> int | None:
    """The parent pid to compare ``os.getppid()`` with each tick (``None``: ``exit_with_parent``
    does not apply); started by APISIX, ``gone`` is also called when its pipe on our stdin closes."""
    spawned = spawned_by_apisix()
    watch = config.exit_with_parent == "yes" or (config.exit_with_parent == "auto" and spawned)
    log.debug(
        "exit_with_parent = %s: %s parent %d (%s)",
        config.exit_with_parent,
        "exiting with" if watch else "not watching",
        os.getppid(),
        parent_name(),
    )
    if watch and spawned:  # EOF on APISIX's pipe is the quickest sign it is gone
        threading.Thread(target=_watch_stdin, args=(gone,), name="parent-watch", daemon=True).start()
    return os.getppid() if watch else None


def stopping(event: str, parent: int | None, logger: logging.Logger) -> bool:
    """Whether a main loop ends at ``event``, saying why on ``logger``: the parent is gone (its
    "parent-gone" event, or ``os.getppid()`` is no longer ``watch_parent``'s pid), or a signal's "stop"."""
    if event == "parent-gone" or (parent is not None and os.getppid() != parent):
        logger.warning("the process that started us is gone: stopping")
        return True
    if event == "stop":
        logger.info("stopping on signal")
        return True
    return False


def _watch_stdin(gone: Callable[[], None]) -> None:
    try:
        while os.read(0, 65536):
            pass
    except OSError:
        pass
    gone()


def in_background(done: Callable[[Any], None], work: Callable[[], Any], where: str) -> None:
    """Read or import plugin files (``work``) on a helper thread; ``done`` gets the result, or the
    ``RunnerError`` it raised (any other exception becomes a ``PluginLoadError`` naming ``where``)."""
    threading.Thread(target=_work, args=(done, work, where), name="plugins", daemon=True).start()


def _work(done: Callable[[Any], None], work: Callable[[], Any], where: str) -> None:
    try:
        result = work()
    except RunnerError as e:
        result = e
    except BaseException as e:  # reported on the main thread, never raised on this helper thread
        result = PluginLoadError(where, f"{type(e).__name__}: {e}")
    done(result)


class Runner:
    """Everything one serving process holds: plugins, conf tokens, the server and its threads."""

    def __init__(
        self,
        config: Config,
        registry: PluginRegistry,
        listener: Any = None,
        replace: bool = False,
        tokens: TokenStore | None = None,
        shares: Shares | None = None,
    ) -> None:
        self.config = config
        self.stats = metrics.Metrics() if config.metrics_port else None
        self.cache: TokenStore = (
            tokens
            if tokens is not None
            else ConfCache[Prepared](config.token_ttl, config.max_conf_entries, config.max_conf_bytes)
        )
        self.dispatcher = Dispatcher(registry, self.cache, self.stats, StuckCalls(config.max_stuck_calls))
        self.server = RunnerServer(config, self.dispatcher, listener, replace, shares)
        self.watchdog = Watchdog(
            self.server.busy_workers,
            self.server.pool.retire,
            err_frame(ErrCode.SERVICE_UNAVAILABLE),
            config.slow_call,
            config.call_timeout,
        )
        self._accept: threading.Thread | None = None

    @property
    def registry(self) -> PluginRegistry:
        return self.dispatcher.registry

    def start(self, endpoint: metrics.Endpoint | None = None) -> None:
        """Start serving, and the metrics on ``endpoint`` (a worker's master serves them instead)."""
        if self.stats is not None:
            server, cache, stuck = self.server, self.cache, self.dispatcher.stuck
            self.stats.gauge("connections", "Open APISIX connections.", lambda: server.connection_count)
            self.stats.gauge("calls_in_flight", "Calls being handled.", server.calls_in_flight)
            self.stats.gauge("conf_tokens", "Live conf tokens.", lambda: len(cache))
            self.stats.gauge("conf_bytes", "Bytes of route confs held by live tokens.", lambda: cache.bytes)
            self.stats.gauge("buffered_bytes", "Bytes of frames received or handled.", lambda: server.budget.used)
            self.stats.gauge("threads", "Threads of the process.", threading.active_count)
            self.stats.labelled_gauge("stuck_calls", "Calls stuck past call_timeout.", "plugin", stuck.snapshot)
            if endpoint is not None:
                metrics.serve(endpoint, self.stats)
        self._accept = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 1.0}, name="accept", daemon=True
        )
        self._accept.start()
        self.watchdog.start()

    def reload(self, registry: PluginRegistry) -> None:
        self.dispatcher.reload(registry)

    def status(self) -> str:
        return (
            f"STATUS=serving {self.server.connection_count} connection(s), {len(self.cache)} conf token(s), "
            f"{len(self.registry)} plugin(s)"
        )

    def tick(self) -> None:
        """Once a second on the main thread."""
        budget = self.server.budget
        if budget.used == 0 and budget.peak >= _TRIM_AFTER:
            budget.reset_peak()
            tuning.release_memory()

    def stop(self) -> int:
        """Stop accepting, remove our socket path, drain, run the plugins' shutdown hooks
        (all within APISIX's 1 s grace); returns the calls left unanswered."""
        started = time.monotonic()
        self.server.shutdown()
        self.server.server_close()
        left = self.server.drain(self.config.drain_timeout)
        shutdown_all(max(0.1, self.config.drain_timeout + HOOKS_GRACE - (time.monotonic() - started)))
        self.watchdog.stop()
        return left  # (the metrics endpoint is left to the process's exit: nothing waits for a scraper)


def serve(config: Config, on_ready: Callable[[Runner], None] | None = None) -> int:
    """Run until told to stop; the exit status (0 after a signal, 1 if start-up failed)."""
    stop, reload = ("stop", None), ("reload", None)
    signals = {signal.SIGTERM: stop, signal.SIGINT: stop, signal.SIGHUP: reload}
    events: Events[tuple[str, Any]] = Events(signals, idle=("tick", None))
    tuning.pin_cpu(config.cpu)
    tuning.raise_fd_limit()
    tuning.tune_allocator()

    load = functools.partial(load_plugins, config.plugins, config.allow_insecure_plugins)
    in_background(lambda result: events.put(("loaded", result)), load, config.plugins)
    registry: PluginRegistry | None = None
    while registry is None:
        event, value = events.get()
        if event == "stop":
            log.info("stopping on signal before start-up finished")
            return 0
        if event == "loaded":
            if isinstance(value, RunnerError):
                log.critical("cannot start: %s", value)
                return 1
            registry = value
    replace = config.replace_socket == "yes" or (config.replace_socket == "auto" and spawned_by_apisix())
    try:  # the metrics port first: a runner that cannot start never holds APISIX's socket
        endpoint = metrics.bind(config.metrics_host, config.metrics_port) if config.metrics_port else None
        runner = Runner(config, registry, systemd.listen_socket(), replace)
    except (RunnerError, OSError) as e:
        log.critical("cannot start: %s", e)
        return 1
    runner.start(endpoint)
    where = "inherited socket" if runner.server.inode is None else config.socket
    log.info("serving on %s with %d plugin(s): %s", where, len(registry), ", ".join(registry.names()) or "none")
    if on_ready is not None:
        on_ready(runner)
    parent = watch_parent(config, lambda: events.put(("parent-gone", None)))

    control.serve(lambda reply: events.put(("control-reload", reply)))
    systemd.notify("READY=1", runner.status(), f"MAINPID={os.getpid()}")
    watchdog_ping = systemd.watchdog_interval()
    tick = min(1.0, watchdog_ping or 1.0)
    last_status = time.monotonic()
    reloading = False
    waiting: list[Callable[[str], None]] = []  # `reload` commands waiting for the outcome
    taken_over = False
    while True:
        event, value = events.get(tick)
        if watchdog_ping is not None:
            systemd.notify("WATCHDOG=1")
        if stopping(event, parent, log):
            break
        if event == "control-reload" and reloading:
            value("failed: a reload is already running; ask again when it has finished")
        elif event in ("reload", "control-reload"):
            if event == "control-reload":
                waiting.append(value)
            if reloading:
                log.warning("SIGHUP ignored: a reload is still running")
                continue
            reloading = True
            systemd.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
            in_background(lambda result: events.put(("reloaded", result)), load, config.plugins)
        elif event == "reloaded":
            reloading = False
            if isinstance(value, RunnerError):
                kept = len(runner.registry)
                log.error("reload failed, still serving the %d plugin(s) loaded before: %s", kept, value)
                outcome = f"failed: {value}"
            else:
                runner.reload(value)
                outcome = f"ok: reloaded {len(value)} plugin(s): {', '.join(value.names()) or 'none'}"
                log.info("%s", outcome.removeprefix("ok: "))
            systemd.notify("READY=1", runner.status())
            for reply in waiting:
                reply(outcome)
            waiting.clear()
        else:
            runner.tick()
            inode = runner.server.inode
            if inode is not None and not taken_over and not sockets.still_ours(str(config.socket), inode):
                taken_over = True
                log.warning("socket path %s is no longer ours: another process has replaced it", config.socket)
            if time.monotonic() - last_status >= STATUS_EVERY:
                systemd.notify(runner.status())
                last_status = time.monotonic()
    systemd.notify("STOPPING=1")
    left = runner.stop()
    if left:
        log.warning("exiting with %d connection(s) still busy after %.1f s", left, config.drain_timeout)
    return 0
