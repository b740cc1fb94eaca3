"""Command line: ``apisix-python-runner run`` (also ``python -m runner run``).

Start-up is where every problem is reported: an unusable setting, socket path
or plugin file ends the process with exit status 1 and one line naming the
cause. After that the process only stops on SIGTERM/SIGINT (exit 0).
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import signal
import sys
import threading
from collections.abc import Sequence

from . import __version__
from .cache import ConfCache
from .config import LOG_LEVELS, Config, configure_logging
from .dispatch import Dispatcher, Prepared
from .errors import RunnerError
from .plugins import load_plugins
from .server import RunnerServer

log = logging.getLogger("runner")

#: APISIX SIGKILLs the runner 1 s after SIGTERM; answer in-flight calls well before.
DRAIN_SECONDS = 0.8


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="apisix-python-runner", description="Python plugin runner for Apache APISIX")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="serve APISIX on a Unix socket")
    run.add_argument("--socket", help="socket path or unix:/path (default: $APISIX_LISTEN_ADDRESS)")
    run.add_argument("--plugins", help="directory of plugin files (default: ./plugins)")
    run.add_argument("--log-level", choices=LOG_LEVELS, help="default: info ($A6_RUNNER_LOG_LEVEL)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = Config.build(os.environ, socket=args.socket, plugins=args.plugins, log_level=args.log_level)
    except RunnerError as e:
        print(f"apisix-python-runner: {e}", file=sys.stderr)
        return 1
    configure_logging(config.log_level)
    try:
        return serve(config)
    except (RunnerError, OSError) as e:
        log.critical("cannot start: %s", e)
        return 1


def serve(config: Config) -> int:
    registry = load_plugins(config.plugins)
    dispatcher = Dispatcher(registry, ConfCache[Prepared](config.token_ttl, config.max_conf_entries))
    signals: queue.SimpleQueue[int] = queue.SimpleQueue()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Handlers only queue the signal (gunicorn's rule); the main loop acts on it.
        signal.signal(sig, lambda signum, _frame: signals.put(signum))
    with RunnerServer(config.socket, dispatcher, config.socket_mode) as server:
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="accept")
        thread.start()
        log.info(
            "serving on %s with %d plugin(s) from %s: %s",
            config.socket,
            len(registry),
            config.plugins,
            ", ".join(registry.names()) or "none",
        )
        signum = signals.get()
        log.info("%s: stopping", signal.Signals(signum).name)
        server.shutdown()
        thread.join()
        if not server.stop_connections(DRAIN_SECONDS):
            log.warning("exiting with calls still in flight after %.1f s", DRAIN_SECONDS)
    return 0
