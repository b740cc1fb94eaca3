"""Command line: ``apisix-python-runner run | check | health`` (also ``python -m runner``).

Arguments become settings (``config``), settings become one call: ``lifecycle.serve``
for ``run``, ``check`` for ``check``, ``probe.check`` for ``health``. Exit
status: 0 on success (and after SIGTERM), 1 when something is wrong (a
setting, the socket path, a plugin; the reason is one line on stderr), 2 for
a command line that does not parse.
"""

from __future__ import annotations

import argparse
import logging
import os
import stat
import sys
from collections.abc import Sequence

from . import __version__, arbiter, control, lifecycle, logs, metrics, probe, sockets, tuning, worker
from .config import SETTINGS, Config, build, flag, workers_count
from .errors import RunnerError
from .loader import load_plugins

log = logging.getLogger("runner")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="apisix-python-runner", description="Python plugin runner for Apache APISIX")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    settings = argparse.ArgumentParser(add_help=False)
    settings.add_argument("--config", help="TOML file of settings (the environment and flags override it)")
    for s in SETTINGS:
        settings.add_argument(flag(s), dest=s.name, metavar=s.name.upper(), help=f"{s.help} (${s.env})")
    commands.add_parser("run", parents=[settings], help="serve APISIX on a Unix socket")
    commands.add_parser("check", parents=[settings], help="validate settings and plugins, then exit (like nginx -t)")
    health = commands.add_parser("health", parents=[settings], help="probe a running runner with one round trip")
    health.add_argument("--timeout", type=float, default=2.0, help="seconds (default: 2)")
    health.add_argument("--pid", type=int, help="probe the socket runner PID serves (whatever its settings)")
    reload = commands.add_parser("reload", help="reload the plugins of runner PID and wait for the outcome")
    reload.add_argument("--pid", type=int, required=True, help="the runner (systemd: $MAINPID)")
    reload.add_argument("--timeout", type=float, default=30.0, help="seconds (default: 30)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "reload":
        status, line = control.reload(args.pid, args.timeout)
        if status == 0:
            print(line)
        else:
            _problem(line)
        return status
    try:
        config = build(os.environ, vars(args), args.config)
    except RunnerError as e:
        _problem(f"apisix-python-runner: {e}")
        return 1
    if args.command == "health":
        return health(config, args.timeout, args.pid, explicit=args.socket is not None)
    if args.command == "check":
        logs.configure("warning", config.log_format)  # warnings (allow_insecure_plugins) on stderr, formatted
        return check(config)
    logs.configure(config.log_level, config.log_format)
    worker_spec = os.environ.pop(worker.WORKER_ENV, None)
    if worker_spec is not None:
        status = worker.serve(config, worker_spec)
    elif workers_count(config.workers) > 1:
        status = arbiter.serve(config, list(argv if argv is not None else sys.argv[1:]), workers_count(config.workers))
    else:
        status = lifecycle.serve(config)
    # Whatever threads plugins started, the process ends now (lifecycle's rule).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _problem(line: str, level: int = 3) -> None:
    """One line on stderr; under systemd with its syslog priority, so ``journalctl -p err`` shows it."""
    print(f"<{level}>{line}" if logs.stderr_is_journal() else line, file=sys.stderr)


def check(config: Config) -> int:
    """Report what ``run`` would use; exit status 1 on the first problem (problems go to stderr)."""
    try:
        if config.socket is not None:
            sockets.check_path(config.socket)
            print(f"socket {config.socket} (mode {config.socket_mode:04o}): ok")
            if config.socket_mode & stat.S_IWOTH and not (config.allowed_uids or config.allowed_gids):
                _problem(
                    f"warning: socket mode {config.socket_mode:04o} lets every local user use APISIX's routes; "
                    "set socket_mode = 0660 with socket_group, or allowed_uids/allowed_gids",
                    4,
                )
        else:
            # Fine under systemd (ExecStartPre gets no LISTEN_FDS; ExecStart will) or
            # when APISIX spawns the runner; `run` refuses to start without one.
            print("socket: none configured (run needs --socket, APISIX_LISTEN_ADDRESS or systemd's socket)")
        if config.cpu is not None:
            print(f"cpu {config.cpu}: ok (CPU {tuning.resolve_cpu(config.cpu)} here)")
        if config.metrics_port:
            metrics.bind(config.metrics_host, config.metrics_port).server_close()  # in use, or no such address
            print(f"metrics {config.metrics_host}:{config.metrics_port}: ok")
        registry = load_plugins(config.plugins, config.allow_insecure_plugins)
    except RunnerError as e:
        _problem(f"error: {e}")
        return 1
    for name in registry.names():
        print(f"plugin {name}: {registry.file_of(name)}")
    print(f"ok: {len(registry)} plugin(s) from {config.plugins}")
    return 0


def _socket_of(pid: int) -> str | None:
    """The socket runner ``pid`` serves: its settings rebuilt as ``run`` resolved them, else
    the listening socket it holds (one systemd passed it)."""
    try:
        argv = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="surrogateescape").split("\0")[:-1]
        raw_env = open(f"/proc/{pid}/environ", "rb").read().decode(errors="surrogateescape").split("\0")
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None
    environ = dict(item.split("=", 1) for item in raw_env if "=" in item)
    if "run" in argv:
        try:
            args = _parser().parse_args(argv[argv.index("run") :])
            config_file = os.path.join(cwd, args.config) if args.config else None
            socket_path = build(environ, vars(args), config_file).socket
        except (SystemExit, RunnerError):
            socket_path = None
        if socket_path is not None:
            return socket_path
    return probe.socket_of(pid)


def health(config: Config, timeout: float, pid: int | None = None, explicit: bool = False) -> int:
    """PrepareConf and one HTTPReqCall: proves the socket, the dispatcher and the cache answer.

    With ``pid``, the socket that runner listens on (unless ``--socket`` names one).
    """
    path = config.socket
    if pid is not None and not explicit:
        path = _socket_of(pid) or path
    if path is None:
        where = f"runner {pid} serves no Unix socket" if pid is not None else "no socket configured"
        _problem(f"unhealthy: {where} (--socket or APISIX_LISTEN_ADDRESS)")
        return 1
    try:
        probe.check(path, timeout)
    except (probe.Unhealthy, OSError) as e:
        _problem(f"unhealthy: {e}")
        return 1
    print("ok")
    return 0
