"""The master of a multi-process runner (``workers > 1``), in the shape of gunicorn's arbiter.

The master binds the socket (or takes systemd's), starts the workers
(``worker``; each is the threaded server on that shared listening socket) and
runs no plugin code itself. Rules:

* Signal handlers only queue an event; the main thread does the rest.
* Conf tokens: the master holds the table (``shared.TokenTable``) and answers
  the workers' ``prepare``/``lookup`` questions and ``touch`` reports; what it
  drops is dropped in every worker.
* A worker that exits is started again, after 0.5 s doubling to 10 s while it
  keeps dying within 10 s of its start; one that fails to start 5 times in a
  row (or any worker at the first start) makes the master stop everything and
  exit 1 with the reason.
* SIGHUP reloads in two phases: every worker loads the plugins and reports;
  if all succeeded they all switch, else none does and the log says which
  worker failed and why. New PrepareConfs then get new tokens.
* SIGTERM: remove the socket path, SIGTERM every worker (each drains within
  ``drain_timeout``), SIGKILL what is still alive shortly after, exit 0.
* sd_notify (READY, RELOADING, STOPPING, WATCHDOG, STATUS with the workers
  alive) comes from the master only; one metrics endpoint shows the sum of
  the workers' figures.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import control, metrics, sockets, systemd, tuning
from .channel import Channel, ChannelClosed, Message, Requests
from .config import Config
from .errors import RunnerError
from .lifecycle import spawned_by_apisix, watch_stdin
from .shared import TokenTable
from .shares import Shares
from .worker import WORKER_ENV

log = logging.getLogger("runner")

STATUS_EVERY = 10.0
RELOAD_TIMEOUT = 60.0
START_ATTEMPTS = 5
_BACKOFF_MIN, _BACKOFF_MAX, _STABLE_AFTER = 0.5, 10.0, 10.0


class Slot:
    """One worker position: the process in it now, and how its starts went."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: Channel | None = None
        self.requests: Requests | None = None
        self.ready = False
        self.started = 0.0
        self.failures = 0  # consecutive deaths soon after a start
        self.respawn_at = 0.0
        self.reason = ""


