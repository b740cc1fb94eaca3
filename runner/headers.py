"""Multi-valued string mappings plugins read and change: ``Headers`` and ``Args``.

Rules:

* werkzeug's verbs: ``m[name]`` is the first value, ``get``/``getlist`` read,
  ``m[name] = v`` (``set``) replaces every value, ``add`` appends one,
  ``setlist`` replaces with several, ``del m[name]`` (``remove``) drops them
  all, ``pop`` does both. Iterating yields ``(name, value)`` pairs in order;
  repeated names are never collapsed.
* Every value is checked where it gets in (the constructor, ``set``, ``add``,
  ``setlist``, a copy from another kind of mapping), so a bad one raises in the
  plugin's own line instead of reaching the upstream or failing the reply.
  Pairs that come from APISIX (what ``load`` returns) and pairs of another
  mapping of the same kind were checked or decoded already and are not
  checked again.
* A mapping knows what APISIX sent: ``sent()``, a snapshot taken when the
  pairs are loaded. ``changes()`` compares the current pairs with it, name by
  name, so a plugin that only reads changes nothing.
* Laziness is the ``load`` function given to the constructor: it is called
  once, when something first reads the mapping. Until then ``set`` is only
  recorded, so a plugin that just sets a header costs no decoding of the
  others; such sets are reported as made, without comparing (the one visible
  consequence: setting an unread header to the value it has is still sent).
* Not safe for changes from several threads at once (like a ``list``); reads
  from several threads are.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Self, Union

__all__ = ["Args", "Headers", "MultiDict"]

#: What APISIX sent for one mapping: ``(name, value)`` pairs, decoded on first use.
Load = Callable[[], Sequence[tuple[str, str]]]

Pairs = Union["MultiDict", Mapping[str, str], Iterable[tuple[str, str]]]

# RFC 9110 token characters: anything else in a header name makes nginx refuse it.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Names already found valid: plugins set the same few headers on every call,
# and the match this saves is about 2 % of the benchmark's stop call.
_valid_names: set[str] = set()
_VALID_NAMES_MAX = 4096

# Text is decoded from nginx with ``surrogateescape``: U+DC80-U+DCFF stand for
# raw bytes and encode back to them; any other surrogate cannot be encoded.
UNENCODABLE = "\ud800-\udc7f\udd00-\udfff"
# In a header value: C0 controls except HTAB, DEL, C1 (NEL included) and the
# Unicode line separators, which some clients and proxies take as line breaks.
_REFUSED_IN_VALUES = re.compile(f"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029{UNENCODABLE}]")
_REFUSED_IN_ARGS = re.compile(f"[{UNENCODABLE}]")


def _refuse_type(value: object, what: str) -> TypeError:
    if isinstance(value, (bytes, bytearray)):
        return TypeError(f"{what} must be str, not bytes: decode it first, e.g. value.decode('latin-1') ({value!r})")
    if value is None:
        return TypeError(f"{what} must be str, not None (to remove a name, use del)")
    return TypeError(f"{what} must be str, not {type(value).__name__}: {value!r}")


def refuse_character(text: str, found: str, what: str) -> ValueError:
    """The error for ``found``, a character of ``text`` that ``what`` must not contain."""
    if "\ud800" <= found <= "\udfff":
        reason = "a lone surrogate that cannot be encoded"
    elif found in "\u2028\u2029":
        reason = "a line separator"
    else:
        reason = "a control character"
    return ValueError(f"{what} must not contain U+{ord(found):04X} ({reason}): {text!r}")


def _check_header_value(value: object) -> str:
    if type(value) is not str:
        raise _refuse_type(value, "header values")
    # isprintable() is true for most values and rules out everything refused.
    if not value.isprintable():
        bad = _REFUSED_IN_VALUES.search(value)
        if bad is not None:
            raise refuse_character(value, bad.group(), "header values")
    return value


def _check_arg(text: object, what: str) -> str:
    # nginx percent-encodes args when it applies them, so any character is
    # safe on the wire, and a decoded arg APISIX sent can be set back as is.
    if type(text) is not str:
        raise _refuse_type(text, what)
    if not text.isascii():
        bad = _REFUSED_IN_ARGS.search(text)
        if bad is not None:
            raise refuse_character(text, bad.group(), what)
    return text


class MultiDict:
    """Ordered, multi-valued string mapping with werkzeug's verbs (the base of ``Headers`` and ``Args``).

    ``MultiDict(pairs)`` holds ``pairs`` (a mapping, pairs or another
    mapping), checked; they are also its ``sent()`` snapshot.
    ``MultiDict(load=f)`` holds what ``f()`` returns, called when the mapping
    is first read. ``MultiDict(pairs, load=f)`` holds ``pairs`` and compares
    them with ``f()`` (a whole mapping assigned in place of another).
    """

    __slots__ = ("_items", "_sent", "_load", "_sets", "_touched")

    def __init__(self, pairs: Pairs | None = None, *, load: Load | None = None) -> None:
        self._load = load
        # Sets made before the first read (``_items`` None), in order.
        self._sets: list[tuple[str, str]] = []
        # Names changed since construction, folded, so that ``changes`` looks at
        # those only; None: every name may have changed.
        self._touched: set[str] | None = set()
        self._items: list[tuple[str, str]] | None
        self._sent: tuple[tuple[str, str], ...] | None
        if load is None:
            items = self._checked(pairs) if pairs else []
            self._items, self._sent = items, tuple(items)
        elif pairs is None:  # loaded on first read
            self._items = self._sent = None
        else:  # a whole mapping assigned in place of another
            self._items, self._sent = self._checked(pairs), None
            self._touched = None

    def _checked(self, pairs: Pairs) -> list[tuple[str, str]]:
        if isinstance(pairs, MultiDict):
            if type(pairs) is type(self):
                return list(pairs._loaded())
            source: Iterable[tuple[str, str]] = pairs
        elif isinstance(pairs, (list, tuple)):
            source = pairs
        else:
            source = pairs.items() if isinstance(pairs, Mapping) else pairs
        name, value = self._name, self._value
        return [(name(n), value(v)) for n, v in source]

    # How names compare (here: exactly; ``Headers``: case-insensitively). A C
    # function, not a Python one: it runs for every pair a change looks at.
    _fold: Callable[[str], str] = staticmethod(str)

    @staticmethod
    def _name(name: object) -> str:
        name = _check_arg(name, "names")
        if not name:
            raise ValueError("names must not be empty")
        return name

    @staticmethod
    def _value(value: object) -> str:
        return _check_arg(value, "values")

    def sent(self) -> tuple[tuple[str, str], ...]:
        """The pairs this mapping started from (what APISIX sent), loading them if needed."""
        sent = self._sent
        if sent is None:
            assert self._load is not None
            sent = self._sent = tuple(self._load())
        return sent

    def _loaded(self) -> list[tuple[str, str]]:
        """The current pairs: on first use, what APISIX sent with the sets made before."""
        items = self._items
        if items is None:
            items = list(self.sent())
            for pair in self._sets:
                self._replace(items, pair[0], [pair])
            # A second thread may have got here first; both built the same list.
            self._items = items
        return items

    def _touch(self, name: str) -> None:
        if self._touched is not None:
            self._touched.add(self._fold(name))

    def set(self, name: str, value: str) -> None:
        """Replace every value of ``name`` by ``value``, keeping the first one's position."""
        pair = (self._name(name), self._value(value))
        touched = self._touched  # (``_touch``, inlined: a plugin's most common change)
        if touched is not None:
            touched.add(self._fold(name))
        items = self._items
        if items is None:  # not read yet: only record it
            self._sets.append(pair)
        else:
            self._replace(items, name, [pair])

    __setitem__ = set

    def add(self, name: str, value: str) -> None:
        pair = (self._name(name), self._value(value))
        self._loaded().append(pair)
        self._touch(name)

    def setlist(self, name: str, values: Iterable[str]) -> None:
        """Replace every value of ``name`` by ``values`` (none: remove it), at the first one's position."""
        name = self._name(name)
        pairs = [(name, self._value(v)) for v in values]
        self._replace(self._loaded(), name, pairs)
        self._touch(name)

    def _replace(self, items: list[tuple[str, str]], name: str, pairs: list[tuple[str, str]]) -> None:
        """Put ``pairs`` (all named ``name``) in place of ``name``'s pairs in ``items``."""
        fold = self._fold
        key = fold(name)
        for i, (n, _) in enumerate(items):
            if fold(n) == key:
                items[i:] = pairs + [pair for pair in items[i + 1 :] if fold(pair[0]) != key]
                return
        items += pairs

    def remove(self, name: str) -> None:
        """Drop every value of ``name``; no error if there is none."""
        key = self._fold(name)
        fold = self._fold
        self._items = [pair for pair in self._loaded() if fold(pair[0]) != key]
        self._touch(name)

    def __delitem__(self, name: str) -> None:
        self.remove(name)

    def pop(self, name: str, default: str | None = None) -> str | None:
        """Remove ``name`` and return its first value (or ``default``)."""
        value = self.get(name, default)
        self.remove(name)
        return value

    def get(self, name: str, default: str | None = None) -> str | None:
        key = self._fold(name)
        for n, v in self._loaded():
            if self._fold(n) == key:
                return v
        return default

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def getlist(self, name: str) -> list[str]:
        key = self._fold(name)
        return [v for n, v in self._loaded() if self._fold(n) == key]

    def keys(self) -> list[str]:
        """Distinct names, in order of first appearance."""
        seen: dict[str, str] = {}
        for n, _ in self._loaded():
            seen.setdefault(self._fold(n), n)
        return list(seen.values())

    def items(self) -> list[tuple[str, str]]:
        return list(self._loaded())

    def copy(self) -> Self:
        return type(self)(self)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = self._fold(name)
        return any(self._fold(n) == key for n, _ in self._loaded())

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._loaded()))

    def __len__(self) -> int:
        return len(self._loaded())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, MultiDict):
            return type(self) is type(other) and self._loaded() == other._loaded()
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._loaded()!r})"

    def changes(self) -> list[tuple[str, list[str] | None]]:
        """What differs from ``sent()``: ``(name, every new value)``, or ``(name, None)`` if gone.

        Names whose values (in order) are unchanged are left out. A mapping
        never read reports its sets as made, each name's last one, without
        decoding what APISIX sent to compare.
        """
        touched = self._touched
        if touched is not None and not touched:
            return []
        if self._items is None:
            last: dict[str, tuple[str, list[str] | None]] = {}
            for name, value in self._sets:
                last[self._fold(name)] = (name, [value])
            return list(last.values())
        before = self._group(self.sent(), touched)
        after = self._group(self._items, touched)
        out: list[tuple[str, list[str] | None]] = [
            (name, values) for key, (name, values) in after.items() if before.get(key, (name, None))[1] != values
        ]
        out += [(name, None) for key, (name, _) in before.items() if key not in after]
        return out

    def _group(
        self, items: Iterable[tuple[str, str]], only: builtins.set[str] | None
    ) -> dict[str, tuple[str, list[str]]]:
        groups: dict[str, tuple[str, list[str]]] = {}
        fold = self._fold
        for n, v in items:
            key = fold(n)
            if only is None or key in only:
                groups.setdefault(key, (n, []))[1].append(v)
        return groups


class Headers(MultiDict):
    """HTTP headers: names compared case-insensitively, kept in the case given.

    A name must be an HTTP token (RFC 9110); a value a ``str`` without control
    characters (HTAB is allowed) or U+2028/U+2029.
    """

    __slots__ = ()

    _fold = staticmethod(str.lower)

    @staticmethod
    def _name(name: object) -> str:
        if type(name) is str and name in _valid_names:
            return name
        if type(name) is not str:
            raise _refuse_type(name, "header names")
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"not a valid header name (an HTTP token): {name!r}")
        if len(_valid_names) < _VALID_NAMES_MAX:
            _valid_names.add(name)
        return name

    _value = staticmethod(_check_header_value)


class Args(MultiDict):
    """Query-string arguments: case-sensitive names, decoded text (a bare ``?flag`` reads as ``""``).

    A name must be a non-empty ``str`` and a value a ``str``; any character is
    allowed, since nginx percent-encodes args when it applies them.
    """

    __slots__ = ()
