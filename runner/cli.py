"""Command line: ``apisix-python-runner run | check | health`` (also ``python -m runner``).

Start-up is where every problem is reported: an unusable setting, socket path
or plugin file ends the process with exit status 1 and one line naming the
cause. After that the main thread only waits for events, which signal handlers
and watcher threads queue (gunicorn's rule: handlers do nothing else):

* SIGTERM / SIGINT: stop accepting, answer the calls in flight (bounded by
  ``drain_timeout``, since APISIX sends SIGKILL 1 s after SIGTERM), close idle
  connections, remove the socket if it is still ours, exit 0.
* SIGHUP: reload the plugin directory; on failure keep the plugins loaded
  before and log why. Connections and issued tokens are untouched.
* Parent gone (when spawned by APISIX: stdin is APISIX's pipe and reads EOF,
  or we were re-parented): stop as for SIGTERM, so no orphan holds the socket.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import queue
import signal
import stat
import sys
import threading
import time
from collections.abc import Sequence

from . import __version__, logs, metrics, systemd
from .cache import ConfCache
from .config import EXIT_WITH_PARENT, LOG_FORMATS, LOG_LEVELS, Config, build, parse_listen_address
from .dispatch import Dispatcher, Prepared
from .errors import ConfigError, PluginLoadError, RunnerError
from .plugins import load_plugins
from .server import RunnerServer, check_socket_path

log = logging.getLogger("runner")

HEALTH_KEY = "apisix-python-runner#health"
STATUS_EVERY = 10.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="apisix-python-runner", description="Python plugin runner for Apache APISIX")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    settings = argparse.ArgumentParser(add_help=False)
    settings.add_argument("--config", help="TOML file of settings (flags and environment override it)")
    settings.add_argument("--socket", help="socket path or unix:/path (default: $APISIX_LISTEN_ADDRESS)")
    settings.add_argument("--plugins", help="directory of plugin files (default: ./plugins)")
    settings.add_argument("--log-level", choices=LOG_LEVELS, help="default: info")
    settings.add_argument("--log-format", choices=LOG_FORMATS, help="default: text")
    settings.add_argument("--socket-mode", help="socket permissions, octal (default: 0766, as APISIX expects)")
    settings.add_argument("--socket-group", help="group owning the socket (name or gid)")
    settings.add_argument("--metrics-port", help="serve Prometheus metrics on 127.0.0.1:PORT (default: off)")
    settings.add_argument("--exit-with-parent", choices=EXIT_WITH_PARENT, help="default: auto (when APISIX spawned us)")
    settings.add_argument("--cpu", help="pin every thread to one CPU: none (default), auto (the one we start on) or N")
    commands.add_parser("run", parents=[settings], help="serve APISIX on a Unix socket")
    commands.add_parser("check", parents=[settings], help="validate settings and plugins, then exit (like nginx -t)")
    health = commands.add_parser("health", help="probe a running runner with one protocol round trip")
    health.add_argument("--socket", help="socket path or unix:/path (default: $APISIX_LISTEN_ADDRESS)")
    health.add_argument("--timeout", type=float, default=2.0, help="seconds (default: 2)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "health":
        return health(args.socket or os.environ.get("APISIX_LISTEN_ADDRESS", ""), args.timeout)
    try:
        config = build(os.environ, vars(args), args.config)
    except RunnerError as e:
        print(f"apisix-python-runner: {e}", file=sys.stderr)
        return 1
    if args.command == "check":
        return check(config)
    logs.configure(config.log_level, config.log_format)
    try:
        return serve(config)
    except (RunnerError, OSError) as e:
        log.critical("cannot start: %s", e)
        return 1


def check(config: Config) -> int:
    """Report what ``run`` would use; exit status 1 on the first problem."""
    try:
        if config.socket is not None:
            check_socket_path(config.socket)
            print(f"socket {config.socket} (mode {config.socket_mode:04o}): ok")
        else:
            # Fine under systemd (ExecStartPre gets no LISTEN_FDS; ExecStart will) or
            # when APISIX spawns the runner; `run` refuses to start without one.
            print("socket: none configured (run needs --socket, APISIX_LISTEN_ADDRESS or systemd's socket)")
        if config.cpu is not None:
            print(f"cpu {config.cpu}: ok (CPU {_resolve_cpu(config.cpu)} here)")
        registry = load_plugins(config.plugins)
    except RunnerError as e:
        print(f"error: {e}")
        return 1
    for name in registry.names():
        print(f"plugin {name}: {registry.file_of(name)}")
    print(f"ok: {len(registry)} plugin(s) from {config.plugins}")
    return 0


def health(address: str, timeout: float) -> int:
    """PrepareConf and one HTTPReqCall: proves the socket, the dispatcher and the cache answer."""
    from .testing import ApisixClient  # the fake APISIX: only this command needs it

    try:
        with ApisixClient(parse_listen_address(address), timeout) as client:
            reply = client.http_req_call(client.prepare_conf(None, key=HEALTH_KEY))
        if reply.err is not None or reply.action != "none":
            raise RuntimeError(f"unexpected reply {reply}")
    except Exception as e:
        print(f"unhealthy: {e}")
        return 1
    print("ok")
    return 0


def _stdin_is_pipe() -> bool:
    try:  # APISIX's ngx.pipe gives its child a pipe for stdin; a terminal, systemd or docker does not
        return stat.S_ISFIFO(os.fstat(0).st_mode)
    except OSError:
        return False


def _watch_stdin(events: queue.SimpleQueue[str]) -> None:
    try:
        while os.read(0, 65536):
            pass
    except OSError:
        pass
    events.put("parent-gone")


def _resolve_cpu(setting: int | str | None) -> int | None:
    """The CPU the ``cpu`` setting names here (``None``: no pinning); ``ConfigError`` if not allowed."""
    if setting is None:
        return None
    allowed = os.sched_getaffinity(0)
    if setting == "auto":
        with open("/proc/self/stat") as f:  # field 39: the CPU this process last ran on
            current = int(f.read().rsplit(")", 1)[1].split()[36])
        return current if current in allowed else min(allowed)
    if setting not in allowed:
        shown = ", ".join(map(str, sorted(allowed)))
        raise ConfigError(f"cpu: {setting} is not one this process may run on ({shown})")
    return int(setting)


def _pin(setting: int | str | None) -> None:
    """Keep every thread on one CPU (threads started later inherit it).

    Only one thread runs Python at a time anyway; spread over several CPUs,
    every GIL hand-off between connection threads becomes a cross-CPU wake-up.
    """
    cpu = _resolve_cpu(setting)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
        log.info("pinned to CPU %d", cpu)


def _keep_big_buffers_in_the_heap() -> None:
    """Ask glibc to serve big allocations from its heap instead of fresh mmaps.

    Bodies arrive as buffers of up to 16 MiB. By default glibc gives each one its
    own mmap, so every call paid hundreds of page faults plus an munmap (a TLB
    shootdown across the worker threads) per MiB, which was most of a body call's
    CPU. Kept in the heap, the memory is reused from call to call. Elsewhere
    (musl, macOS) there is nothing to tune.
    """
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    mallopt(m_mmap_threshold, 32 << 20)  # glibc's maximum on 64-bit
    mallopt(m_trim_threshold, 64 << 20)


def serve(config: Config) -> int:
    _pin(config.cpu)
    _keep_big_buffers_in_the_heap()
    registry = load_plugins(config.plugins)
    stats = metrics.Metrics() if config.metrics_port else None
    cache = ConfCache[Prepared](config.token_ttl, config.max_conf_entries)
    dispatcher = Dispatcher(registry, cache, stats)
    events: queue.SimpleQueue[str] = queue.SimpleQueue()
    signal_events = {signal.SIGTERM: "stop", signal.SIGINT: "stop", signal.SIGHUP: "reload"}

    def on_signal(signum: int, _frame: object) -> None:
        events.put(signal_events[signal.Signals(signum)])

    for sig in signal_events:
        signal.signal(sig, on_signal)
    inherited = systemd.listen_socket()
    with RunnerServer(config.socket, dispatcher, config.socket_mode, config.socket_group, inherited) as server:
        endpoint = None
        if stats is not None and config.metrics_port:
            stats.gauge("connections", "Open APISIX connections.", lambda: server.connection_count)
            stats.gauge("calls_in_flight", "Calls being handled.", lambda: server.calls_in_flight)
            stats.gauge("conf_tokens", "Live conf tokens.", lambda: len(cache))
            endpoint = metrics.serve(stats, config.metrics_host, config.metrics_port)
        accept = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="accept")
        accept.start()
        where = "inherited socket" if inherited else config.socket
        log.info("serving on %s with %d plugin(s): %s", where, len(registry), ", ".join(registry.names()) or "none")
        piped = _stdin_is_pipe()
        watch = config.exit_with_parent == "yes" or (config.exit_with_parent == "auto" and piped)
        parent = os.getppid() if watch else None
        if watch and piped:  # EOF on the parent's pipe is the quickest sign it is gone
            threading.Thread(target=_watch_stdin, args=(events,), name="parent-watch", daemon=True).start()

        def status() -> str:
            return f"STATUS=serving {server.connection_count} connection(s), {len(cache)} conf token(s)"

        systemd.notify("READY=1", status(), f"MAINPID={os.getpid()}")
        watchdog = systemd.watchdog_interval()
        tick = min(1.0, watchdog or 1.0)
        last_status = time.monotonic()
        while True:
            try:
                event = events.get(timeout=tick)
            except queue.Empty:
                event = "tick"
            if watchdog is not None:
                systemd.notify("WATCHDOG=1")
            if parent is not None and os.getppid() != parent:
                event = "parent-gone"
            if event == "reload":
                _reload(config, dispatcher)
                systemd.notify("READY=1", status())
            elif event == "stop":
                log.info("stopping on signal")
                break
            elif event == "parent-gone":
                log.warning("the process that started us is gone: stopping")
                break
            elif time.monotonic() - last_status >= STATUS_EVERY:
                systemd.notify(status())
                last_status = time.monotonic()
        systemd.notify("STOPPING=1")
        # Stop accepting while the calls in flight finish, not one after the other:
        # the whole shutdown has to fit in APISIX's 1 s before SIGKILL.
        stopper = threading.Thread(target=server.shutdown, name="stop-accept")
        stopper.start()
        server.close_idle_connections()
        stopper.join()
        accept.join()
        server.server_close()  # the listener and our socket path go now, not after the drain
        if not server.wait_for_calls(config.drain_timeout):
            log.warning("exiting with calls still in flight after %.1f s", config.drain_timeout)
        if endpoint is not None:
            endpoint.shutdown()
    return 0


def _reload(config: Config, dispatcher: Dispatcher) -> None:
    systemd.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
    try:
        registry = load_plugins(config.plugins)
    except PluginLoadError as e:
        log.error("reload failed, still serving the %d plugin(s) loaded before: %s", len(dispatcher.registry), e)
        return
    dispatcher.reload(registry)
    log.info("reloaded %d plugin(s): %s", len(registry), ", ".join(registry.names()) or "none")