class Arbiter:
    def __init__(self, config: Config, argv: Sequence[str], count: int) -> None:
        self.config = config
        self.argv = list(argv)
        self.events: queue.SimpleQueue[tuple[str, Any, Any]] = queue.SimpleQueue()
        self.table = TokenTable(config)
        self.slots = [Slot(i) for i in range(count)]
        self.listener: socket.socket | None = None
        self.inode: tuple[int, int] | None = None
        self.reload: dict[int, Message | None] | None = None
        self.waiting: list[Callable[[str], None]] = []  # `reload` commands waiting for the outcome
        self.reload_deadline = 0.0
        self.live_generations: set[int] = {self.table.generation}
        self.shares_fd = Shares.create(count)
        self.shares = Shares(self.shares_fd, count, 0)

    # --- workers --------------------------------------------------------------

    def spawn(self, slot: Slot) -> None:
        assert self.listener is not None
        ours, theirs = socket.socketpair()
        listen_fd = self.listener.fileno()
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        fds = (listen_fd, theirs.fileno(), self.shares_fd)
        env[WORKER_ENV] = ",".join(map(str, (slot.index, len(self.slots), *fds, self.table.generation)))
        slot.proc = subprocess.Popen(
            [sys.executable, "-m", "runner", *self.argv], env=env, stdin=subprocess.DEVNULL, pass_fds=fds
        )
        theirs.close()
        slot.channel = Channel(ours)
        slot.requests = Requests(slot.channel, 2.0)
        slot.ready, slot.started = False, time.monotonic()
        threading.Thread(target=self._read, args=(slot, slot.channel), name=f"worker-{slot.index}", daemon=True).start()

    def _read(self, slot: Slot, channel: Channel) -> None:
        tuning.block_signals()
        try:
            while True:
                message = channel.recv()
                if message.get("op") == "answer" and slot.requests is not None:
                    slot.requests.answered(message)  # a metrics snapshot the endpoint thread waits for
                else:
                    self.events.put(("message", slot, message))
        except ChannelClosed:
            self.events.put(("closed", slot, channel))

    def send(self, slot: Slot, message: Message) -> None:
        if slot.channel is not None:
            try:
                slot.channel.send(message)
            except ChannelClosed:
                pass  # its reader reports it gone

    def broadcast(self, message: Message) -> None:
        for slot in self.slots:
            if slot.ready:
                self.send(slot, message)

    def _exited(self, slot: Slot, channel: Channel) -> int | None:
        """The worker behind ``channel`` is gone: reap it; its exit status."""
        if slot.channel is not channel or slot.proc is None:
            return None  # an earlier process of this slot
        try:
            status: int | None = slot.proc.wait(5)
        except subprocess.TimeoutExpired:
            slot.proc.kill()
            status = slot.proc.wait()
        if slot.requests is not None:
            slot.requests.close()
        slot.channel.close()
        slot.proc = slot.channel = slot.requests = None
        return status

    # --- the master's answers ---------------------------------------------------

    def answer(self, slot: Slot, message: Message) -> None:
        op = message["op"]
        if op == "prepare":
            token, generation = self.table.prepare(message["key"], message["conf"], int(message["size"]))
            self.send(slot, {"op": "answer", "id": message["id"], "token": token, "generation": generation})
        elif op == "lookup":
            found = self.table.lookup(int(message["token"]))
            reply: Message = {"op": "answer", "id": message["id"], "found": found is not None}
            if found is not None:
                reply.update(conf=found[0], generation=found[1], size=found[2])
            self.send(slot, reply)
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

    def start_reload(self, reply: Callable[[str], None] | None = None) -> None:
        if self.reload is not None:
            if reply is not None:
                reply("failed: a reload is already running; ask again when it has finished")
            else:
                log.warning("SIGHUP ignored: a reload is still running")
            return
        if reply is not None:
            self.waiting.append(reply)
        self.reload = {slot.index: None for slot in self.slots if slot.ready}
        self.reload_deadline = time.monotonic() + RELOAD_TIMEOUT
        systemd.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        self.broadcast({"op": "reload-prepare"})

    def _reload_result(self, slot: Slot, message: Message) -> None:
        if self.reload is not None and slot.index in self.reload:
            self.reload[slot.index] = message
            if all(result is not None for result in self.reload.values()):
                self._finish_reload()

    def _finish_reload(self, timed_out: bool = False) -> None:
        assert self.reload is not None
        failures = [
            f"worker {index}: {'no answer' if result is None else result.get('reason')}"
            for index, result in self.reload.items()
            if result is None or not result.get("ok")
        ]
        if failures or timed_out or not self.reload:
            self.broadcast({"op": "reload-abort"})
            reason = "; ".join(failures) or "no worker answered in time"
            log.error("reload failed, every worker keeps the plugins loaded before: %s", reason)
            outcome = f"failed: {reason}"
        else:
            self.table.reloaded()
            self.broadcast({"op": "reload-commit", "generation": self.table.generation})
            names = next(iter(self.reload.values()))["plugins"]  # type: ignore[index]
            done = f"reloaded {len(names)} plugin(s) in {len(self.reload)} worker(s): {', '.join(names) or 'none'}"
            log.info("%s", done)
            outcome = f"ok: {done}"
        self.reload = None
        systemd.notify("READY=1", self.status())
        for reply in self.waiting:
            reply(outcome)
        self.waiting.clear()

    # --- the main loop ------------------------------------------------------------

    def status(self) -> str:
        alive = sum(s.ready for s in self.slots)
        return (
            f"STATUS=serving with {alive} of {len(self.slots)} worker(s) alive, {len(self.table.cache)} conf token(s)"
        )

    def run(self) -> int:
        cfg = self.config
        for sig, event in ((signal.SIGTERM, "stop"), (signal.SIGINT, "stop"), (signal.SIGHUP, "reload")):
            signal.signal(sig, lambda *_, e=event: self.events.put((e, None, None)))
        tuning.raise_fd_limit()
        try:
            self._listen()
        except (RunnerError, OSError) as e:
            log.critical("cannot start: %s", e)
            return 1
        for each in self.slots:
            self.spawn(each)
        if not self._wait_ready():
            return self._stop(1)
        endpoint = metrics.serve(self.render_metrics, cfg.metrics_host, cfg.metrics_port) if cfg.metrics_port else None
        where = "inherited socket" if self.inode is None else cfg.socket
        log.info("serving on %s with %d worker processes", where, len(self.slots))
        spawned = spawned_by_apisix()
        watch = cfg.exit_with_parent == "yes" or (cfg.exit_with_parent == "auto" and spawned)
        parent = os.getppid() if watch else None
        if watch and spawned:
            gone = lambda: self.events.put(("parent-gone", None, None))  # noqa: E731
            threading.Thread(target=watch_stdin, args=(gone,), name="parent-watch", daemon=True).start()
        control.serve(lambda reply: self.events.put(("control-reload", None, reply)))
        systemd.notify("READY=1", self.status(), f"MAINPID={os.getpid()}")
        ping = systemd.watchdog_interval()
        last_status = time.monotonic()
        while True:
            try:
                event, slot, value = self.events.get(timeout=min(1.0, ping or 1.0))
            except queue.Empty:
                event, slot, value = "tick", None, None
            if ping is not None:
                systemd.notify("WATCHDOG=1")
            if parent is not None and os.getppid() != parent:
                event = "parent-gone"
            if event == "stop":
                log.info("stopping on signal")
                break
            if event == "parent-gone":
                log.warning("the process that started us is gone: stopping")
                break
            if event == "reload":
                self.start_reload()
            elif event == "control-reload":
                self.start_reload(value)
            elif event == "message":
                self.answer(slot, value)
            elif event == "closed":
                self._worker_died(slot, value)
                if any(s.failures >= START_ATTEMPTS for s in self.slots):
                    failed = next(s for s in self.slots if s.failures >= START_ATTEMPTS)
                    log.critical("worker %d keeps failing to start: %s", failed.index, failed.reason)
                    return self._stop(1, endpoint)
            else:
                self._tick()
                if time.monotonic() - last_status >= STATUS_EVERY:
                    systemd.notify(self.status())
                    last_status = time.monotonic()
        return self._stop(0, endpoint)

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
                status = self._exited(slot, value)
                log.critical("cannot start: worker %d exited with status %s before it was ready", slot.index, status)
                return False
        return True

    def _worker_died(self, slot: Slot, channel: Channel) -> None:
        was_ready = slot.ready
        status = self._exited(slot, channel)
        if status is None and slot.proc is not None:
            return
        slot.ready = False
        self.shares.clear(slot.index)
        quick = time.monotonic() - slot.started < _STABLE_AFTER
        slot.failures = slot.failures + 1 if quick or not was_ready else 0
        slot.reason = slot.reason if not was_ready and slot.reason else f"exited with status {status}"
        delay = min(_BACKOFF_MAX, _BACKOFF_MIN * 2 ** max(0, slot.failures - 1))
        slot.respawn_at = time.monotonic() + delay
        log.warning("worker %d exited with status %s; starting it again in %.1f s", slot.index, status, delay)
        if self.reload is not None and slot.index in self.reload and self.reload[slot.index] is None:
            self.reload[slot.index] = {"ok": False, "reason": "the worker exited"}
            if all(r is not None for r in self.reload.values()):
                self._finish_reload()

    def _tick(self) -> None:
        now = time.monotonic()
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
        if self.reload is not None and now > self.reload_deadline:
            self._finish_reload(timed_out=True)
        if self.inode is not None and self.config.socket and not sockets.still_ours(self.config.socket, self.inode):
            log.warning("socket path %s is no longer ours: another process has replaced it", self.config.socket)
            self.inode = None

    def _stop(self, status: int, endpoint: Any = None) -> int:
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
        if endpoint is not None:
            endpoint.shutdown()
        return status


def serve(config: Config, argv: Sequence[str], count: int) -> int:
    return Arbiter(config, argv, count).run()
