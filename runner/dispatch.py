"""One frame in, one reply frame out: the protocol's decisions, with no I/O.

``Dispatcher.handle`` decodes a request, runs the plugins and encodes the
reply. It is the one place where errors become Err frames (type 0): every
``RunnerError`` maps to the code it carries, and anything else a plugin or the
runner raises maps to SERVICE_UNAVAILABLE. Fail closed: no error ever becomes
a reply that lets the request through.

The caller passes each frame with its ``Call`` (``phases.Call``): the call's
line to APISIX for ExtraInfo questions (``CallAbandoned`` from it propagates
so the caller sends nothing), and where the running plugin is noted for the
watchdog. A call whose plugin chain has an async method is returned as
``Pending``: the caller runs it on the event loop and sends what it gives.

A frame read on the event loop goes through ``handle(..., on_loop=True)``: a
call whose chain is async comes back as ``Pending``, anything else
(PrepareConf, a sync chain, an unknown token, a bad frame) as ``OffLoop``,
decoded once and run by a pool thread: no sync plugin code, ``configure``
included, runs on the loop.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Literal, Protocol, TypeAlias, overload

from . import aio, decode, encode, frame
from .errors import (
    CallAbandoned,
    ConfUnusable,
    DecodeError,
    PluginError,
    PluginStuck,
    RunnerError,
    TokenNotFound,
)
from .logs import Throttle, describe
from .metrics import Metrics
from .phases import (
    Call,
    Prepared,
    Watch,
    prepared,
    run_request_phase,
    run_request_phase_async,
    run_response_phase,
    run_response_phase_async,
)
from .plugins import Plugin, PluginRegistry, is_async
from .protocol import ErrCode, MessageType
from .watchdog import StuckCalls

log = logging.getLogger(__name__)


_PREPARE_CONF, _REQ_CALL, _RESP_CALL = (
    int(t) for t in (MessageType.PREPARE_CONF, MessageType.HTTP_REQ_CALL, MessageType.HTTP_RESP_CALL)
)
MAX_CONF_VALUE = 1 << 20  # characters of one plugin's conf in a route
CONFIGURE_TIMEOUT = 10.0  # seconds an async configure may take (PrepareConf is waited for under APISIX's lock)
_ERR_FRAMES = {code: frame.encode(MessageType.ERROR, encode.err(code)) for code in ErrCode}


def err_frame(code: ErrCode) -> bytes:
    """The Err frame (type 0) carrying ``code``."""
    return _ERR_FRAMES[code]


# Metric labels; anything else a peer sends counts as "other".
_TYPE_NAMES = {
    t.value: t.name.lower() for t in (MessageType.PREPARE_CONF, MessageType.HTTP_REQ_CALL, MessageType.HTTP_RESP_CALL)
}


class Pending:
    """A call that goes on as a task on the event loop (its chain has an async method).

    ``coroutine`` gives the reply frame, errors already turned into Err frames.
    """

    __slots__ = ("coroutine",)

    def __init__(self, coroutine: Coroutine[Any, Any, bytes]) -> None:
        self.coroutine = coroutine


class OffLoop:
    """A frame read on the event loop that a pool thread answers: ``run(*args)`` gives its reply.

    No plugin code has run for it yet; what was decoded is in ``args``.
    """

    __slots__ = ("run", "args")

    def __init__(self, run: Callable[..., bytes], *args: Any) -> None:
        self.run = run
        self.args = args


# A phase (``phases.run_request_phase``...), run on what was decoded for it; and its async form.
SyncPhase: TypeAlias = Callable[[Prepared, Any, Call, Watch], bytes]
AsyncPhase: TypeAlias = Callable[[Prepared, Any, Call, Watch], Coroutine[Any, Any, bytes]]


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
        self._watch = (metrics, self.stuck)  # what every phase gets after the call

    def reload(self, registry: PluginRegistry) -> None:
        """Use ``registry`` for PrepareConfs from now on; tokens already issued keep their plugins."""
        self.registry = registry
        self.cache.forget_keys()

    @overload
    def handle(
        self, type_: int, payload: decode.Buffer, call: Call, on_loop: Literal[False] = False
    ) -> bytes | Pending: ...
    @overload
    def handle(self, type_: int, payload: decode.Buffer, call: Call, on_loop: Literal[True]) -> Pending | OffLoop: ...

    def handle(
        self, type_: int, payload: decode.Buffer, call: Call, on_loop: bool = False
    ) -> bytes | Pending | OffLoop:
        """The reply frame for one request frame, or a ``Pending`` call for the event loop.

        ``on_loop``: the frame was read on the event loop, which runs no sync
        code: anything but a ``Pending`` comes back as ``OffLoop``, for a pool
        thread. Raises only ``CallAbandoned``.
        """
        # The phase runs right here: this is every call's path (plain ints: an
        # enum member costs a lookup, per call).
        phase: SyncPhase
        later: AsyncPhase
        req: Any  # a ReqCall or a RespCall: the kind its phase takes
        try:
            if type_ == _REQ_CALL:
                req = decode.req_call(payload)
                prepared = self._lookup(req, call)
                awaited, phase, later = prepared.async_request, run_request_phase, run_request_phase_async
            elif type_ == _RESP_CALL:
                req = decode.resp_call(payload)
                prepared = self._lookup(req, call)
                awaited, phase, later = prepared.async_response, run_response_phase, run_response_phase_async
            else:
                return OffLoop(self._other, type_, payload, call) if on_loop else self._other(type_, payload, call)
            if awaited:
                return Pending(self._finish(later(prepared, req, call, self._watch), type_))
            if on_loop:
                return OffLoop(self._run, type_, call, phase, prepared, req)
            reply = frame.encode(type_, phase(prepared, req, call, self._watch))
        except Exception as e:
            return OffLoop(self._failed, type_, e) if on_loop else self._failed(type_, e)
        if self.metrics is not None:
            self.metrics.call(_TYPE_NAMES[type_], "ok")
        return reply

    def _run(self, type_: int, call: Call, phase: SyncPhase, prepared: Prepared, req: Any) -> bytes:
        """A sync phase that ``handle`` found on the event loop, run on a pool thread."""
        try:
            reply = frame.encode(type_, phase(prepared, req, call, self._watch))
        except Exception as e:
            return self._failed(type_, e)
        self._count(type_, "ok")
        return reply

    def _other(self, type_: int, payload: decode.Buffer, call: Call) -> bytes:
        """The reply to a frame that is not an HTTP call: a PrepareConf, or a type we do not know."""
        try:
            if type_ != _PREPARE_CONF:
                raise DecodeError(f"unexpected message type {type_}")
            reply = frame.encode(_PREPARE_CONF, self._prepare_conf(payload, call))
        except Exception as e:
            return self._failed(type_, e)
        self._count(type_, "ok")
        return reply

    async def _finish(self, phase: Coroutine[Any, Any, bytes], type_: int) -> bytes:
        """A pending call's reply frame (the same rules as ``handle``)."""
        try:
            reply = frame.encode(type_, await phase)
        except Exception as e:
            return self._failed(type_, e)
        self._count(type_, "ok")
        return reply

    def _failed(self, type_: int, error: Exception) -> bytes:
        """The one place an error becomes an Err frame, with its log line and metric.

        ``CallAbandoned`` is raised again: the caller sends nothing.
        """
        if isinstance(error, CallAbandoned):
            self._count(type_, "abandoned")
            raise error
        if isinstance(error, RunnerError):
            if isinstance(error, PluginStuck):
                _stuck_throttle.log(log, logging.ERROR, error.plugin, "%s", error)
            elif isinstance(error, PluginError):
                extra = {"plugin": error.plugin, "request_id": error.request_id, "conf_token": error.conf_token}
                log.error("%s", error, exc_info=error.__cause__, extra=extra)
            elif isinstance(error, TokenNotFound):
                # Expected once per route after a restart; many per second is a peer guessing.
                _unknown_throttle.log(
                    log, logging.WARNING, "token", "%s (APISIX prepares the route again after this reply)", error
                )
            elif isinstance(error, ConfUnusable):
                log.debug("%s", error)  # logged once, when the conf was prepared
            else:
                log.warning("replying %s to a type-%d frame: %s", error.code.name, type_, error)
            code = error.code
        else:
            # exc_info given: for a frame read on the event loop this runs later, on a pool thread
            log.error(
                "internal error while handling a type-%d frame; replying SERVICE_UNAVAILABLE", type_, exc_info=error
            )
            code = ErrCode.SERVICE_UNAVAILABLE
        self._count(type_, code.name.lower())
        return _ERR_FRAMES[code]

    def _count(self, type_: int, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.call(_TYPE_NAMES.get(type_, "other"), outcome)

    def _prepare_conf(self, payload: decode.Buffer, call: Call) -> bytes:
        req = decode.prepare_conf(payload)
        built: list[Prepared] = []

        def build() -> tuple[Prepared, bool]:
            registry = self.registry
            prepared = self.prepare(req.conf, registry, call)
            built.append(prepared)
            # Built with plugins a reload has replaced meanwhile: valid, but not
            # to be found again by key (the next PrepareConf must use new code).
            return prepared, self.registry is registry

        token = self.cache.issue(req.key, req.conf, len(payload), build)
        # Still a token: a refused PrepareConf would make APISIX retry under
        # its global lock; the calls on this token fail instead. Said once at
        # ERROR when built, and at DEBUG each time the key finds it again.
        error = built[0].error if built else self._known_error(token)
        if error:
            level = logging.ERROR if built else logging.DEBUG
            log.log(level, "conf token %d (key %r) fails every call with 503: %s", token, req.key, error)
        return encode.prepare_conf(token)

    def prepare(
        self, conf: list[tuple[str, str]], registry: PluginRegistry | None = None, call: Call | None = None
    ) -> Prepared:
        """Instantiate and configure the plugins of one route conf, in order.

        Never raises, but ``PluginStuck`` (a plugin whose ``configure`` hangs is
        failed fast like its calls; no token is made). ``call`` is the
        PrepareConf's, for the watchdog to name the plugin configuring.
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
            if len(value) > MAX_CONF_VALUE:
                # Decoded JSON can take 20 times its text: a token must not hold that much.
                return _unusable(f"conf of plugin {name!r} is {len(value)} bytes, over the {MAX_CONF_VALUE} limit")
            try:
                config = value if cls.raw_config else json.loads(value) if value.strip() else None
            except (ValueError, RecursionError) as e:
                return _unusable(f"conf of plugin {name!r} is not JSON: {describe(e)}")
            if self.stuck.counts and self.stuck.over(name):
                raise PluginStuck(name, self.stuck.limit)
            if call is not None:
                call.plugin = name
            try:
                plugin = cls()
                plugin.config = config
                converted = plugin.configure(config)
                if is_async(cls.configure):
                    converted = aio.run(converted, CONFIGURE_TIMEOUT)
                if converted is not None:
                    plugin.config = converted
            except BaseException as e:  # whatever a plugin raises fails its conf, not the runner
                if call is not None and self.metrics is not None:  # counted at PrepareConf, not per rebuild
                    self.metrics.plugin_error(name)
                return _unusable(f"plugin {name!r} rejected its conf: {describe(e)}")
            finally:
                if call is not None:
                    call.plugin = None
            chain.append((name, plugin))
        return prepared(chain, registry)

    def _known_error(self, token: int) -> str | None:
        """Why the token a PrepareConf's key found fails its calls (``None``: it does not)."""
        try:
            return self.cache.get(token).error
        except TokenNotFound:  # gone since (another worker's token, expired): the calls will say so
            return None

    def _lookup(self, req: decode.ReqCall | decode.RespCall, call: Call) -> Prepared:
        """The prepared conf of ``req``'s token; ``call`` notes which request and token it runs."""
        call.request_id, call.conf_token = req.id, req.conf_token
        prepared = self.cache.get(req.conf_token)
        if prepared.error:
            raise ConfUnusable(f"conf token {req.conf_token} is unusable: {prepared.error}")
        return prepared


_stuck_throttle = Throttle(1.0)
_unknown_throttle = Throttle()
