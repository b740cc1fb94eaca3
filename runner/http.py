"""Plain objects that plugins read and change: ``Headers``, ``Args``, ``Request``, ``Response``.

Rules:

* Attributes, not getters and setters. What a plugin changes is found afterwards
  by comparing with what APISIX sent (``MultiDict.changes``), so a plugin that
  only reads produces no action and repeated headers are never collapsed.
* Nothing of a request is decoded before a plugin reads it. Headers or args
  that are only set are never decoded: those sets are sent as made, without
  comparing (setting a header to the value it has is a no-op for APISIX
  anyway). A deletion decodes them, so only names that were there are sent.
* Text is ``str``. Bytes from APISIX are decoded as UTF-8 with
  ``surrogateescape`` and encoded back the same way, so header values, args and
  paths in any encoding survive a round trip unchanged.
* Values that would break an HTTP message (CR, LF, NUL) are refused when they are
  set, so a plugin bug fails its own call instead of reaching the upstream.
* ExtraInfo (variables, bodies) is asked lazily through an injected ``Ask``
  function, once per call and name; this module does no I/O itself.
"""

from __future__ import annotations

import builtins
import ipaddress
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol, Self, Union

from .protocol import InfoKind

__all__ = ["Args", "Ask", "Headers", "InfoKind", "MultiDict", "Request", "Response"]


#: ``ask(kind, var_name)`` returns APISIX's answer, ``None`` when it sent no result.
Ask = Callable[[InfoKind, str], bytes | None]

#: Returns the ``(name, value)`` pairs APISIX sent, decoded on first use.
Loader = Callable[[], list[tuple[str, str]]]


def _text(value: object, what: str) -> str:
    if isinstance(value, str):
        text = value
    elif value is None:
        raise TypeError(f"{what} must not be None (to remove a name, use del)")
    else:
        text = str(value)
    if "\n" in text or "\r" in text or "\0" in text:
        raise ValueError(f"{what} must not contain CR, LF or NUL: {text!r}")
    return text


# RFC 9110 token characters: anything else in a header name makes nginx refuse it.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Held while a lazy mapping loads (rarely, and briefly).
_loading = threading.Lock()

# Names already found valid: plugins set the same few headers on every call.
_valid_names: set[str] = set()
_VALID_NAMES_MAX = 4096


Pairs = Union["MultiDict", Mapping[str, object], Iterable[tuple[str, object]]]


