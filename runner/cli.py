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

from . import __version__, arbiter, lifecycle, logs, metrics, probe, sockets, tuning, worker
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = build(os.environ, vars(args), args.config)
    except RunnerError as e:
        print(f"apisix-python-runner: {e}", file=sys.stderr)
        return 1
    if args.command == "health":
        return health(config, args.timeout)
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


def check(config: Config) -> int:
    """Report what ``run`` would use; exit status 1 on the first problem (problems go to stderr)."""
    try:
        if config.socket is not None:
            sockets.check_path(config.socket)
            print(f"socket {config.socket} (mode {config.socket_mode:04o}): ok")
            if config.socket_mode & stat.S_IWOTH and not (config.allowed_uids or config.allowed_gids):
                print(
                    f"warning: socket mode {config.socket_mode:04o} lets every local user use APISIX's routes; "
                    "set socket_mode = 0660 with socket_group, or allowed_uids/allowed_gids",
                    file=sys.stderr,
                )
        else:
            # Fine under systemd (ExecStartPre gets no LISTEN_FDS; ExecStart will) or
            # when APISIX spawns the runner; `run` refuses to start without one.
            print("socket: none configured (run needs --socket, APISIX_LISTEN_ADDRESS or systemd's socket)")
        if config.cpu is not None:
            print(f"cpu {config.cpu}: ok (CPU {tuning.resolve_cpu(config.cpu)} here)")
        if config.metrics_port:
            try:
                metrics.check_host(config.metrics_host)
            except OSError as e:
                raise RunnerError(f"metrics_host {config.metrics_host!r} cannot be bound here: {e}") from None
            print(f"metrics {config.metrics_host}:{config.metrics_port}: ok")
        registry = load_plugins(config.plugins, config.allow_insecure_plugins)
    except RunnerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for name in registry.names():
        print(f"plugin {name}: {registry.file_of(name)}")
    print(f"ok: {len(registry)} plugin(s) from {config.plugins}")
    return 0


def health(config: Config, timeout: float) -> int:
    """PrepareConf and one HTTPReqCall: proves the socket, the dispatcher and the cache answer."""
    if config.socket is None:
        print("unhealthy: no socket configured (--socket or APISIX_LISTEN_ADDRESS)", file=sys.stderr)
        return 1
    try:
        probe.check(config.socket, timeout)
    except (probe.Unhealthy, OSError) as e:
        print(f"unhealthy: {e}", file=sys.stderr)
        return 1
    print("ok")
    return 0
