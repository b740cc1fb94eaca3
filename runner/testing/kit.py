"""The in-process kit: a plugin's request or response phase run without APISIX or a socket.

The call goes through the runner's real decoder, dispatcher, plugins and
encoder, and the reply is read as APISIX reads it (``wire``), so a test here
and the same call over the socket (``client``) give the same reply object,
failures included: an Err reply with the runner's reason. Inputs follow
``vocab``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from .. import aio, decode, frame
from ..cache import ConfCache
from ..dispatch import Dispatcher
from ..errors import RunnerError
from ..phases import Prepared, run_request_phase, run_request_phase_async, run_response_phase, run_response_phase_async
from ..plugins import Plugin, PluginRegistry, plugin_name
from ..protocol import InfoKind, MessageType
from .vocab import PairsInput, conf_text, ip_bytes, pairs
from .wire import (
    ConfRejected,
    ReqCallReply,
    RespCallReply,
    answer_extra_info,
    decode_req_call_reply,
    decode_resp_call_reply,
    req_call_req,
    resp_call_req,
)

PluginSpec = type[Plugin] | tuple[type[Plugin], Any]
Plugins = PluginSpec | Sequence[PluginSpec]
Reply = TypeVar("Reply", ReqCallReply, RespCallReply)


def _prepare(plugins: Plugins, conf: Any) -> Prepared:
    specs: Sequence[PluginSpec] = [(plugins, conf)] if isinstance(plugins, type) else list(plugins)
    registry = PluginRegistry()
    entries = []
    for spec in specs:
        cls, value = spec if isinstance(spec, tuple) else (spec, None)
        if registry.get(plugin_name(cls)) is None:
            registry.register(cls)
        entries.append((plugin_name(cls), conf_text(value)))
    prepared = Dispatcher(registry, ConfCache[Prepared](3600)).prepare(entries)
    if prepared.error:
        raise ConfRejected(prepared.error)
    return prepared


class _KitCall:
    """The call the in-process kit runs: ExtraInfo questions are answered as APISIX would."""

    def __init__(self, vars: Mapping[str, str] | None, bodies: dict[int, bytes | None]) -> None:
        self.plugin: str | None = None
        self.request_id = 0
        self.conf_token = 0
        self.deadline = time.monotonic() + 60.0  # as APISIX's default timeout
        self.given_up = False
        self.asked: list[tuple[str, str]] = []
        self._answer = (vars or {}, bodies, self.asked)

    def ask(self, question: bytes) -> bytes:
        return answer_extra_info(question, *self._answer)

    async def ask_async(self, question: bytes) -> bytes:
        return self.ask(question)


def _reply(
    type_: MessageType, phase: Callable[[], bytes], call: _KitCall, read: Callable[[bytes], Reply], failed: type[Reply]
) -> Reply:
    """The phase's reply as APISIX reads it; a runner error is the Err reply the socket would carry."""
    try:
        out = phase()
        frame.encode(type_, out)  # raises if APISIX could not receive it
        reply = read(out)
    except RunnerError as e:
        reply = failed(err=e.code, reason=str(e), cause=e.__cause__ or e)
    reply.asked = call.asked
    return reply


def run_filter(
    plugins: Plugins,
    *,
    conf: Any = None,
    method: str = "GET",
    path: str = "/",
    headers: PairsInput = (),
    args: PairsInput = (),
    body: bytes | None = None,
    vars: Mapping[str, str] | None = None,
    src_ip: str | bytes = "127.0.0.1",
    id: int = 1,
) -> ReqCallReply:
    """Run the request phase as APISIX's ``ext-plugin-pre-req`` would, without APISIX.

    ``plugins`` is one plugin class (its route conf is ``conf``) or a chain
    ``[(PluginClass, conf), ...]``. ExtraInfo questions are answered from
    ``vars`` and ``body`` (a var not given is absent). A plugin that raises
    gives ``err=ErrCode.SERVICE_UNAVAILABLE`` and the runner's ``reason``
    (``raise_for_err()`` raises it, caused by the plugin's exception); a conf
    the plugins reject raises ``ConfRejected``.
    """
    prepared = _prepare(plugins, conf)
    payload = req_call_req(
        id=id,
        token=1,
        method=method.upper(),
        path=path,
        args=pairs(args),
        headers=pairs(headers, lower=True),
        src_ip=ip_bytes(src_ip),
    )
    req, call = decode.req_call(payload), _KitCall(vars, {InfoKind.REQ_BODY: body})

    def phase() -> bytes:
        if prepared.async_request:
            return aio.run(run_request_phase_async(prepared, req, call))
        return run_request_phase(prepared, req, call)

    return _reply(MessageType.HTTP_REQ_CALL, phase, call, decode_req_call_reply, ReqCallReply)


def run_response_filter(
    plugins: Plugins,
    *,
    conf: Any = None,
    status: int = 200,
    headers: PairsInput = (),
    body: bytes | None = None,
    vars: Mapping[str, str] | None = None,
    request_body: bytes | None = None,
    id: int = 1,
) -> RespCallReply:
    """Run the response phase as ``ext-plugin-post-resp`` would, on an upstream response.

    ``status``, ``headers`` and ``body`` are the upstream's. The reply's
    ``headers`` are what the client will see, ``status`` is 0 when unchanged and
    ``body`` is ``None`` when the upstream body passes through. Failures as in
    ``run_filter``.
    """
    prepared = _prepare(plugins, conf)
    payload = resp_call_req(id=id, token=1, status=status, headers=pairs(headers))
    bodies: dict[int, bytes | None] = {InfoKind.REQ_BODY: request_body, InfoKind.RESP_BODY: body}
    resp, call = decode.resp_call(payload), _KitCall(vars, bodies)

    def phase() -> bytes:
        if prepared.async_response:
            return aio.run(run_response_phase_async(prepared, resp, call))
        return run_response_phase(prepared, resp, call)

    return _reply(MessageType.HTTP_RESP_CALL, phase, call, decode_resp_call_reply, RespCallReply)
