"""One worker process of a multi-process runner: the usual server, on the master's socket and tokens.

The master (``arbiter``) starts each worker with the listening socket and its
end of a socketpair (``channel``). A worker is the single-process runner in
every respect (pool, budget, deadlines, plugins) except:

* Conf tokens come from the master (``shared.SharedTokens``).
* Plugin files come from the master too, never from the disk: at start the
  worker asks for the set every worker serves (the master's last committed
  snapshot), so a worker started again after a crash runs its siblings' code
  whatever the directory holds now.
* It does not handle SIGHUP or talk to systemd; the master does. A reload is
  two-phase: ``reload-prepare`` (with the files the master read) loads the
  plugins on a helper thread and answers whether that worked; ``reload-commit`` switches to them,
  ``reload-abort`` drops them. So a reload that fails in any worker keeps the
  old plugins in all of them.
* It stops on SIGTERM or ``stop`` from the master, and when the master is
  gone (the channel closes), so no worker outlives it.
* The descriptors the master passed are made non-inheritable at once: a
  process a plugin starts keeps none of them (a child holding the channel
  would hide the worker's death from the master; the master also watches the
  process itself for that reason, since a plain ``os.fork`` keeps them all).
* Its log records carry ``worker`` (its index).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections import deque
from functools import partial
from typing import Any

from . import tuning
from .channel import Channel, ChannelClosed, Message, Requests
from .config import Config
from .errors import RunnerError
from .events import Events
from .lifecycle import Runner, in_background
from .loader import PluginFiles, load_files
from .phases import Prepared
from .plugins import PluginRegistry
from .shared import Conf, SharedTokens
from .shares import Shares

log = logging.getLogger("runner")

#: Set by the master in a worker's environment:
#: ``index,workers,listening fd,shares fd,channel fd``.
WORKER_ENV = "A6_RUNNER_WORKER"
ASK_TIMEOUT = 10.0  # a master that does not answer a token question in this time is gone


class _WorkerField(logging.Filter):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


def serve(config: Config, spec: str) -> int:
    index, workers, listen_fd, shares_fd, channel_fd = (int(x) for x in spec.split(","))
    for fd in (listen_fd, shares_fd, channel_fd):
        os.set_inheritable(fd, False)  # the master passed them inheritable; nothing a plugin starts gets them
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerField(index))
    signals = {signal.SIGTERM: ("stop", None), signal.SIGINT: ("stop", None)}
    events: Events[tuple[str, Any]] = Events(signals, idle=("tick", None))
    # The master reloads us, in two phases. Not SIG_IGN: that would stay ignored in what plugins start.
    signal.signal(signal.SIGHUP, _ignore)
    tuning.pin_cpu(config.cpu, worker=index)
    tuning.raise_fd_limit()
    tuning.tune_allocator()
    channel = Channel(socket.socket(fileno=channel_fd))
    requests = Requests(channel, ASK_TIMEOUT)
    threading.Thread(target=_read, args=(channel, requests, events), name="master", daemon=True).start()
    try:
        answer = requests.ask({"op": "plugins"})
    except ChannelClosed:
        return 1  # the master is gone
    generation = int(answer["generation"])
    plugins = PluginFiles.unpack(answer["plugins"])
    in_background(lambda result: events.put(("loaded", result)), partial(load_files, plugins), plugins.root)
    early: deque[tuple[str, Any]] = deque()  # the master's messages before we serve: handled once we do
    event, registry = events.get()
    while event != "loaded":
        if event in ("stop", "gone"):
            return 0
        early.append((event, registry))
        event, registry = events.get()
    if isinstance(registry, RunnerError):
        channel.send({"op": "failed", "reason": str(registry)})
        return 1

    registries: dict[int, PluginRegistry] = {generation: registry}
    runner: Runner | None = None

    def rebuild(conf: Conf, gen: int) -> Prepared | None:
        plugins = registries.get(gen)
        return None if plugins is None or runner is None else runner.dispatcher.prepare(conf, plugins)

    tokens = SharedTokens(requests, config, rebuild)
    listener = socket.socket(fileno=listen_fd)
    runner = Runner(config, registry, listener, tokens=tokens, shares=Shares(shares_fd, workers, index))
    runner.start()
    channel.send({"op": "ready", "pid": os.getpid()})

    pending: PluginRegistry | None = None
    while True:
        event, value = early.popleft() if early else events.get(1.0)
        if event == "stop":
            break
        if event == "gone":
            log.warning("the master is gone: stopping")
            break
        if event == "tick":
            runner.tick()
            used = tokens.flush_uses()
            if used:
                _send(channel, {"op": "touch", "tokens": used})
        elif event == "message":
            op = value["op"]
            if op == "drop":
                tokens.discard(value["tokens"])
            elif op == "reload-prepare":
                new = PluginFiles.unpack(value["plugins"])
                in_background(lambda result: events.put(("reloaded", result)), partial(load_files, new), new.root)
            elif op == "reload-commit" and pending is not None:
                registries[int(value["generation"])] = pending
                runner.reload(pending)
                pending = None
            elif op == "reload-abort":
                pending = None
            elif op == "generations":
                for gen in set(registries) - set(value["live"]):
                    del registries[gen]  # no live token runs these plugins any more
            elif op == "metrics":
                snapshot = runner.stats.snapshot() if runner.stats is not None else None
                _send(channel, {"op": "answer", "id": value["id"], "metrics": snapshot})
        elif event == "reloaded":
            if isinstance(value, RunnerError):
                _send(channel, {"op": "reload-result", "ok": False, "reason": str(value)})
            else:
                pending = value
                _send(channel, {"op": "reload-result", "ok": True, "plugins": value.names()})
    left = runner.stop()
    if left:
        log.warning("exiting with %d connection(s) still busy after %.1f s", left, config.drain_timeout)
    requests.close()
    return 0


def _ignore(_signum: int, _frame: object) -> None:
    pass


def _read(channel: Channel, requests: Requests, events: Events[tuple[str, Any]]) -> None:
    try:
        while True:
            message: Message = channel.recv()
            if message.get("op") == "answer":
                requests.answered(message)
            else:
                events.put(("message", message))
    except ChannelClosed:
        requests.close()
        events.put(("gone", None))


def _send(channel: Channel, message: Message) -> None:
    try:
        channel.send(message)
    except ChannelClosed:
        pass  # the reader thread reports the master gone
