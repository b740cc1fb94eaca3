"""The in-process kit: a plugin's request or response phase run without APISIX or a socket.

The call goes through the runner's real decoder, dispatcher, plugins and
encoder, and the reply is read as APISIX reads it (``wire``), so a test here
and the same call over the socket (``client``) give the same reply object.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .. import aio, decode, frame
from ..cache import ConfCache
from ..dispatch import Dispatcher
from ..errors import RunnerError
from ..phases import Prepared, run_request_phase, run_request_phase_async, run_response_phase, run_response_phase_async
from ..plugins import Plugin, PluginRegistry, plugin_name
from ..protocol import InfoKind, MessageType
from .wire import (
    ReqCallReply,
    RespCallReply,
    answer_extra_info,
    decode_req_call_reply,
    decode_resp_call_reply,
    req_call_req,
    resp_call_req,
)


class ConfRejected(RunnerError):
    """The route conf could not be prepared (unknown plugin, ``configure`` raised...):
    under APISIX every call on it would get a 503."""


PluginSpec = type[Plugin] | tuple[type[Plugin], Any]
Plugins = PluginSpec | Sequence[PluginSpec]
HeaderInput = Mapping[str, str] | Sequence[tuple[str, str | None]]


def _prepare(plugins: Plugins, conf: Any) -> Prepared:
    specs: Sequence[PluginSpec] = [(plugins, conf)] if isinstance(plugins, type) else list(plugins)
    registry = PluginRegistry()
    entries = []
    for spec in specs:
        cls, value = spec if isinstance(spec, tuple) else (spec, None)
        if registry.get(plugin_name(cls)) is None:
            registry.register(cls)
        entries.append((plugin_name(cls), "" if value is None else json.dumps(value)))
    prepared = Dispatcher(registry, ConfCache[Prepared](3600)).prepare(entries)
    if prepared.error:
        raise ConfRejected(prepared.error)
    return prepared


class _KitCall:
    """The call the in-process kit runs: ExtraInfo questions are answered as APISIX would."""

    def __init__(self, vars: Mapping[str, str], bodies: dict[int, bytes | None], asked: list[tuple[str, str]]) -> None:
        self.plugin: str | None = None
        self.request_id = 0
        self.conf_token = 0
        self.deadline = time.monotonic() + 60.0  # as APISIX's default timeout
        self.given_up = False
        self._answer = (vars, bodies, asked)

    def ask(self, question: bytes) -> bytes:
        return answer_extra_info(question, *self._answer)

    async def ask_async(self, question: bytes) -> bytes:
        return self.ask(question)


def _pairs(items: HeaderInput, lower: bool = False) -> list[tuple[str, str | None]]:
    pairs = list(items.items()) if isinstance(items, Mapping) else list(items)
    return [(n.lower() if lower else n, v) for n, v in pairs]


def run_filter(
    plugins: Plugins,
    *,
    conf: Any = None,
    method: str = "GET",
    path: str = "/",
    headers: HeaderInput = (),
    args: HeaderInput = (),
    body: bytes | None = None,
    vars: Mapping[str, str] | None = None,
    src_ip: str = "127.0.0.1",
    id: int = 1,
) -> ReqCallReply:
    """Run the request phase as APISIX's ``ext-plugin-pre-req`` would, without APISIX.

    ``plugins`` is one plugin class (its route conf is ``conf``, any JSON-able
    value) or a chain ``[(PluginClass, conf), ...]``. The request goes through
    the runner's real decoder, plugins and encoder; ExtraInfo questions are
    answered from ``vars`` and ``body`` (a var not given is absent). Returns the
    reply as APISIX reads it. A plugin that raises raises ``PluginError`` here
    (its cause is the plugin's exception; APISIX would answer 503), and a conf
    the plugins reject raises ``ConfRejected``.
    """
    prepared = _prepare(plugins, conf)
    payload = req_call_req(
        id=id,
        token=1,
        method=method.upper(),
        path=path,
        args=_pairs(args),
        headers=_pairs(headers, lower=True),  # nginx lower-cases request header names
        src_ip=ipaddress.ip_address(src_ip).packed,
    )
    asked: list[tuple[str, str]] = []
    bodies: dict[int, bytes | None] = {InfoKind.REQ_BODY: body}

    req, call = decode.req_call(payload), _KitCall(vars or {}, bodies, asked)
    if prepared.async_request:
        out = aio.run(run_request_phase_async(prepared, req, call))
    else:
        out = run_request_phase(prepared, req, call)
    frame.encode(MessageType.HTTP_REQ_CALL, out)  # raises if APISIX could not receive it
    reply = decode_req_call_reply(out)
    reply.asked = asked
    return reply


def run_response_filter(
    plugins: Plugins,
    *,
    conf: Any = None,
    status: int = 200,
    headers: HeaderInput = (),
    body: bytes | None = None,
    vars: Mapping[str, str] | None = None,
    request_body: bytes | None = None,
    id: int = 1,
) -> RespCallReply:
    """Run the response phase as ``ext-plugin-post-resp`` would, on an upstream response.

    ``status``, ``headers`` and ``body`` are the upstream's. The reply's
    ``headers`` are what the client will see, ``status`` is 0 when unchanged and
    ``body`` is ``None`` when the upstream body passes through.
    """
    prepared = _prepare(plugins, conf)
    payload = resp_call_req(id=id, token=1, status=status, headers=_pairs(headers))
    asked: list[tuple[str, str]] = []
    bodies: dict[int, bytes | None] = {InfoKind.REQ_BODY: request_body, InfoKind.RESP_BODY: body}

    resp, call = decode.resp_call(payload), _KitCall(vars or {}, bodies, asked)
    if prepared.async_response:
        out = aio.run(run_response_phase_async(prepared, resp, call))
    else:
        out = run_response_phase(prepared, resp, call)
    frame.encode(MessageType.HTTP_RESP_CALL, out)
    reply = decode_resp_call_reply(out)
    reply.asked = asked
    return reply
