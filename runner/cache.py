"""The conf-token cache: which prepared route conf each token APISIX holds stands for.

Rules (docs/protocol.md, conf tokens):

* Tokens are uniformly random uint32 values, never 0 (the FlatBuffers default,
  indistinguishable from "absent"), unique among live ones. Random, so that a
  local peer cannot guess the tokens APISIX holds, and a token a previous
  runner process issued almost never names a live conf here.
* Each entry lives ``ttl`` seconds after its *last use* (a PrepareConf that
  returns it or a call that looks it up): APISIX may keep using a token up to
  about 1.9 x ``APISIX_CONF_EXPIRE_TIME`` after preparing it, so a fixed TTL
  would drop confs that are still in use.
* At most ``max_entries`` live entries holding at most ``max_bytes`` (each
  entry is charged the size its caller gives, the PrepareConf payload); the
  least recently used go first.
* A PrepareConf key returns the same token only while that token is live and
  was prepared from the same conf, so APISIX never gets a token that then
  answers CONF_TOKEN_NOT_FOUND.
* One lock, held for dictionary work only, never while a plugin runs.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import TokenNotFound

T = TypeVar("T")

_TOKEN_MASK = 0xFFFFFFFF


class _Entry(Generic[T]):
    __slots__ = ("value", "key", "conf", "expires", "size")

    def __init__(self, value: T, key: str, conf: object, expires: float, size: int) -> None:
        self.value = value
        self.key = key
        self.conf = conf
        self.expires = expires
        self.size = size


class ConfCache(Generic[T]):
    """Maps tokens to prepared confs (``T``), with a sliding TTL and LRU bounds on entries and bytes."""

    def __init__(
        self,
        ttl: float,
        max_entries: int = 10_000,
        max_bytes: int = 64 << 20,
        clock: Callable[[], float] = time.monotonic,
        tokens: Callable[[], int] = lambda: secrets.randbits(32),
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        if ttl <= 0 or max_entries < 1 or max_bytes < 1:
            raise ValueError("ttl, max_entries and max_bytes must be positive")
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.evicted = 0  # live entries dropped to stay within the bounds
        self._clock = clock
        self._tokens = tokens
        self._lock = threading.Lock()
        self._entries: OrderedDict[int, _Entry[T]] = OrderedDict()  # least recently used first
        self._by_key: dict[str, int] = {}
        self._bytes = 0
        self._on_drop = on_drop  # told of every token that goes (expired or evicted), under the lock

    def __len__(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return len(self._entries)

    def values(self) -> list[T]:
        """The live entries' values."""
        with self._lock:
            self._expire(self._clock())
            return [entry.value for entry in self._entries.values()]

    @property
    def bytes(self) -> int:
        """Bytes charged by the live entries."""
        return self._bytes

    def find(self, key: str, conf: object) -> int | None:
        """The live token already prepared for ``key`` from the same ``conf``, refreshed; or ``None``."""
        if not key:
            return None
        with self._lock:
            now = self._clock()
            self._expire(now)
            token = self._by_key.get(key)
            if token is None:
                return None
            entry = self._entries[token]
            if entry.conf != conf:
                return None
            self._touch(token, entry, now)
            return token

    def issue(self, key: str, conf: object, size: int, build: Callable[[], tuple[T, bool]]) -> int:
        """The token for a PrepareConf: the live one for ``key`` and ``conf``, or a new one for
        ``build()``'s value (``(value, False)``: valid, but never to be found by key)."""
        token = self.find(key, conf)
        if token is None:
            value, keyed = build()
            token = self.add(value, key if keyed else "", conf, size)
        return token

    def add(self, value: T, key: str = "", conf: object = None, size: int = 0) -> int:
        """Store ``value`` under a new token and return the token."""
        with self._lock:
            token = self._new_token()
            self._store(token, value, key, conf, size)
            return token

    def put(self, token: int, value: T, size: int = 0) -> None:
        """Store ``value`` under a token issued elsewhere (another worker's, through the master)."""
        with self._lock:
            if token in self._entries:
                self._drop(token)
            self._store(token, value, "", None, size)

    def _store(self, token: int, value: T, key: str, conf: object, size: int) -> None:
        now = self._clock()
        self._expire(now)
        while self._entries and (len(self._entries) >= self.max_entries or self._bytes + size > self.max_bytes):
            self._drop(next(iter(self._entries)))
            self.evicted += 1
        self._entries[token] = _Entry(value, key, conf, now + self.ttl, size)
        self._bytes += size
        if key:
            self._by_key[key] = token

    def discard(self, token: int) -> None:
        """Forget ``token`` now (the master dropped it)."""
        with self._lock:
            if token in self._entries:
                self._drop(token)

    def expire(self) -> None:
        """Drop what has expired now (rather than at the next use)."""
        with self._lock:
            self._expire(self._clock())

    def get(self, token: int) -> T:
        """The value for ``token``, refreshing its expiry; ``TokenNotFound`` if unknown or expired."""
        with self._lock:
            entry = self._entries.get(token)
            if entry is None:
                raise TokenNotFound(f"conf token {token} is unknown")
            now = self._clock()
            if entry.expires <= now:
                self._drop(token)
                raise TokenNotFound(f"conf token {token} expired")
            entry.expires = now + self.ttl  # ``_touch``, inlined: this is every call's path
            self._entries.move_to_end(token)
            return entry.value

    def forget_keys(self) -> None:
        """Stop reusing tokens by key (after a plugin reload, the next PrepareConf must use new code).

        Issued tokens stay valid: APISIX keeps using them until they expire.
        """
        with self._lock:
            self._by_key.clear()

    def _touch(self, token: int, entry: _Entry[T], now: float) -> None:
        entry.expires = now + self.ttl
        self._entries.move_to_end(token)

    def _expire(self, now: float) -> None:
        # Use order and expiry order agree (every use adds the same ttl), so the
        # expired entries are exactly a prefix of the LRU order.
        entries = self._entries
        while entries:
            token, entry = next(iter(entries.items()))
            if entry.expires > now:
                break
            self._drop(token)

    def _drop(self, token: int) -> None:
        entry = self._entries.pop(token)
        self._bytes -= entry.size
        if entry.key and self._by_key.get(entry.key) == token:
            del self._by_key[entry.key]
        if self._on_drop is not None:
            self._on_drop(token)

    def _new_token(self) -> int:
        while True:
            token = self._tokens() & _TOKEN_MASK
            if token and token not in self._entries:
                return token
