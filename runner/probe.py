"""The health probe: one PrepareConf and one HTTPReqCall over the socket, as APISIX would send them.

A runner that answers both (a token, then "no action" for a conf without
plugins) has its socket, dispatcher and conf cache working. The probe builds
its requests with the generic FlatBuffers builder and reads the replies with
the generic ``a6pluginprotos`` readers, not with the runner's own codec.
"""

from __future__ import annotations

import os
import socket
import struct

import flatbuffers
from A6.Err.Resp import Resp as ErrResp
from A6.HTTPReqCall.Resp import Resp as ReqCallResp
from A6.PrepareConf.Resp import Resp as PrepareConfResp

from .protocol import ErrCode, HTTPReqCallReq, MessageType, PrepareConfReq, slot_count

HEALTH_KEY = "apisix-python-runner#health"
_HEADER = struct.Struct(">I")


class Unhealthy(Exception):
    """The runner did not answer as it should; the message says what happened."""


def _prepare_conf() -> bytes:
    b = flatbuffers.Builder(64)
    key = b.CreateString(HEALTH_KEY)
    b.StartObject(slot_count(PrepareConfReq))
    b.PrependUOffsetTRelativeSlot(PrepareConfReq.KEY, key, 0)
    b.Finish(b.EndObject())
    return bytes(b.Output())


def _req_call(token: int) -> bytes:
    b = flatbuffers.Builder(64)
    b.StartObject(slot_count(HTTPReqCallReq))
    b.PrependUint32Slot(HTTPReqCallReq.CONF_TOKEN, token, 0)
    b.PrependUint32Slot(HTTPReqCallReq.ID, 1, 0)
    b.Finish(b.EndObject())
    return bytes(b.Output())


def _exchange(sock: socket.socket, type_: int, payload: bytes) -> bytes:
    sock.sendall(_HEADER.pack(type_ << 24 | len(payload)) + payload)
    header = _read(sock, 4)
    word = _HEADER.unpack(header)[0]
    got, size = word >> 24, word & 0xFFFFFF
    body = _read(sock, size)
    if got == MessageType.ERROR:
        code = ErrCode(ErrResp.GetRootAs(body, 0).Code())
        raise Unhealthy(f"the runner answered a type-{type_} call with Err {code.name}")
    if got != type_:
        raise Unhealthy(f"the runner answered a type-{type_} call with a type-{got} frame")
    return body


def _read(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(size)
        if not chunk:
            raise Unhealthy("the runner closed the connection")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def socket_of(pid: int) -> str | None:
    """The path of the listening Unix socket process ``pid`` holds (as ``/proc`` shows it), or ``None``.

    What it cannot tell: ``/proc/net/unix`` shows the address a socket was bound with, fixed at
    bind time, so the answer is only a name, not proof that the name leads there now:

    * the file may have been renamed, removed, or replaced since by another process's socket
      at the same path (a runner that took it over): connecting to it may reach someone else;
    * the name is as the holder saw it, in its mount namespace (a path inside a container
      names a different file, or none, on the host), and only sockets of the caller's own
      network namespace are listed (a runner in another is not found);
    * a socket bound through a directory fd (``/proc/self/fd/N/...``, as ``sockets.bind``
      does) names no path at all and is skipped; so is an abstract one;
    * of several listening sockets, the first is returned; without the right to read
      ``/proc/PID/fd`` (another user's process) the answer is ``None``.
    """
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        with open("/proc/net/unix") as table:
            next(table)
            for line in table:
                fields = line.split()
                # Num RefCount Protocol Flags Type St Inode Path; flag 0x10000 = listening
                if len(fields) >= 8 and fields[6] in inodes and int(fields[3], 16) & 0x10000:
                    if fields[7][0] != "@" and not fields[7].startswith("/proc/self/fd/"):
                        return fields[7]
    except OSError:
        return None
    return None


def check(path: str, timeout: float) -> None:
    """Probe the runner on ``path``; ``Unhealthy`` (or ``OSError``) says what is wrong."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        token = PrepareConfResp.GetRootAs(_exchange(sock, MessageType.PREPARE_CONF, _prepare_conf()), 0).ConfToken()
        if not token:
            raise Unhealthy("the runner issued conf token 0")
        reply = ReqCallResp.GetRootAs(_exchange(sock, MessageType.HTTP_REQ_CALL, _req_call(token)), 0)
        if reply.ActionType() != 0:
            raise Unhealthy(f"a conf without plugins got action {reply.ActionType()}, not none")
