"""What both official-runner generations share: the classes plugins import, the constants, the conversions.

Rules:

* ``Request`` and ``Response`` are what ``apisix.runner.http.request.Request``
  and ``apisix.runner.http.response.Response`` name. Plugins import them for
  annotations (and maybe ``isinstance``); the objects a plugin gets are each
  generation's adapter, a subclass, because 0.1.0 and 0.2.0 gave the same
  names to different classes.
* A legacy plugin sees headers and args as plain ``dict``s, one entry per name
  holding the last value, as the official runner parsed them. Writing one back
  sets only the names whose value differs from the request's, so repeated
  headers and args that a plugin did not change reach the upstream intact.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

from runner import Args, Headers

__all__ = [
    "PLUGIN_ACTION_REWRITE",
    "PLUGIN_ACTION_STOP",
    "RESP_MAX_DATA_SIZE",
    "Fields",
    "Request",
    "Response",
    "apply_sets",
    "collapsed",
    "exploded",
    "latin1",
]

#: ``A6.HTTPReqCall.Action`` values, under the names ``apisix.runner.http.response`` gave them.
PLUGIN_ACTION_STOP = 1
PLUGIN_ACTION_REWRITE = 2
#: The official module's constant (``2 << 24 - 1``); nothing reads it.
RESP_MAX_DATA_SIZE = 16_777_216


class Request:
    """Base of the request objects legacy plugins get (``apisix.runner.http.request.Request``)."""


class Response:
    """Base of the response objects legacy plugins get (``apisix.runner.http.response.Response``)."""


class Fields:
    """The dict behind 0.2.0's ``get_header``/``set_header``/``get_headers``/``set_headers`` (and args).

    Read from the runner's ``read()`` on first use (``collapsed``), or empty;
    ``value`` stays ``None`` until then, so an untouched request is left alone.
    The setters refuse empty keys and values, as the official runner did.
    """

    __slots__ = ("_read", "value")

    def __init__(self, read: Callable[[], Headers | Args] | None = None) -> None:
        self._read = read
        self.value: Any = None if read is not None else {}

    def all(self) -> Any:
        if self.value is None:
            assert self._read is not None
            self.value = collapsed(self._read())
        return self.value

    def get(self, key: str) -> Any:
        return self.all().get(key)

    def set(self, key: str, value: Any) -> bool:
        if not (key and value):
            return False
        self.all()[key] = value
        return True

    def replace(self, values: Any) -> bool:
        if not values:
            return False
        self.value = values
        return True


def collapsed(pairs: Headers | Args) -> dict[str, str]:
    """One key per name, as first spelled, holding the last value (how the official runner read them)."""
    out: dict[str, str] = {}
    for name, value in pairs:
        out[name] = value
    return out


def apply_sets(target: Headers | Args, wanted: object, what: str) -> None:
    """Set in ``target`` each entry of the ``wanted`` dict whose value is not already the last one there."""
    if not isinstance(wanted, Mapping):
        raise TypeError(f"{what} must be a dict, not {type(wanted).__name__}")
    for name, value in wanted.items():
        # Numbers travel as their text, as the official runners' users expect; anything
        # else that is not text (bytes, None...) is refused by the runner's own check.
        text = str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
        values = target.getlist(name)
        if not values or values[-1] != text:
            target[name] = text


def exploded(src_ip: str) -> str:
    """The address as the official runner gave it: IPv6 in full (``0000:...:0001``), IPv4 unchanged."""
    return ipaddress.ip_address(src_ip).exploded if ":" in src_ip else src_ip


def latin1(value: str | bytes) -> str:
    """APISIX's bytes one character per byte, as the official 0.2.0 ``get_var``/``get_body`` decoded them.

    Lossless: ``text.encode("latin-1")`` gives the bytes back. The runner's own
    text is UTF-8 with ``surrogateescape``, so re-encoding it that way recovers
    the bytes APISIX sent.
    """
    raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    return raw.decode("latin-1")
