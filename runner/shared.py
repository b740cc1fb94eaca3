"""Conf tokens shared by worker processes: the master's table, and each worker's view of it.

APISIX sends a PrepareConf and the calls that use its token on different
connections, which land on different workers. Rules:

* The master holds the one authoritative table (``TokenTable``, a
  ``ConfCache`` of route confs): it issues every token (so tokens are unique
  across workers), reuses a live token by PrepareConf key, and applies the
  sliding TTL and both bounds (entries, bytes) for all workers at once.
* A worker keeps what it has prepared (plugin instances) in a local
  ``ConfCache``: once it has seen a token, calls on it cost no round trip.
  Uses are reported to the master in batches (``flush_uses``) so the TTL
  slides for all; a token the master drops (expired, evicted) is dropped by
  every worker (``discard``).
* A token unknown locally is looked up in the master and prepared here with
  the plugins of the generation (reload) it was prepared with. A worker that
  started after that reload does not have those plugins and answers
  CONF_TOKEN_NOT_FOUND: APISIX then prepares the route again, with the current
  plugins, and retries.
* A worker that dies loses only its calls in flight: its tokens live in the
  master.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .cache import ConfCache
from .channel import Requests
from .config import Config
from .errors import TokenNotFound
from .phases import Prepared

#: A route conf as it travels between processes: ``[[name, value], ...]``.
Conf = list[tuple[str, str]]


def _conf(raw: Any) -> Conf:
    return [(str(name), str(value)) for name, value in raw]


class TokenTable:
    """The master's tokens: each maps to ``(route conf, plugin generation, size)``."""

    def __init__(self, config: Config) -> None:
        self.dropped: list[int] = []  # since the last ``take_dropped``
        self.generation = 1
        self.cache: ConfCache[tuple[Conf, int, int]] = ConfCache(
            config.token_ttl, config.max_conf_entries, config.max_conf_bytes, on_drop=self.dropped.append
        )

    def prepare(self, key: str, raw_conf: Any, size: int) -> tuple[int, int]:
        """``(token, generation)`` for a PrepareConf any worker received."""
        conf = _conf(raw_conf)
        generation = self.generation
        token = self.cache.issue(key, tuple(conf), size, lambda: ((conf, generation, size), True))
        return token, self.cache.get(token)[1]

    def generations(self) -> set[int]:
        """The plugin generations some live token was prepared with, and the current one."""
        return {generation for _, generation, _ in self.cache.values()} | {self.generation}

    def lookup(self, token: int) -> tuple[Conf, int, int] | None:
        try:
            return self.cache.get(token)
        except TokenNotFound:
            return None

    def touch(self, tokens: list[int]) -> None:
        for token in tokens:
            self.lookup(token)

    def reloaded(self) -> None:
        """Every worker runs new plugins: new PrepareConfs get new tokens."""
        self.generation += 1
        self.cache.forget_keys()

    def take_dropped(self) -> list[int]:
        self.cache.expire()
        dropped, self.dropped[:] = list(self.dropped), []
        return dropped


class SharedTokens:
    """A worker's conf tokens: its own prepared plugins, the master's table behind them."""

    def __init__(self, requests: Requests, config: Config, rebuild: Callable[[Conf, int], Prepared | None]) -> None:
        self.requests = requests
        self.local: ConfCache[Prepared] = ConfCache(config.token_ttl, config.max_conf_entries, config.max_conf_bytes)
        self._rebuild = rebuild
        self._lock = threading.Lock()
        self._used: set[int] = set()

    def issue(self, key: str, conf: object, size: int, build: Callable[[], tuple[Prepared, bool]]) -> int:
        answer = self.requests.ask({"op": "prepare", "key": key, "conf": conf, "size": size})
        token = int(answer["token"])
        try:
            self.local.get(token)
        except TokenNotFound:
            prepared, _ = build()
            self.local.put(token, prepared, size)
        return token

    def get(self, token: int) -> Prepared:
        try:
            prepared = self.local.get(token)
        except TokenNotFound:
            prepared = self._from_master(token)
        with self._lock:
            self._used.add(token)
        return prepared

    def _from_master(self, token: int) -> Prepared:
        answer = self.requests.ask({"op": "lookup", "token": token})
        if not answer.get("found"):
            raise TokenNotFound(f"conf token {token} is unknown") from None
        prepared = self._rebuild(_conf(answer["conf"]), int(answer["generation"]))
        if prepared is None:
            raise TokenNotFound(
                f"conf token {token} was prepared with plugins loaded before this worker started"
            ) from None
        self.local.put(token, prepared, int(answer.get("size", 0)))
        return prepared

    def flush_uses(self) -> list[int]:
        with self._lock:
            used, self._used = self._used, set()
        return sorted(used)

    def discard(self, tokens: list[int]) -> None:
        for token in tokens:
            self.local.discard(token)

    def forget_keys(self) -> None:
        """Keys live in the master, which forgets them when every worker has reloaded."""

    def __len__(self) -> int:
        return len(self.local)

    @property
    def bytes(self) -> int:
        return self.local.bytes
