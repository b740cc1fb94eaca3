"""The test kit's one vocabulary for what a test supplies, shared by both halves.

Rules (the same for ``run_filter`` and ``ApisixClient``):

* A route conf value is the JSON text APISIX sends when it is a ``str``, and
  any other Python value is sent as its JSON (``{"header": "X"}``); ``None``
  is no conf (an empty value in-process, an entry without a value over the socket).
* A conf is one plugin's value (in-process) or, over the socket, the route's
  ``ext-plugin-*`` conf as a dict ``{name: value}`` or ``(name, value)`` pairs.
* Headers and args are a dict or ``(name, value)`` pairs (pairs keep repeated
  names; a dict value may be a list for a repeated name). Request header names
  are lower-cased, as nginx gives them to APISIX.
* A client address is text (``"127.0.0.1"``, ``"::1"``); the 4 or 16 bytes of
  the wire are accepted too.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

Value: TypeAlias = str | list[str] | None
PairsInput: TypeAlias = Mapping[str, Value] | Sequence[tuple[str, str | None]]
ConfInput: TypeAlias = Mapping[str, Any] | Sequence[tuple[str, Any]]


def conf_text(value: Any) -> str:
    """The text APISIX sends for one plugin's conf value."""
    if isinstance(value, str):
        return value
    return "" if value is None else json.dumps(value)


def conf_pairs(conf: ConfInput) -> list[tuple[str, str | None]]:
    """A route's conf entries; a ``None`` value is an entry without a value, which APISIX can send."""
    items = conf.items() if isinstance(conf, Mapping) else conf
    return [(name, None if value is None else conf_text(value)) for name, value in items]


def pairs(items: PairsInput, lower: bool = False) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for name, value in items.items() if isinstance(items, Mapping) else items:
        name = name.lower() if lower else name
        if isinstance(value, list):
            out += [(name, v) for v in value]
        else:
            out.append((name, value))
    return out


def ip_bytes(src_ip: str | bytes) -> bytes:
    if isinstance(src_ip, bytes):
        if len(src_ip) not in (4, 16):
            raise ValueError(f"src_ip must be 4 or 16 bytes, not {len(src_ip)}")
        return src_ip
    return ipaddress.ip_address(src_ip).packed
