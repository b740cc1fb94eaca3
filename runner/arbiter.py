"""The master of a multi-process runner (``workers > 1``), in the shape of gunicorn's arbiter.

The master binds the socket (or takes systemd's), starts the workers
(``worker``; each is the threaded server on that shared listening socket) and
runs no plugin code itself. Rules:

* Signal handlers only queue an event (``events``); the main thread does the rest.
* Conf tokens: the master holds the table (``shared.TokenTable``) and answers
  the workers' ``prepare``/``lookup`` questions and ``touch`` reports; what it
  drops is dropped in every worker.
* A worker that exits is started again, with a back-off (``slots``); one
  that fails to start 5 times in a row (or any worker at the first start)
  makes the master stop everything and exit 1 with the reason. Its death is
  seen when its channel closes, and at the latest at the next tick (once a
  second, however busy the workers keep the master) from its process: a
  child a plugin forked may hold the channel open.
* Plugin files: the master reads the directory (``loader.read_plugins``:
  audited and read, never imported) at start and at each SIGHUP, on a helper
  thread, and keeps the last committed set. Workers get their files from it,
  never from the disk: a worker started again after a crash serves what its
  siblings serve, whatever the directory holds now.
* SIGHUP reloads in two phases (``reloads``): every worker loads the files
  the master read; if all succeeded they all switch (the files become the
  committed set), else none does and the log says which worker failed and
  why. New PrepareConfs then get new tokens.
* SIGTERM: remove the socket path, SIGTERM every worker (each drains within
  ``drain_timeout``), SIGKILL what is still alive shortly after, exit 0.
* sd_notify (READY, RELOADING, STOPPING, WATCHDOG, STATUS with the workers
  alive) comes from the master only; one metrics endpoint shows the sum of
  the workers' figures.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from . import control, metrics, sockets, systemd, tuning
from .channel import Channel, ChannelClosed, Message
from .config import Config
from .errors import RunnerError
from .events import Events
from .lifecycle import in_background, spawned_by_apisix, stopping, watch_parent
from .loader import PluginFiles, read_plugins
from .reloads import Reload, Reply
from .shared import TokenTable
from .shares import Shares
from .slots import Slot

log = logging.getLogger("runner")

STATUS_EVERY = 10.0
RELOAD_TIMEOUT = 60.0
START_ATTEMPTS = 5


class Arbiter:
    def __init__(self, config: Config, argv: Sequence[str], count: int) -> None:
        self.config = config
        self.argv = list(argv)
        stop, reload = ("stop", None, None), ("reload", None, None)
        signals = {signal.SIGTERM: stop, signal.SIGINT: stop, signal.SIGHUP: reload}
        self.events: Events[tuple[str, Any, Any]] = Events(signals, idle=("tick", None, None))
        self.table = TokenTable(config)
        self.slots = [Slot(i) for i in range(count)]
        self.listener: socket.socket | None = None
        self.inode: tuple[int, int] | None = None
        self.plugins: PluginFiles | None = None  # the committed set: what every worker serves
        self.reload: Reload | None = None
        self.reloads = 0  # how many have been started
        self.live_generations: set[int] = {self.table.generation}
        self.shares_fd = Shares.create(count)
        self.shares = Shares(self.shares_fd, count, 0)

    # --- workers --------------------------------------------------------------

    def spawn(self, slot: Slot) -> None:
        assert self.listener is not None
        spec, fds = (slot.index, len(self.slots)), (self.listener.fileno(), self.shares_fd)
        slot.spawn(self.argv, spec, fds, self.events.put)

    def broadcast(self, message: Message) -> None:
        for slot in self.slots:
            if slot.ready:
                slot.send(message)

    # --- the master's answers ---------------------------------------------------

    def answer(self, slot: Slot, message: Message) -> None:
        op = message["op"]
        if op == "plugins":
            assert self.plugins is not None
            generation, plugins = self.table.generation, self.plugins.pack()
            slot.send({"op": "answer", "id": message["id"], "generation": generation, "plugins": plugins})
            slot.served = True
            if self.reload is not None and self.reload.files is not None:  # it takes part in this reload too
                self.reload.join(slot.index)
                slot.send({"op": "reload-prepare", "plugins": self.reload.files.pack()})
        elif op == "prepare":
            token, generation = self.table.prepare(message["key"], message["conf"], int(message["size"]))
            slot.send({"op": "answer", "id": message["id"], "token": token, "generation": generation})
        elif op == "lookup":
            found = self.table.lookup(int(message["token"]))
            reply: Message = {"op": "answer", "id": message["id"], "found": found is not None}
            if found is not None:
                reply.update(conf=found[0], generation=found[1], size=found[2])
            slot.send(reply)
        elif op == "touch":
            self.table.touch([int(t) for t in message["tokens"]])
        elif op == "reload-result":
            self._reload_result(slot, message)
        elif op == "ready":
            slot.ready = True
            log.info("worker %d is serving again", slot.index)
        elif op == "failed":
            slot.reason = message["reason"]

    def render_metrics(self) -> str:
        snapshots = []
        for slot in list(self.slots):
            requests = slot.requests
            if slot.ready and requests is not None:
                try:
                    snapshot = requests.ask({"op": "metrics"}).get("metrics")
                except ChannelClosed:
                    continue
                if snapshot:
                    snapshots.append(snapshot)
        merged = metrics.merge(snapshots)
        merged["gauges"]["conf_tokens"] = ["Live conf tokens.", len(self.table.cache)]
        merged["gauges"]["conf_bytes"] = ["Bytes of route confs held by live tokens.", self.table.cache.bytes]
        merged["gauges"]["workers"] = ["Worker processes serving.", sum(s.ready for s in self.slots)]
        return metrics.render(merged)

    # --- reload -----------------------------------------------------------------

    def start_reload(self, reply: Reply | None = None) -> None:
        if self.reload is not None:
            if reply is not None:
                reply("failed: a reload is already running; ask again when it has finished")
            else:
                log.warning("SIGHUP ignored: a reload is still running")
            return
        self.reloads += 1
        self.reload = Reload(self.reloads, RELOAD_TIMEOUT)
        if reply is not None:
            self.reload.waiting.append(reply)
        systemd.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        serial = self.reloads
        self.read_plugins(lambda result: self.events.put(("reload-read", serial, result)))

    def read_plugins(self, done: Callable[[Any], None]) -> None:
        cfg = self.config
        in_background(done, partial(read_plugins, cfg.plugins, cfg.allow_insecure_plugins), cfg.plugins)

    def _reload_read(self, serial: int, result: PluginFiles | RunnerError) -> None:
        reload = self.reload
        if reload is None or serial != reload.serial:
            return  # read for a reload given up at its deadline
        if isinstance(result, RunnerError):
            self._finish_reload(str(result))
            return
        reload.files = result
        for slot in self.slots:
            if slot.served:
                reload.join(slot.index)
                slot.send({"op": "reload-prepare", "plugins": result.pack()})
        if not reload.results:
            self._finish_reload("no worker is serving")

    def _reload_result(self, slot: Slot, message: Message) -> None:
        if self.reload is not None and self.reload.record(slot.index, message):
            self._finish_reload()

    def _finish_reload(self, failed: str = "") -> None:
        reload = self.reload
        assert reload is not None
        failures = [failed, *reload.failures()] if failed else reload.failures()
        if failures:
            message: Message = {"op": "reload-abort"}
            reason = "; ".join(failures)
            log.error("reload failed, every worker keeps the plugins loaded before: %s", reason)
            outcome = f"failed: {reason}"
        else:
            self.plugins = reload.files
            self.table.reloaded()
            message = {"op": "reload-commit", "generation": self.table.generation}
            names = reload.plugin_names()
            done = f"reloaded {len(names)} plugin(s) in {len(reload.results)} worker(s): {', '.join(names) or 'none'}"
            log.info("%s", done)
            outcome = f"ok: {done}"
        for slot in self.slots:
            if slot.index in reload.results:
                slot.send(message)
        self.reload = None
        systemd.notify("READY=1", self.status())
        for reply in reload.waiting:
            reply(outcome)

    # --- the main loop ------------------------------------------------------------

    def status(self) -> str:
        alive = sum(s.ready for s in self.slots)
        return (
            f"STATUS=serving with {alive} of {len(self.slots)} worker(s) alive, {len(self.table.cache)} conf token(s)"
        )

    def run(self) -> int:
        cfg = self.config
        tuning.raise_fd_limit()
        self.read_plugins(lambda result: self.events.put(("read", None, result)))
        event, _, value = self.events.get()
        while event != "read":
            if event == "stop":
                log.info("stopping on signal before start-up finished")
                return 0
            event, _, value = self.events.get()
        try:
            if isinstance(value, RunnerError):
                raise value
            self.plugins = value
            endpoint = metrics.bind(cfg.metrics_host, cfg.metrics_port) if cfg.metrics_port else None
            self._listen()
        except (RunnerError, OSError) as e:
            log.critical("cannot start: %s", e)
            return 1
        for each in self.slots:
            self.spawn(each)
        if not self._wait_ready():
            return self._stop(1)
        if endpoint is not None:
            metrics.serve(endpoint, self.render_metrics)
        where = "inherited socket" if self.inode is None else cfg.socket
        log.info("serving on %s with %d worker processes", where, len(self.slots))
        parent = watch_parent(cfg, lambda: self.events.put(("parent-gone", None, None)))
        control.serve(lambda reply: self.events.put(("control-reload", None, reply)))
        systemd.notify("READY=1", self.status(), f"MAINPID={os.getpid()}")
        ping = systemd.watchdog_interval()
        last_status = last_tick = time.monotonic()
        while True:
            event, slot, value = self.events.get(min(1.0, ping or 1.0))
            if ping is not None:
                systemd.notify("WATCHDOG=1")
            if stopping(event, parent, log):
                break
            if event == "reload":
                self.start_reload()
            elif event == "control-reload":
                self.start_reload(value)
            elif event == "reload-read":
                self._reload_read(slot, value)
            elif event == "message":
                self.answer(slot, value)
            elif event == "closed":
                self._worker_died(slot, value)
            if time.monotonic() - last_tick >= 1.0:  # however busy the workers keep the queue
                last_tick = time.monotonic()
                self._tick()
            if any(s.failures >= START_ATTEMPTS for s in self.slots):
                failed = next(s for s in self.slots if s.failures >= START_ATTEMPTS)
                log.critical("worker %d keeps failing to start: %s", failed.index, failed.reason)
                return self._stop(1)
            if time.monotonic() - last_status >= STATUS_EVERY:
                systemd.notify(self.status())
                last_status = time.monotonic()
        return self._stop(0)

    def _listen(self) -> None:
        inherited = systemd.listen_socket()
        if inherited is not None:
            self.listener = inherited
            return
        cfg = self.config
        if cfg.socket is None:
            raise RunnerError("socket: no address given (--socket, or APISIX_LISTEN_ADDRESS=unix:/path)")
        replace = cfg.replace_socket == "yes" or (cfg.replace_socket == "auto" and spawned_by_apisix())
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.inode = sockets.bind(sock, cfg.socket, cfg.socket_mode, cfg.socket_group, replace)
        sock.listen(4096)
        self.listener = sock

    def _wait_ready(self) -> bool:
        while not all(slot.ready for slot in self.slots):
            event, slot, value = self.events.get()
            if event == "stop":
                log.info("stopping on signal before start-up finished")
                return False
            if event == "message" and value["op"] == "ready":
                slot.ready = True
            elif event == "message" and value["op"] == "failed":
                log.critical("cannot start: worker %d: %s", slot.index, value["reason"])
                return False
            elif event == "message":
                self.answer(slot, value)
            elif event == "closed":
                status = slot.reap(value)
                log.critical("cannot start: worker %d exited with status %s before it was ready", slot.index, status)
                return False
        return True

    def _worker_died(self, slot: Slot, channel: Channel) -> None:
        was_ready = slot.ready
        status = slot.reap(channel)
        if status is None:
            return
        self.shares.clear(slot.index)
        delay = slot.died(was_ready, status)
        log.warning("worker %d exited with status %s; starting it again in %.1f s", slot.index, status, delay)
        self._reload_result(slot, {"ok": False, "reason": "the worker exited"})

    def _tick(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.proc is not None and slot.channel is not None and slot.proc.poll() is not None:
                self._worker_died(slot, slot.channel)  # its channel may live on in a child a plugin started
        for slot in self.slots:
            if slot.proc is None and slot.respawn_at and now >= slot.respawn_at:
                slot.respawn_at = 0.0
                self.spawn(slot)
        dropped = self.table.take_dropped()
        if dropped:
            self.broadcast({"op": "drop", "tokens": dropped})
        live = self.table.generations()
        if live != self.live_generations:
            self.live_generations = live
            self.broadcast({"op": "generations", "live": sorted(live)})
        if self.reload is not None and now > self.reload.deadline:
            self._finish_reload(f"not done within {RELOAD_TIMEOUT:g} s")
        if self.inode is not None and self.config.socket and not sockets.still_ours(self.config.socket, self.inode):
            log.warning("socket path %s is no longer ours: another process has replaced it", self.config.socket)
            self.inode = None

    def _stop(self, status: int) -> int:
        systemd.notify("STOPPING=1")
        if self.inode is not None and self.config.socket:
            sockets.unlink_if_ours(self.config.socket, self.inode)
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.drain_timeout + 0.25
        for slot in self.slots:
            if slot.proc is not None:
                try:
                    slot.proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("worker %d did not stop in time: killing it", slot.index)
                    slot.proc.kill()
                    slot.proc.wait()
        if self.listener is not None:
            self.listener.close()
        return status  # (the metrics endpoint is left to the process's exit: nothing waits for a scraper)


def serve(config: Config, argv: Sequence[str], count: int) -> int:
    return Arbiter(config, argv, count).run()