class MultiDict:
    """Ordered, multi-valued string mapping with werkzeug's verbs.

    ``d["x"]`` is the first value (``KeyError`` if absent), ``d.get("x")`` the
    same or a default, ``d.getlist("x")`` every value. ``d["x"] = v`` (or
    ``set``) replaces every value of ``x`` with one, ``add`` appends one more,
    ``del d["x"]`` (or ``remove``) drops them all. Iterating yields
    ``(name, value)`` pairs in order.
    """

    __slots__ = ("_items", "_touched", "_load", "_pending", "_original")
    _items: list[tuple[str, str]]
    _pending: list[tuple[str, str]]  # sets not yet applied, in order

    def __init__(self, items: Pairs = ()) -> None:
        self._items = []
        # Names changed since construction, folded; None = compare every name.
        # ``changes`` looks only at these, so a call that sets one header costs
        # one name's comparison, not a diff of every header.
        self._touched: set[str] | None = set()
        self._load: Loader | None = None  # only a ``_lazy`` mapping has a loader (and ``_pending``)
        self._original: list[tuple[str, str]] | None = None
        if items:  # (skips an ABC isinstance check for the common empty case)
            self.extend(items)
            self._touched = set()  # filling it is not a change

    @classmethod
    def _lazy(cls, load: Loader) -> Self:
        """A mapping of the pairs ``load()`` returns, decoded only when something reads it.

        Until then ``set`` is only recorded (``_pending``): a plugin that just
        sets a header costs no decoding of the others. The first read, or a
        removal (which must know whether the name is there), loads the pairs and
        replays the sets (``__getattr__``, where ``_items`` is still unset).
        """
        self = cls.__new__(cls)
        self._touched = set()
        self._load = load
        self._pending = []
        self._original = None
        return self

    def __getattr__(self, attr: str) -> list[tuple[str, str]]:
        # Only reached for the unset ``_items`` slot of a ``_lazy`` mapping.
        if attr != "_items" or self._load is None:
            raise AttributeError(attr)
        with _loading:  # two threads of one plugin may read it first at once
            load = self._load
            if load is None:  # the other one loaded it
                return self._items
            original = load()
            items = list(original)
            for name, value in self._pending:
                self._set(items, name, value)
            self._original, self._items, self._load = original, items, None
            return items

    @staticmethod
    def _fold(name: str) -> str:
        return name

    @staticmethod
    def _name(name: str) -> str:
        if not name:
            raise ValueError("names must not be empty")
        return _text(name, "names")

    @classmethod
    def _trusted(cls, items: list[tuple[str, str]]) -> Self:
        # For pairs decoded from APISIX's FlatBuffer: nginx already refused CR/LF/NUL.
        self = cls.__new__(cls)
        self._items = items
        self._touched = set()
        self._load = None
        self._original = None
        return self

    def extend(self, items: Pairs) -> None:
        """Add every pair of ``items`` (a mapping, another MultiDict or pairs)."""
        pairs = items.items() if isinstance(items, Mapping) else items
        for name, value in pairs:
            self.add(name, value)

    def add(self, name: str, value: object) -> None:
        self._items.append((self._name(name), _text(value, "values")))
        self._touch(name)

    def _touch(self, name: str) -> None:
        if self._touched is not None:
            self._touched.add(self._fold(name))

    def set(self, name: str, value: object) -> None:
        """Replace every value of ``name`` by ``value``, keeping the first one's position."""
        name = self._name(name)
        text = _text(value, "values")
        self._touch(name)
        if self._load is not None:
            self._pending.append((name, text))
        else:
            self._set(self._items, name, text)

    def _set(self, items: list[tuple[str, str]], name: str, text: str) -> None:
        item = (name, text)
        fold = self._fold
        key = fold(name)
        for i, (n, _) in enumerate(items):
            if fold(n) == key:
                # The common case is a single value: replace it in place.
                rest = [pair for pair in items[i + 1 :] if fold(pair[0]) != key]
                items[i:] = [item, *rest]
                break
        else:
            items.append(item)

    def setlist(self, name: str, values: Iterable[object]) -> None:
        name = self._name(name)
        new = [(name, _text(v, "values")) for v in values]
        key = self._fold(name)
        fold = self._fold
        at = next((i for i, (n, _) in enumerate(self._items) if fold(n) == key), None)
        if at is None:
            self._items += new
        else:
            kept = [item for item in self._items if fold(item[0]) != key]
            self._items = kept[:at] + new + kept[at:]
        self._touch(name)

    def remove(self, name: str) -> None:
        """Drop every value of ``name``; no error if there is none."""
        key = self._fold(name)
        self._items = [item for item in self._items if self._fold(item[0]) != key]
        self._touch(name)

    def get(self, name: str, default: str | None = None) -> str | None:
        key = self._fold(name)
        for n, v in self._items:
            if self._fold(n) == key:
                return v
        return default

    def getlist(self, name: str) -> list[str]:
        key = self._fold(name)
        return [v for n, v in self._items if self._fold(n) == key]

    def pop(self, name: str, default: str | None = None) -> str | None:
        """Remove ``name`` and return its first value (or ``default``)."""
        value = self.get(name, default)
        self.remove(name)
        return value

    def keys(self) -> list[str]:
        """Distinct names, in order of first appearance."""
        seen: dict[str, str] = {}
        for n, _ in self._items:
            seen.setdefault(self._fold(n), n)
        return list(seen.values())

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def copy(self) -> Self:
        return self._trusted(list(self._items))

    def replaced_all(self) -> Self:
        """Mark every name as possibly changed (the whole mapping was assigned)."""
        self._touched = None
        return self

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    __setitem__ = set  # (an alias, not a wrapper: setting a header is the hot path)

    def __delitem__(self, name: str) -> None:
        self.remove(name)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = self._fold(name)
        return any(self._fold(n) == key for n, _ in self._items)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, MultiDict):
            return type(self) is type(other) and self._items == other._items
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._items!r})"

    def _baseline(self) -> list[tuple[str, str]]:
        """What ``changes`` compares with by default (a ``_lazy`` mapping loads it here)."""
        _ = self._items
        return self._original or []

    def changes(self, original: list[tuple[str, str]] | None = None) -> list[tuple[str, list[str] | None]]:
        """What differs from ``original`` (default: what a ``_lazy`` mapping loaded):
        ``(name, new values)``, or ``(name, None)`` if gone.

        Names whose values (in order) are unchanged are left out, so a read-only
        plugin yields nothing. A mapping never read reports its recorded sets as
        they are, without comparing (that would mean decoding).
        """
        touched = self._touched
        if touched is not None and not touched:
            return []
        if self._load is not None:  # only sets so far: each name's last one
            last: dict[str, tuple[str, list[str] | None]] = {}
            for name, value in self._pending:
                last[self._fold(name)] = (name, [value])
            return list(last.values())
        if original is None:
            original = self._baseline()
        before = self._group(original, touched)
        after = self._group(self._items, touched)
        out: list[tuple[str, list[str] | None]] = []
        for key, (name, values) in after.items():
            old = before.get(key)
            if old is None or old[1] != values:
                out.append((name, values))
        for key, (name, _) in before.items():
            if key not in after:
                out.append((name, None))
        return out

    def _group(self, items: list[tuple[str, str]], only: builtins.set[str] | None) -> dict[str, tuple[str, list[str]]]:
        groups: dict[str, tuple[str, list[str]]] = {}
        fold = self._fold
        for n, v in items:
            key = fold(n)
            if only is None or key in only:
                groups.setdefault(key, (n, []))[1].append(v)
        return groups


