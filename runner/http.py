"""The objects a plugin reads and changes for one call: ``Request``, ``Response``, ``ExtraInfo``.

Rules:

* Attributes, not getters and setters. What a plugin changed is found
  afterwards by comparing with a snapshot of what APISIX sent
  (``Request.changes``, ``Headers.changes``), so a plugin that only reads
  changes nothing.
* Nothing of a request is decoded before a plugin reads it: the constructor
  takes each part either as a value or as a function returning what APISIX
  sent, called when the part is first used (for the runner, the decoding
  methods of the call it received; see ``dispatch``).
* Every value a plugin sets is checked where it is set, so a bad one raises
  in the plugin's own line (``TypeError`` for a wrong type, ``ValueError`` for
  a wrong value) instead of reaching the upstream or failing the reply.
  What APISIX sent is not checked again: its path, and its headers and args
  as whole mappings, can always be assigned back.
* Text is ``str``. Bytes from nginx are decoded as UTF-8 with
  ``surrogateescape`` and encoded back the same way, so values in any
  encoding survive a round trip unchanged.
* ExtraInfo (variables, bodies) is asked through the call's ``ExtraInfo``
  (``extra``), once per call, kind and name; this module does no I/O.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from typing import Protocol

from .extra import ExtraInfo
from .frame import MAX_PAYLOAD
from .headers import UNENCODABLE, Args, Headers, Load, Pairs, refuse_character
from .protocol import InfoKind

__all__ = ["MAX_BODY", "ExtraInfo", "InfoKind", "Request", "Response"]


#: The largest body a plugin may set: one frame, minus room for the rest of the
#: reply (its tables, headers, path and args).
MAX_BODY = MAX_PAYLOAD - 64 * 1024

# nginx escapes the path it is given, control characters included, but one in
# a path a plugin sets is a bug better caught at once.
_REFUSED_IN_PATHS = re.compile(f"[\x00-\x1f\x7f-\x9f\u2028\u2029{UNENCODABLE}]")


class SentRequest(Protocol):
    """What APISIX sent of a request, each part decoded when first read (``decode.ReqCall``)."""

    id: int
    method: str

    def path(self) -> str: ...
    def src_ip(self) -> bytes: ...
    def headers(self) -> list[tuple[str, str]]: ...
    def args(self) -> list[tuple[str, str]]: ...


def _checked_path(value: object) -> str:
    # APISIX sends the path escaped and treats "" as present: an empty or
    # relative path would reach the upstream as a broken request line.
    if type(value) is not str:
        raise TypeError(f"path must be str (a decoded path), not {type(value).__name__}: {value!r}")
    if not value.startswith("/"):
        raise ValueError(f"path must be a decoded absolute path starting with '/': {value!r}")
    if not value.isprintable():
        bad = _REFUSED_IN_PATHS.search(value)
        if bad is not None:
            raise refuse_character(value, bad.group(), "path")
    return value


def _body_bytes(value: object) -> bytes:
    """``value`` as the bytes a reply carries, if it can be a body."""
    if isinstance(value, str):
        try:
            raw = value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError as e:
            raise refuse_character(value[:80], value[e.start], "body") from None
    elif isinstance(value, (bytes, bytearray)):
        raw = bytes(value)
    else:
        raise TypeError(f"body must be str or bytes, not {type(value).__name__}")
    if len(raw) > MAX_BODY:
        raise ValueError(f"body of {len(raw)} bytes exceeds the {MAX_BODY}-byte limit of one reply")
    return raw


def _checked_status(value: object) -> int:
    # The wire field is 16 bits: 65939 would silently reach the client as 403.
    if type(value) is not int:
        raise TypeError(f"status_code must be an HTTP status (an int), not {type(value).__name__}: {value!r}")
    if not 100 <= value <= 599:
        raise ValueError(f"status_code must be an HTTP status (100-599): {value!r}")
    return value


class _Message:
    """What a request and a response share: lazily built ``headers``, a settable body, ``var()``."""

    __slots__ = ("deadline", "_headers", "_body", "_new_body", "_extra")

    _headers: Headers | Load
    _body: bytes | str | None
    _new_body: bytes | None
    _extra: ExtraInfo

    @property
    def headers(self) -> Headers:
        """The headers: built on first use from what the constructor kept (pairs, or a loader);
        assigning any pairs replaces them, still compared with what APISIX sent."""
        headers = self._headers
        if not isinstance(headers, Headers):
            headers = self._headers = Headers(load=headers)
        return headers

    @headers.setter
    def headers(self, value: Pairs) -> None:
        self._headers = Headers(value, load=self.headers.sent)

    def _set_body(self, value: bytes | str) -> None:
        self._new_body = _body_bytes(value)
        self._body = value if isinstance(value, str) else self._new_body

    def _asked_body(self, kind: InfoKind) -> bytes | str:
        """The body, asked of APISIX (as ``kind``) the first time: ``b""`` if it sent none."""
        if self._body is None:
            self._body = self._extra.ask(kind) or b""
        return self._body

    async def _fetched_body(self, kind: InfoKind) -> bytes | str:
        """``_asked_body`` without blocking the event loop."""
        if self._body is None:
            self._body = await self._extra.fetch(kind) or b""
        return self._body

    def var(self, name: str) -> str | None:
        """An nginx/APISIX variable (``host``, ``remote_addr``, ``route_id``, ``cookie_x``...).

        ``None`` when APISIX has no value for it, ``""`` when it is empty.
        """
        return self._extra.var(name)

    async def fetch_var(self, name: str) -> str | None:
        """``var`` for async plugins: asks APISIX without blocking the event loop."""
        return await self._extra.fetch_var(name)


class Request(_Message):
    """The client request as APISIX sees it at this phase; change it to rewrite it.

    ``path`` (decoded, no query string), ``headers`` and ``args`` are
    assignable; what changed is sent upstream as a Rewrite. ``body`` is asked
    of APISIX the first time it is read; assigning it replaces the body sent
    upstream.

    Each of ``path``, ``src_ip`` (text, or the 4 or 16 bytes APISIX sends),
    ``headers`` and ``args`` is given either as a value (a path, headers or
    args given so are checked as if a plugin set them; a ``Headers`` or
    ``Args`` is used as is) or as a function returning what APISIX sent,
    called when a plugin first uses that part: the runner passes the decoding
    methods of the call it received. ``extra`` answers ``var()`` and the body;
    ``body`` stands for the body APISIX would send.
    """

    __slots__ = ("id", "method", "_path", "_sent_path", "_src_ip", "_args")

    def __init__(
        self,
        id: int = 0,
        method: str = "GET",
        path: str | Callable[[], str] = "/",
        src_ip: str | bytes | Callable[[], bytes] = "127.0.0.1",
        headers: Pairs | Load = (),
        args: Pairs | Load = (),
        extra: ExtraInfo | None = None,
        *,
        body: bytes | str | None = None,
    ) -> None:
        self.id = id
        self.method = method
        #: When the runner gives up on this call (``time.monotonic()`` seconds; ``call_timeout``
        #: after it arrived): ``request.deadline - time.monotonic()`` is the time left.
        self.deadline = math.inf
        self._sent_path = path if callable(path) else _checked_path(path)
        self._path: str | None = None  # set by a plugin
        self._src_ip = src_ip
        self._headers = headers if callable(headers) or isinstance(headers, Headers) else Headers(headers)
        self._args = args if callable(args) or isinstance(args, Args) else Args(args)
        if body is not None:
            _body_bytes(body)
        self._body = body
        self._new_body: bytes | None = None
        self._extra = extra if extra is not None else ExtraInfo()

    @classmethod
    def from_apisix(cls, sent: SentRequest, extra: ExtraInfo, deadline: float) -> Request:
        """The request of a call the runner received: ``Request(sent.id, sent.method, <sent's parts>, extra)``.

        The runner's own constructor, on every call's path: what APISIX sent
        is not checked, so nothing needs to be looked at before a plugin does.
        """
        request = cls.__new__(cls)
        request.id, request.method, request.deadline = sent.id, sent.method, deadline
        request._sent_path, request._path = sent.path, None
        request._src_ip = sent.src_ip
        request._headers, request._args = sent.headers, sent.args
        request._body = request._new_body = None
        request._extra = extra
        return request

    def _original_path(self) -> str:
        sent = self._sent_path
        if callable(sent):
            sent = self._sent_path = sent()
        return sent

    @property
    def path(self) -> str:
        path = self._path
        return path if path is not None else self._original_path()

    @path.setter
    def path(self, value: str) -> None:
        try:
            self._path = _checked_path(value)
        except ValueError:
            if value != self._original_path():  # what APISIX sent (``*``, ``abc``) may be set back
                raise
            self._path = value

    @property
    def src_ip(self) -> str:
        """The client's address (IPv4 or IPv6) as text; ``""`` if APISIX sent none."""
        ip = self._src_ip
        if callable(ip):
            ip = ip()
        if isinstance(ip, bytes):
            ip = str(ipaddress.ip_address(ip)) if len(ip) in (4, 16) else ""
        self._src_ip = ip
        return ip

    @property
    def args(self) -> Args:
        """The query args, as ``headers``."""
        args = self._args
        if not isinstance(args, Args):
            args = self._args = Args(load=args)
        return args

    @args.setter
    def args(self, value: Pairs) -> None:
        self._args = Args(value, load=self.args.sent)

    def changes(self) -> tuple[str | None, list[tuple[str, list[str] | None]], list[tuple[str, list[str] | None]]]:
        """``(new path or None, header changes, arg changes)`` against what APISIX sent (see ``Headers.changes``)."""
        path = self._path
        if path is not None and path == self._original_path():
            path = None
        headers = self._headers.changes() if isinstance(self._headers, Headers) else []
        args = self._args.changes() if isinstance(self._args, Args) else []
        return path, headers, args

    @property
    def body(self) -> bytes | str:
        """The request body (``b""`` if none), asked of APISIX on first read; assign ``str`` or ``bytes``."""
        return self._asked_body(InfoKind.REQ_BODY)

    @body.setter
    def body(self, value: bytes | str) -> None:
        self._set_body(value)

    @property
    def body_for_upstream(self) -> bytes | None:
        """The body a plugin assigned, which replaces the one sent upstream; ``None`` if none was assigned."""
        return self._new_body

    async def fetch_body(self) -> bytes | str:
        """``body`` for async plugins: asks APISIX without blocking the event loop."""
        return await self._fetched_body(InfoKind.REQ_BODY)

    def __repr__(self) -> str:
        return f"<Request id={self.id} {self.method} {self.path!r}>"


class Response(_Message):
    """The response a plugin produces (request phase) or the upstream's (response phase).

    Request phase: set ``status_code``, ``headers`` and ``body`` and call
    ``self.stop()`` to answer the client directly; without ``stop()``,
    ``headers`` are added to the client's response while the request goes on
    upstream. Response phase (``upstream=True``): ``status_code`` and
    ``headers`` are the upstream's, as APISIX sent them (not checked), and
    ``body`` is asked of APISIX on first read; change any of them.

    ``headers`` are given as for ``Request``. ``body`` is the body to answer
    with (request phase) or stands for the upstream's (response phase).
    """

    __slots__ = ("_status", "_upstream")

    def __init__(
        self,
        status_code: int = 200,
        headers: Pairs | Load = (),
        extra: ExtraInfo | None = None,
        *,
        body: bytes | str | None = None,
        upstream: bool = False,
    ) -> None:
        self.deadline = math.inf  #: as ``Request.deadline``
        self._status = status_code if upstream else _checked_status(status_code)
        self._headers = headers if callable(headers) or isinstance(headers, Headers) else Headers(headers)
        self._body = body
        self._new_body = None if upstream or body is None else _body_bytes(body)
        self._upstream = upstream
        self._extra = extra if extra is not None else ExtraInfo()

    @classmethod
    def for_call(
        cls, status: int, headers: Headers | Load, upstream: bool, extra: ExtraInfo, deadline: float
    ) -> Response:
        """``Response(status, headers, extra, upstream=upstream)`` for a call the runner received, unchecked
        (its own constructor, on every call's path): a new ``Headers()`` in the request phase, in the
        response phase a function returning what APISIX sent, called when first read."""
        response = cls.__new__(cls)
        response.deadline, response._status, response._upstream = deadline, status, upstream
        response._headers = headers
        response._body = response._new_body = None
        response._extra = extra
        return response

    @property
    def status_code(self) -> int:
        return self._status

    @status_code.setter
    def status_code(self, value: int) -> None:
        self._status = _checked_status(value)

    @property
    def body(self) -> bytes | str | None:
        """The body: assign ``str`` or ``bytes`` to answer with it; in the response phase,
        reading it first asks APISIX for the upstream's (``b""`` if none)."""
        return self._asked_body(InfoKind.RESP_BODY) if self._upstream else self._body

    @body.setter
    def body(self, value: bytes | str) -> None:
        self._set_body(value)

    @property
    def body_for_client(self) -> bytes | None:
        """The body the reply must carry to the client, or ``None`` for none.

        Request phase: the body given or assigned (the Stop's body). Response
        phase: only a body a plugin assigned; ``None`` lets the upstream's pass.
        """
        return self._new_body

    async def fetch_body(self) -> bytes | str | None:
        """``body`` for async plugins: asks APISIX without blocking the event loop."""
        return await self._fetched_body(InfoKind.RESP_BODY) if self._upstream else self._body

    def __repr__(self) -> str:
        return f"<Response {self._status}>"
