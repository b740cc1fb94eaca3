"""Running a route's plugin chain for one call, and turning what the plugins did into a reply payload.

Rules:

* The request phase runs each plugin's ``filter`` in conf order; the first
  ``stop()`` answers the client (Stop) and ends the chain; otherwise the
  changes of all plugins go upstream as one Rewrite, carrying only what
  changed, or "no action" when nothing did.
* The response phase runs each ``response_filter`` in order; the reply always
  carries the full header list the client should see (minus hop-by-hop
  headers), with deletion entries for removed headers, the status only if it
  changed and the body only if one was set.
* Whatever a plugin raises becomes ``PluginError`` (any ``BaseException``:
  a plugin's ``sys.exit()`` ends its call, not the process), except
  ``CallAbandoned`` and ``DecodeError``, which are not the plugin's fault.
* A chain with an async method runs as a coroutine (``run_*_async``) on the
  event loop: async methods are awaited there, sync ones run off the loop
  (``aio.sync_step``). The same rules and the same reply apply.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple, NoReturn, Protocol

from . import aio, decode, encode
from .errors import CallAbandoned, DecodeError, PluginError, PluginStuck
from .headers import Headers
from .http import ExtraInfo, Request, Response
from .logs import text_of
from .metrics import Metrics
from .plugins import (
    Plugin,
    PluginRegistry,
    call_filter,
    call_filter_async,
    call_response_filter,
    call_response_filter_async,
    is_async,
)
from .protocol import InfoKind
from .watchdog import StuckCalls

log = logging.getLogger(__name__)


class Call(Protocol):
    """What the phases need of the call they run (the server's ``connection.Call``)."""

    plugin: str | None
    request_id: int
    conf_token: int
    deadline: float  # time.monotonic() at which the call is given up

    @property
    def given_up(self) -> bool:
        """Whether the call was given up at its deadline (no further plugin may run for it)."""
        ...

    def ask(self, question: bytes) -> decode.Buffer:
        """Send an ExtraInfo.Req payload on the call's connection; return the ExtraInfo.Resp payload."""
        ...

    async def ask_async(self, question: bytes) -> decode.Buffer:
        """``ask`` for code on the event loop."""
        ...


class Prepared(NamedTuple):
    """A route conf ready to run: its plugin instances in order, or why it cannot run.

    It holds the registry its plugins came from, so that registry's modules stay
    importable for as long as the token lives (see ``loader``).
    """

    request_chain: tuple[tuple[str, Plugin], ...]
    response_chain: tuple[tuple[str, Plugin], ...]
    error: str | None = None
    registry: PluginRegistry | None = None
    async_request: bool = False  # the request chain has an async filter: it runs on the event loop
    async_response: bool = False
    # Per plugin of each chain: whether its method is a coroutine function
    # (asked once here: ``inspect`` costs several calls per plugin and call).
    request_awaited: tuple[bool, ...] = ()
    response_awaited: tuple[bool, ...] = ()


# Never passed to APISIX in a response's header list (Stop or response phase):
# nginx frames the body itself, and a stale Content-Length with another body
# breaks the response. APISIX applies Stop headers without an exclusion list.
_HOP_BY_HOP = frozenset(
    ("connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "content-length")
)
# APISIX silently ignores these in a Rewrite's resp_headers (docs/protocol.md, Rewrite).
_RESP_HEADERS_IGNORED = frozenset(
    (
        "connection", "content-length", "transfer-encoding", "location", "server", "www-authenticate",
        "content-encoding", "content-type", "content-location", "content-language",
    )
)  # fmt: skip
_warned_ignored: set[str] = set()


def prepared(chain: list[tuple[str, Plugin]], registry: PluginRegistry) -> Prepared:
    request_chain = tuple(p for p in chain if type(p[1]).filter is not Plugin.filter)
    response_chain = tuple(p for p in chain if type(p[1]).response_filter is not Plugin.response_filter)
    request_awaited = tuple(is_async(type(p).filter) for _, p in request_chain)
    response_awaited = tuple(is_async(type(p).response_filter) for _, p in response_chain)
    return Prepared(
        request_chain,
        response_chain,
        registry=registry,
        async_request=any(request_awaited),
        async_response=any(response_awaited),
        request_awaited=request_awaited,
        response_awaited=response_awaited,
    )


# --- one plugin method ------------------------------------------------------------

# What every step of a phase reports to (``Dispatcher`` passes its own): the
# metrics, if kept, and the stuck-call counts. One tuple made once, not per call.
Watch = tuple[Metrics | None, StuckCalls | None]
_UNWATCHED: Watch = (None, None)
_Req = decode.ReqCall | decode.RespCall
_Step = Callable[..., Any]  # call_filter and friends


def _run(name: str, what: str, req: _Req, call: Call, watch: Watch, fn: _Step, *args: object) -> Any:
    """Call one plugin method, as the module docstring says.

    ``_admit`` and ``_ran`` are written out here: this runs for each plugin
    of every sync call, and the two calls were 0.5-0.8 µs of it
    (``bench/inproc.py``, 200 rounds, x 57cd76a: rewrite 1.09 -> 1.05, var 1.02 -> 0.97).
    """
    metrics, stuck = watch
    if call.given_up or stuck is not None and stuck.counts and stuck.over(name):
        raise _refusal(name, call, stuck)
    call.plugin = name
    started = time.perf_counter() if metrics is not None else 0.0
    try:
        result = fn(*args)
    except BaseException as e:
        _failed(name, what, req, call, watch, started, e, on_loop=False)
    call.plugin = None
    if metrics is not None:
        metrics.plugin(name, time.perf_counter() - started, False)
    return result


async def _run_async(
    name: str, what: str, req: _Req, call: Call, watch: Watch, awaited: bool, fn: _Step, *args: object
) -> Any:
    """``_run`` on the event loop: ``fn`` is awaited (``awaited``), or (sync) run off the loop."""
    started = _admit(name, call, watch)
    try:
        result = await (fn(*args) if awaited else aio.sync_step(fn, *args))
    except BaseException as e:
        _failed(name, what, req, call, watch, started, e, on_loop=True)
    _ran(name, call, watch[0], started, False)
    return result


def _admit(name: str, call: Call, watch: Watch) -> float:
    """Check that the plugin may run, note it as running; its start time (0 without metrics)."""
    metrics, stuck = watch
    if call.given_up or stuck is not None and stuck.counts and stuck.over(name):
        raise _refusal(name, call, stuck)
    call.plugin = name
    return time.perf_counter() if metrics is not None else 0.0


def _refusal(name: str, call: Call, stuck: StuckCalls | None) -> CallAbandoned | PluginStuck:
    """Why the plugin may not run: its call was given up, or it has too many stuck calls."""
    if call.given_up or stuck is None:
        return CallAbandoned(f"the call was given up: plugin {name!r} is not run")
    return PluginStuck(name, stuck.limit)


def _failed(
    name: str, what: str, req: _Req, call: Call, watch: Watch, started: float, error: BaseException, on_loop: bool
) -> NoReturn:
    """Raise what the plugin method's ``error`` becomes (itself, if not the plugin's fault)."""
    failed = _plugins_fault(error, on_loop)
    _ran(name, call, watch[0], started, failed)
    if not failed:
        raise error
    raise _failure(name, what, req, error) from error


def _plugins_fault(error: BaseException, on_loop: bool) -> bool:
    if isinstance(error, (CallAbandoned, DecodeError)):
        # Not the plugin's fault: APISIX closed the connection, or sent bytes
        # (headers decoded on first use, an ExtraInfo answer) that do not decode.
        return False
    if on_loop and isinstance(error, asyncio.CancelledError):
        task = asyncio.current_task()
        return task is None or not task.cancelling()  # cancelled by the call's deadline: the connection answers
    return True


def _ran(name: str, call: Call, metrics: Metrics | None, started: float, failed: bool) -> None:
    call.plugin = None
    if metrics is not None:
        metrics.plugin(name, time.perf_counter() - started, failed)


def _failure(name: str, what: str, req: decode.ReqCall | decode.RespCall, error: BaseException) -> PluginError:
    message = f"plugin {name!r} raised {type(error).__name__} in {what}: {text_of(error)}"
    return PluginError(name, message, req.id, req.conf_token)


# --- the request phase --------------------------------------------------------------


def run_request_phase(prepared: Prepared, req: decode.ReqCall, call: Call, watch: Watch = _UNWATCHED) -> bytes:
    """Run the request-phase chain; the HTTPReqCall.Resp payload. Plugin failures raise ``PluginError``."""
    if not prepared.request_chain:
        return encode.no_action(req.id)
    # (Written out here and in the async form rather than in a helper: one call less per
    # request; bench/cachegrind.py, stop: 1.6 % fewer instructions.)
    extra, deadline = _extra_info(call, watch[0], False), call.deadline
    request = Request.from_apisix(req, extra, deadline)
    response = Response.for_call(200, Headers(), False, extra, deadline)
    for name, plugin in prepared.request_chain:
        if _run(name, "filter", req, call, watch, call_filter, plugin, request, response):
            return _stop(req, response)
    return _rewrite(req, request, response)


async def run_request_phase_async(
    prepared: Prepared, req: decode.ReqCall, call: Call, watch: Watch = _UNWATCHED
) -> bytes:
    """``run_request_phase`` for a chain with an async filter."""
    extra, deadline = _extra_info(call, watch[0], True), call.deadline
    request = Request.from_apisix(req, extra, deadline)
    response = Response.for_call(200, Headers(), False, extra, deadline)
    for (name, plugin), awaited in zip(prepared.request_chain, prepared.request_awaited, strict=True):
        step = call_filter_async if awaited else call_filter
        if await _run_async(name, "filter", req, call, watch, awaited, step, plugin, request, response):
            return _stop(req, response)
    return _rewrite(req, request, response)


def _stop(req: decode.ReqCall, response: Response) -> bytes:
    headers = [(n, v) for n, v in response.headers.items() if n.lower() not in _HOP_BY_HOP]
    return encode.stop(req.id, response.status_code, headers, response.body_for_client)


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
    added = response.headers
    resp_headers = [(n, v) for n, v in added.items() if not _ignored_by_apisix(n)] if added else []
    body = request.body_for_upstream
    if path is None and not headers and not args and not resp_headers and not body:
        return encode.no_action(req.id)
    return encode.rewrite(req.id, path=path, headers=headers, args=args, resp_headers=resp_headers, body=body or None)


def _joined(name: str, values: list[str]) -> str:
    return ("; " if name.lower() == "cookie" else ", ").join(values)


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


# --- the response phase -------------------------------------------------------------


def _upstream_response(resp: decode.RespCall, call: Call, metrics: Metrics | None, on_loop: bool = False) -> Response:
    # (``copy``: a C callable that hands the decoded headers over when first read)
    return Response.for_call(resp.status, resp.headers.copy, True, _extra_info(call, metrics, on_loop), call.deadline)


def run_response_phase(prepared: Prepared, resp: decode.RespCall, call: Call, watch: Watch = _UNWATCHED) -> bytes:
    """Run the response-phase chain; the HTTPRespCall.Resp payload. Plugin failures raise ``PluginError``."""
    response = _upstream_response(resp, call, watch[0])
    for name, plugin in prepared.response_chain:
        _run(name, "response_filter", resp, call, watch, call_response_filter, plugin, response)
    return _client_response(resp, response)


async def run_response_phase_async(
    prepared: Prepared, resp: decode.RespCall, call: Call, watch: Watch = _UNWATCHED
) -> bytes:
    """``run_response_phase`` for a chain with an async response_filter."""
    response = _upstream_response(resp, call, watch[0], on_loop=True)
    for (name, plugin), awaited in zip(prepared.response_chain, prepared.response_awaited, strict=True):
        step = call_response_filter_async if awaited else call_response_filter
        await _run_async(name, "response_filter", resp, call, watch, awaited, step, plugin, response)
    return _client_response(resp, response)


def _client_response(resp: decode.RespCall, response: Response) -> bytes:
    # Always the full header list: an empty one makes APISIX copy the
    # upstream's headers (minus Content-Type and friends) instead.
    current = response.headers
    headers: list[tuple[str, str | None]] = [(n, v) for n, v in current.items() if n.lower() not in _HOP_BY_HOP]
    # Headers the plugins removed also get a deletion entry, so that removing
    # the last one cannot turn into "copy every upstream header".
    headers += [(n, None) for n, values in current.changes() if values is None]
    status = response.status_code
    if status == resp.status:
        status = 0
    return encode.resp_call(resp.id, status, headers, response.body_for_client)


# --- ExtraInfo questions ----------------------------------------------------------------


def _extra_info(call: Call, metrics: Metrics | None, on_loop: bool) -> ExtraInfo:
    """The call's ExtraInfo: each question goes on the call's connection (awaited there, on the loop)."""

    def ask(kind: InfoKind, name: str) -> bytes | None:
        if metrics is not None:
            metrics.extra_info(kind.name.lower())
        return decode.extra_info(call.ask(encode.extra_info(kind, name)))

    if not on_loop:
        return ExtraInfo(ask)

    async def ask_async(kind: InfoKind, name: str) -> bytes | None:
        if metrics is not None:
            metrics.extra_info(kind.name.lower())
        return decode.extra_info(await call.ask_async(encode.extra_info(kind, name)))

    return ExtraInfo(ask, ask_async)