class Headers(MultiDict):
    """HTTP headers: like ``MultiDict``, with names compared case-insensitively.

    Names keep the case they were given in; lookups ignore it.
    """

    __slots__ = ()

    @staticmethod
    def _fold(name: str) -> str:
        return name.lower()

    @staticmethod
    def _name(name: str) -> str:
        if type(name) is str and name in _valid_names:
            return name
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"not a valid header name: {name!r}")
        if len(_valid_names) < _VALID_NAMES_MAX:
            _valid_names.add(name)
        return name


class Args(MultiDict):
    """Query-string arguments (case-sensitive names). A bare ``?flag`` reads as ``""``."""

    __slots__ = ()


class ExtraCache:
    """One call's cache of ExtraInfo answers, so each is asked at most once.

    It is an ``Ask`` itself: the request and the response of one call share one.
    """

    __slots__ = ("_ask", "_answers")

    def __init__(self, ask: Ask | None) -> None:
        self._ask = ask
        self._answers: dict[tuple[InfoKind, str], bytes | None] | None = None  # most calls ask nothing

    @classmethod
    def of(cls, ask: Ask | None) -> ExtraCache:
        return ask if isinstance(ask, ExtraCache) else cls(ask)

    def __call__(self, kind: InfoKind, name: str = "") -> bytes | None:
        key = (kind, name)
        answers = self._answers
        if answers is None:
            answers = self._answers = {}
        if key not in answers:
            answers[key] = self._ask(kind, name) if self._ask is not None else None
        return answers[key]

    def var(self, name: str) -> str | None:
        raw = self(InfoKind.VAR, name)
        return None if raw is None else raw.decode("utf-8", "surrogateescape")


