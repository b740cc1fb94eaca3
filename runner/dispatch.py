"""One frame in, one reply frame out: the protocol's decisions, with no I/O.

``Dispatcher.handle`` decodes a request, runs the plugins and encodes the
reply. It is the one place where errors become Err frames (type 0): every
``RunnerError`` maps to the code it carries, and anything else a plugin or the
runner raises maps to SERVICE_UNAVAILABLE. Fail closed: no error ever becomes
a reply that lets the request through.

The caller passes each frame with its ``Call``: the call's line to APISIX for
ExtraInfo questions (``call.ask``; ``CallAbandoned`` from it propagates so the
caller sends nothing), where the dispatcher notes which plugin is running, for
the watchdog. A plugin with too many calls stuck past their deadline fails its
new calls fast (``StuckCalls``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import NamedTuple, Protocol

from . import decode, encode, frame
from .errors import (
    CallAbandoned,
    ConfUnusable,
    DecodeError,
    PluginError,
    PluginStuck,
    RunnerError,
    TokenNotFound,
)
from .http import ExtraInfo, Request, Response
from .logs import Throttle
from .metrics import Metrics
from .plugins import Plugin, PluginRegistry, call_filter, call_response_filter, has_filter, has_response_filter
from .protocol import ErrCode, InfoKind, MessageType
from .watchdog import StuckCalls

log = logging.getLogger(__name__)


class Call(Protocol):
    """What the dispatcher needs of the call it handles (the server's ``connection.Call``)."""

    plugin: str | None
    request_id: int
    conf_token: int

    def ask(self, question: bytes) -> decode.Buffer:
        """Send an ExtraInfo.Req payload on the call's connection; return the ExtraInfo.Resp payload."""
        ...


_PREPARE_CONF, _REQ_CALL, _RESP_CALL = (
    int(t) for t in (MessageType.PREPARE_CONF, MessageType.HTTP_REQ_CALL, MessageType.HTTP_RESP_CALL)
)
_ERR_FRAMES = {code: frame.encode(MessageType.ERROR, encode.err(code)) for code in ErrCode}


def err_frame(code: ErrCode) -> bytes:
    """The Err frame (type 0) carrying ``code``."""
    return _ERR_FRAMES[code]


# Metric labels; anything else a peer sends counts as "other".
_TYPE_NAMES = {
    t.value: t.name.lower() for t in (MessageType.PREPARE_CONF, MessageType.HTTP_REQ_CALL, MessageType.HTTP_RESP_CALL)
}

# Never passed to APISIX in a response's header list (Stop or response phase):
# nginx frames the body itself, and a stale Content-Length with another body
# breaks the response. APISIX applies Stop headers without an exclusion list.
_HOP_BY_HOP = frozenset(
    ("connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "content-length")
)
# APISIX silently ignores these in a Rewrite's resp_headers (protocol.md §5.3 step 4).
_RESP_HEADERS_IGNORED = frozenset(
    (
        "connection", "content-length", "transfer-encoding", "location", "server", "www-authenticate",
        "content-encoding", "content-type", "content-location", "content-language",
    )
)  # fmt: skip
_warned_ignored: set[str] = set()


class Prepared(NamedTuple):
    """A route conf ready to run: its plugin instances in order, or why it cannot run.

    It holds the registry its plugins came from, so that registry's modules stay
    importable for as long as the token lives (see ``loader``).
    """

    request_chain: tuple[tuple[str, Plugin], ...]
    response_chain: tuple[tuple[str, Plugin], ...]
    error: str | None = None
    registry: PluginRegistry | None = None


def _unusable(reason: str) -> Prepared:
    return Prepared((), (), reason)


class TokenStore(Protocol):
    """Where conf tokens live: this process's ``ConfCache``, or one shared by worker processes."""

    def issue(self, key: str, conf: object, size: int, build: Callable[[], tuple[Prepared, bool]]) -> int: ...
    def get(self, token: int) -> Prepared: ...
    def forget_keys(self) -> None: ...
    def __len__(self) -> int: ...
    @property
    def bytes(self) -> int: ...


class Dispatcher:
    """Turns request frames into reply frames with the current plugin registry and conf tokens."""

    def __init__(
        self,
        registry: PluginRegistry,
        cache: TokenStore,
        metrics: Metrics | None = None,
        stuck: StuckCalls | None = None,
    ) -> None:
        self.registry = registry
        self.cache = cache
        self.metrics = metrics
        self.stuck = stuck or StuckCalls(16)

    def reload(self, registry: PluginRegistry) -> None:
        """Use ``registry`` for PrepareConfs from now on; tokens already issued keep their plugins."""
        self.registry = registry
        self.cache.forget_keys()

    def handle(self, type_: int, payload: decode.Buffer, call: Call) -> bytes:
        """The reply frame for one request frame. Raises only ``CallAbandoned``."""
        outcome = "ok"
        try:
            if type_ == _REQ_CALL:  # (plain ints: an enum member costs a lookup, per call)
                req = decode.req_call(payload)
                call.request_id, call.conf_token = req.id, req.conf_token
                phase = run_request_phase(self._lookup(req), req, call, self.metrics, self.stuck)
                return frame.encode(_REQ_CALL, phase)
            if type_ == _PREPARE_CONF:
                return frame.encode(_PREPARE_CONF, self._prepare_conf(payload))
            if type_ == _RESP_CALL:
                resp = decode.resp_call(payload)
                call.request_id, call.conf_token = resp.id, resp.conf_token
                phase = run_response_phase(self._lookup(resp), resp, call, self.metrics, self.stuck)
                return frame.encode(_RESP_CALL, phase)
            raise DecodeError(f"unexpected message type {type_}")
        except CallAbandoned:
            outcome = "abandoned"
            raise
        except RunnerError as e:
            outcome = e.code.name.lower()
            if isinstance(e, PluginStuck):
                _stuck_throttle.log(log, logging.ERROR, e.plugin, "%s", e)
            elif isinstance(e, PluginError):
                extra = {"plugin": e.plugin, "request_id": e.request_id, "conf_token": e.conf_token}
                log.error("%s", e, exc_info=e.__cause__, extra=extra)
            elif isinstance(e, (TokenNotFound, ConfUnusable)):
                # Expected after a restart, or a bad conf logged once when it was prepared.
                log.debug("%s", e)
            else:
                log.warning("replying %s to a type-%d frame: %s", e.code.name, type_, e)
            return _ERR_FRAMES[e.code]
        except Exception:
            outcome = "service_unavailable"
            log.exception("internal error while handling a type-%d frame; replying SERVICE_UNAVAILABLE", type_)
            return _ERR_FRAMES[ErrCode.SERVICE_UNAVAILABLE]
        finally:
            if self.metrics is not None:
                self.metrics.call(_TYPE_NAMES.get(type_, "other"), outcome)

    # --- PrepareConf -------------------------------------------------------

    def _prepare_conf(self, payload: decode.Buffer) -> bytes:
        req = decode.prepare_conf(payload)
        failed: list[str] = []

        def build() -> tuple[Prepared, bool]:
            registry = self.registry
            prepared = self.prepare(req.conf, registry)
            if prepared.error:
                failed.append(prepared.error)
            # Built with plugins a reload has replaced meanwhile: valid, but not
            # to be found again by key (the next PrepareConf must use new code).
            return prepared, self.registry is registry

        token = self.cache.issue(req.key, req.conf, len(payload), build)
        if failed:
            # Still a token: a refused PrepareConf would make APISIX retry
            # under its global lock; the calls on this token fail instead.
            log.error("conf token %d (key %r) fails every call with 503: %s", token, req.key, failed[0])
        return encode.prepare_conf(token)

    def prepare(self, conf: list[tuple[str, str]], registry: PluginRegistry | None = None) -> Prepared:
        """Instantiate and configure the plugins of one route conf, in order. Never raises.

        Conf values are never logged or echoed (they hold secrets): a rejection
        names the plugin and the exception only.
        """
        registry = registry or self.registry
        chain: list[tuple[str, Plugin]] = []
        for given, value in conf:
            cls = registry.get(given)
            name = registry.canonical(given)
            if cls is None or name is None:
                return _unusable(f"unknown plugin {given!r} (loaded: {', '.join(registry.names()) or 'none'})")
            try:
                config = value if cls.raw_config else json.loads(value) if value.strip() else None
            except (ValueError, RecursionError) as e:
                return _unusable(f"conf of plugin {name!r} is not JSON: {type(e).__name__}: {e}")
            try:
                plugin = cls()
                plugin.config = config
                converted = plugin.configure(config)
                if converted is not None:
                    plugin.config = converted
            except BaseException as e:  # whatever a plugin raises fails its conf, not the runner
                return _unusable(f"plugin {name!r} rejected its conf: {type(e).__name__}: {e}")
            chain.append((name, plugin))
        return Prepared(
            tuple(p for p in chain if has_filter(p[1])),
            tuple(p for p in chain if has_response_filter(p[1])),
            registry=registry,
        )

    def _lookup(self, call: decode.ReqCall | decode.RespCall) -> Prepared:
        prepared = self.cache.get(call.conf_token)
        if prepared.error:
            raise ConfUnusable(f"conf token {call.conf_token} is unusable: {prepared.error}")
        return prepared


_stuck_throttle = Throttle(1.0)


def _run(
    name: str,
    what: str,
    req: decode.ReqCall | decode.RespCall,
    call: Call,
    metrics: Metrics | None,
    stuck: StuckCalls | None,
    fn: Callable[..., object],
    *args: object,
) -> object:
    """Call one plugin method; whatever it raises becomes ``PluginError`` (except ``CallAbandoned``)."""
    if stuck is not None and stuck.over(name):
        raise PluginStuck(name, stuck.limit)
    started = time.perf_counter() if metrics is not None else 0.0
    failed = True
    call.plugin = name
    try:
        result = fn(*args)
        failed = False
        return result
    except (CallAbandoned, DecodeError):
        # Not the plugin's fault: APISIX closed the connection, or sent bytes
        # (headers decoded on first use, an ExtraInfo answer) that do not decode.
        failed = False
        raise
    except BaseException as e:  # a plugin's sys.exit() or KeyboardInterrupt ends its call, not the process
        message = f"plugin {name!r} raised {type(e).__name__} in {what}: {e}"
        raise PluginError(name, message, req.id, req.conf_token) from e
    finally:
        call.plugin = None
        if metrics is not None:
            metrics.plugin(name, time.perf_counter() - started, failed)


def run_request_phase(
    prepared: Prepared,
    req: decode.ReqCall,
    call: Call,
    metrics: Metrics | None = None,
    stuck: StuckCalls | None = None,
) -> bytes:
    """Run the request-phase chain; the HTTPReqCall.Resp payload. Plugin failures raise ``PluginError``."""
    if not prepared.request_chain:
        return encode.no_action(req.id)
    extra = ExtraInfo(_asker(call, metrics))
    request = Request(req.id, req.method, lambda: req.path, lambda: req.src_ip, req.headers, req.args, extra)
    response = Response(200, (), extra)
    for name, plugin in prepared.request_chain:
        if _run(name, "filter", req, call, metrics, stuck, call_filter, plugin, request, response):
            headers = [(n, v) for n, v in response.headers.items() if n.lower() not in _HOP_BY_HOP]
            return encode.stop(req.id, response.status_code, headers, response.body_for_client)
    return _rewrite(req, request, response)


def run_response_phase(
    prepared: Prepared,
    resp: decode.RespCall,
    call: Call,
    metrics: Metrics | None = None,
    stuck: StuckCalls | None = None,
) -> bytes:
    """Run the response-phase chain; the HTTPRespCall.Resp payload. Plugin failures raise ``PluginError``."""
    response = Response(resp.status, lambda: resp.headers, ExtraInfo(_asker(call, metrics)), upstream=True)
    for name, plugin in prepared.response_chain:
        _run(name, "response_filter", resp, call, metrics, stuck, call_response_filter, plugin, response)
    # Always the full header list: an empty one makes APISIX copy the
    # upstream's headers (minus Content-Type and friends) instead.
    headers: list[tuple[str, str | None]] = [
        (n, v) for n, v in response.headers.items() if n.lower() not in _HOP_BY_HOP
    ]
    # Headers the plugins removed also get a deletion entry, so that removing
    # the last one cannot turn into "copy every upstream header".
    headers += [(n, None) for n, values in response.headers.changes() if values is None]
    status = response.status_code if response.status_code != resp.status else 0
    return encode.resp_call(resp.id, status, headers, response.body_for_client)


def _ignored_by_apisix(name: str) -> bool:
    if name.lower() not in _RESP_HEADERS_IGNORED:
        return False
    if name.lower() not in _warned_ignored:  # once per name: a plugin bug, not per-request news
        _warned_ignored.add(name.lower())
        log.warning(
            "not sending response header %s with a Rewrite: APISIX ignores it there "
            "(set it in a Stop or in the response phase instead)",
            name,
        )
    return True


def _asker(call: Call, metrics: Metrics | None) -> Callable[[InfoKind, str], bytes | None]:
    def ask(kind: InfoKind, name: str) -> bytes | None:
        if metrics is not None:
            metrics.extra_info(kind.name.lower())
        return decode.extra_info(call.ask(encode.extra_info(kind, name)))

    return ask


def _rewrite(req: decode.ReqCall, request: Request, response: Response) -> bytes:
    """Only what the plugins changed, so untouched (and repeated) headers stay as they were."""
    path, header_changes, arg_changes = request.changes()
    # APISIX *sets* each request header entry (last one wins), so several
    # values travel as one list value.
    headers: list[tuple[str, str | None]] = [
        (name, values if values is None else values[0] if len(values) == 1 else _joined(name, values))
        for name, values in header_changes
    ]
    # APISIX: first entry of a name replaces its values, later ones append.
    args: list[tuple[str, str | None]] = [
        (name, value) for name, values in arg_changes for value in ((None,) if values is None else values)
    ]
    resp_headers = (
        [(n, v) for n, v in response.headers.items() if not _ignored_by_apisix(n)] if response.headers else []
    )
    body = request.body_for_upstream
    if path is None and not headers and not args and not resp_headers and not body:
        return encode.no_action(req.id)
    return encode.rewrite(req.id, path=path, headers=headers, args=args, resp_headers=resp_headers, body=body or None)


def _joined(name: str, values: list[str]) -> str:
    return ("; " if name.lower() == "cookie" else ", ").join(values)