def _to_bytes(body: bytes | bytearray | str) -> bytes:
    return body.encode("utf-8", "surrogateescape") if isinstance(body, str) else bytes(body)


class Source(Protocol):
    """What ``Request.from_apisix`` reads from a decoded HTTPReqCall, each part on demand."""

    @property
    def path(self) -> str: ...
    @property
    def src_ip(self) -> bytes: ...
    def headers(self) -> list[tuple[str, str]]: ...
    def args(self) -> list[tuple[str, str]]: ...


class Request:
    """The client request as APISIX sees it at this phase; change it to rewrite it.

    ``path`` (decoded, no query string), ``headers`` and ``args`` are assignable
    and changes are sent upstream as a Rewrite. ``body`` is asked from APISIX the
    first time it is read; assigning it replaces the body sent upstream.
    """

    __slots__ = ("id", "method", "_path", "_orig_path", "_src_ip", "_headers", "_args", "_body", "_body_set",
                 "_extra", "_source")  # fmt: skip
    # None until decoded (``from_apisix``); ``_path`` also until set.
    _path: str | None
    _orig_path: str | None
    _src_ip: str | bytes | None

    def __init__(
        self,
        *,
        id: int = 0,
        method: str = "GET",
        path: str = "/",
        headers: Pairs = (),
        args: Pairs = (),
        src_ip: str | bytes = "127.0.0.1",
        body: bytes | str | None = None,
        ask: Ask | None = None,
    ) -> None:
        self.id = id
        self.method = method
        self._source: Source | None = None
        self.path = path
        self._orig_path = self._path
        self._src_ip = src_ip
        self._headers: Headers | None = Headers(headers)
        self._headers._original = self._headers.items()
        self._args: Args | None = Args(args)
        self._args._original = self._args.items()
        self._body: bytes | str | None = body
        self._body_set = False
        self._extra = ExtraCache.of(ask)

    @classmethod
    def from_apisix(cls, id: int, method: str, source: Source, ask: Ask | None) -> Request:
        """A request whose path, address, headers and args are decoded only if a plugin uses them."""
        self = cls.__new__(cls)
        self.id = id
        self.method = method
        self._source = source
        self._path = self._orig_path = self._src_ip = self._headers = self._args = self._body = None
        self._body_set = False
        self._extra = ExtraCache.of(ask)
        return self

    @property
    def path(self) -> str:
        path = self._path
        if path is None:
            assert self._source is not None
            path = self._path = self._orig_path = self._source.path  # trusted: nginx's own path
        return path

    @path.setter
    def path(self, value: str) -> None:
        # APISIX escapes the path itself and treats "" as present: an empty or
        # relative path would reach the upstream as a broken request line.
        if not isinstance(value, str) or not value.startswith("/"):
            raise ValueError(f"path must be a decoded absolute path starting with '/': {value!r}")
        self._path = _text(value, "path")

    @property
    def src_ip(self) -> str:
        """The client's address (IPv4 or IPv6) as text."""
        ip = self._src_ip
        if ip is None:
            assert self._source is not None
            ip = self._source.src_ip
        if isinstance(ip, bytes):
            ip = self._src_ip = str(ipaddress.ip_address(ip)) if len(ip) in (4, 16) else ""
        return ip

    @property
    def headers(self) -> Headers:
        headers = self._headers
        if headers is None:
            assert self._source is not None
            headers = self._headers = Headers._lazy(self._source.headers)
        return headers

    @headers.setter
    def headers(self, value: Pairs) -> None:
        new = Headers(value).replaced_all()
        new._original = self.headers._baseline()  # to know what changed
        self._headers = new

    @property
    def args(self) -> Args:
        args = self._args
        if args is None:
            assert self._source is not None
            args = self._args = Args._lazy(self._source.args)
        return args

    @args.setter
    def args(self, value: Pairs) -> None:
        new = Args(value).replaced_all()
        new._original = self.args._baseline()
        self._args = new

    def changes(self) -> tuple[str | None, list[tuple[str, list[str] | None]], list[tuple[str, list[str] | None]]]:
        """``(new path or None, header changes, arg changes)`` against what APISIX sent."""
        path = self._path
        if path is not None:
            orig = self._orig_path
            if orig is None:  # set without being read
                assert self._source is not None
                orig = self._source.path
            if path == orig:
                path = None
        headers = [] if self._headers is None else self._headers.changes()
        args = [] if self._args is None else self._args.changes()
        return path, headers, args

    @property
    def body(self) -> bytes | str:
        """The request body (``b""`` if none), fetched from APISIX on first read."""
        if self._body is None:
            self._body = self._extra(InfoKind.REQ_BODY) or b""
        return self._body

    @body.setter
    def body(self, value: bytes | str) -> None:
        self._body = value
        self._body_set = True

    @property
    def new_body(self) -> bytes | None:
        """The body a plugin assigned, as bytes, or ``None`` if none was assigned."""
        return _to_bytes(self._body) if self._body_set and self._body is not None else None

    def var(self, name: str) -> str | None:
        """An nginx/APISIX variable (``host``, ``remote_addr``, ``route_id``, ``cookie_x``...).

        ``None`` when APISIX has no value for it, ``""`` when it is empty.
        """
        return self._extra.var(name)

    def __repr__(self) -> str:
        return f"<Request id={self.id} {self.method} {self._path!r}>"


class Response:
    """The response a plugin produces (request phase) or the upstream's (response phase).

    Request phase: set ``status_code``, ``headers`` and ``body`` and call
    ``self.stop()`` to answer the client directly; without ``stop()``,
    ``headers`` are added to the client's response while the request goes on
    upstream. Response phase: ``status_code`` and ``headers`` are the
    upstream's, ``body`` is fetched from APISIX on first read; change any of them.
    """

    __slots__ = ("_status", "_headers", "_body", "_body_set", "_body_kind", "_extra")

    def __init__(
        self,
        *,
        status_code: int = 200,
        headers: Pairs = (),
        body: bytes | str | None = None,
        ask: Ask | None = None,
        upstream: bool = False,
    ) -> None:
        # An upstream status is APISIX's to report; only plugins' values are checked.
        self._status = status_code
        self._headers = headers if isinstance(headers, Headers) else Headers(headers)
        self._body: bytes | str | None = body
        self._body_set = False
        # Only an upstream response has a body to fetch (APISIX has none to
        # give inside a request call).
        self._body_kind = InfoKind.RESP_BODY if upstream else None
        self._extra = ExtraCache.of(ask)

    @property
    def status_code(self) -> int:
        return self._status

    @status_code.setter
    def status_code(self, value: int) -> None:
        # The wire field is 16 bits: 65939 would silently reach the client as 403.
        if not isinstance(value, int) or isinstance(value, bool) or not 100 <= value <= 599:
            raise ValueError(f"status_code must be an HTTP status (100-599): {value!r}")
        self._status = value

    @property
    def headers(self) -> Headers:
        return self._headers

    @headers.setter
    def headers(self, value: Pairs) -> None:
        self._headers = Headers(value).replaced_all()

    @property
    def body(self) -> bytes | str | None:
        """The body: set it to reply with it; in the response phase, reading it fetches the upstream's."""
        if self._body is None and self._body_kind is not None and not self._body_set:
            self._body = self._extra(self._body_kind) or b""
        return self._body

    @body.setter
    def body(self, value: bytes | str | None) -> None:
        self._body = value
        self._body_set = True

    @property
    def new_body(self) -> bytes | None:
        """The body as bytes if a plugin set one (in the request phase: any body), else ``None``."""
        if self._body is None or (self._body_kind is not None and not self._body_set):
            return None
        return _to_bytes(self._body)

    def var(self, name: str) -> str | None:
        """An nginx/APISIX variable, as ``Request.var``."""
        return self._extra.var(name)

    def __repr__(self) -> str:
        return f"<Response {self._status}>"
