"""What hostile or unlucky traffic makes a runner hold: the figures of the bounded-server work.

Each check starts a fresh runner process of each checkout given (``NAME=PATH``;
the first is the reference point), drives it over its socket and reads its
RSS, threads and descriptors from /proc:

* ``header``: 100 connections each send a frame header announcing 16 MiB
  (``01 ff ff ff``) and nothing more; RSS while they wait and after they close.
* ``amplified``: one 16 MiB HTTPRespCall whose 4 M header cells all point at
  one entry, on a token whose plugin changes a header: the reply, how long it
  took, and the peak RSS growth (VmHWM, in a process that saw nothing else).
* ``bodies``: 6 calls at once each fetching a 15 MiB request body; peak RSS,
  and idle RSS 3 s after they were answered (memory given back or not).
* ``stuck``: 300 calls to a plugin that never returns; threads and
  descriptors 2 s later, 2 s after the clients gave up, and once more past
  the default ``call_timeout``.

    .venv/bin/python bench/floods.py before=/path/to/checkout after=.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent / "tests")]
import frames  # noqa: E402
from payloads import shared_entries  # noqa: E402

RESP_TOKEN_SLOT, RESP_HEADERS_SLOT = 3, 2  # HTTPRespCall.Req: conf_token, headers
BODY = b"b" * (15 << 20)
STUCK_WAIT = 62  # past the runner's default call_timeout (60 s, APISIX's own timeout)


def _status(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def _mib(kb: int) -> float:
    return kb / 1024


class Runner:
    def __init__(self, root: Path, tmp: Path) -> None:
        plugins = tmp / "plugins"
        if not plugins.exists():  # sync plugins only: an older checkout refuses async ones
            plugins.mkdir()
            for f in (BENCH / "plugins").glob("*.py"):
                if "async def" not in f.read_text():
                    shutil.copy(f, plugins / f.name)
        self.sock = str(tmp / "r.sock")
        cmd = [sys.executable, "-m", "runner", "run", "--socket", self.sock, "--plugins", str(plugins)]
        self.proc = subprocess.Popen([*cmd, "--log-level", "warning"], cwd=root, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while not os.path.exists(self.sock):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"the runner of {root} did not start")
            time.sleep(0.05)
        time.sleep(0.3)
        self.pid = self.proc.pid

    def rss(self) -> int:
        return _status(self.pid, "VmRSS")

    def threads(self) -> int:
        return _status(self.pid, "Threads")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def connect(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.sock)
        return s

    def token(self, plugin: str) -> int:
        with self.connect() as s:
            s.sendall(frames.frame(frames.PREPARE_CONF, frames.prepare_conf_req([(plugin, "")], f"route#{plugin}")))
            payload = _read(s)[1]
        return int(struct.unpack_from("<I", payload, frames.scalar_offset(payload, 0))[0])

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _read(s: socket.socket) -> tuple[int, bytes]:
    head = s.recv(4, socket.MSG_WAITALL)
    if len(head) < 4:
        return -1, b""
    size = int.from_bytes(head[1:], "big")
    return head[0], s.recv(size, socket.MSG_WAITALL) if size else b""


def header_flood(r: Runner) -> str:
    before = r.rss()
    conns = [r.connect() for _ in range(100)]
    for c in conns:
        c.sendall(b"\x01\xff\xff\xff")
    time.sleep(2)
    held = r.rss()
    for c in conns:
        c.close()
    time.sleep(2)
    return f"RSS +{_mib(held - before):.1f} MiB while held, +{_mib(r.rss() - before):.1f} MiB after they closed"


def amplified(r: Runner) -> str:
    token = r.token("bench_resp")
    payload = shared_entries(scalars={RESP_TOKEN_SLOT: token}, vectors={RESP_HEADERS_SLOT: (16 << 20) // 4 - 64})
    before = r.rss()
    with r.connect() as s:
        started = time.monotonic()
        s.sendall(frames.frame(frames.HTTP_RESP_CALL, payload))
        type_, reply = _read(s)
        took = time.monotonic() - started
    answer = {0: f"Err code {reply[-1] if reply else '?'}", -1: "connection closed"}.get(type_, f"type {type_}")
    peak = _status(r.pid, "VmHWM")
    return f"{len(payload):,} bytes: {answer} in {took:.2f} s, peak RSS +{_mib(peak - before):.1f} MiB"


def bodies(r: Runner) -> str:
    token = r.token("bench_body")
    before = r.rss()
    request = bytearray(frames.SCENARIOS["body"].request)
    struct.pack_into("<I", request, 4 + frames.scalar_offset(bytes(request[4:]), 6), token)
    answers: list[int] = []

    def one() -> None:
        with r.connect() as s:
            s.sendall(request)
            type_, _ = _read(s)
            try:
                while type_ == frames.EXTRA_INFO:
                    s.sendall(frames.frame(frames.EXTRA_INFO, frames.extra_info_resp(BODY)))
                    type_, _ = _read(s)
            except OSError:  # dropped over the memory budget
                type_ = -1
            answers.append(type_)

    workers = [threading.Thread(target=one) for _ in range(6)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    time.sleep(3)
    peak, after = _status(r.pid, "VmHWM"), r.rss()
    ok = answers.count(frames.HTTP_REQ_CALL)
    rss = f"peak RSS {_mib(peak):.0f} MiB, idle after {_mib(after):.0f} MiB (start {_mib(before):.0f})"
    return f"{ok}/6 answered, {rss}"


def stuck(r: Runner) -> str:
    token = r.token("bench_hang")
    request = bytearray(frames.SCENARIOS["stop"].request)
    struct.pack_into("<I", request, 4 + frames.scalar_offset(bytes(request[4:]), 6), token)
    conns = [r.connect() for _ in range(300)]
    for c in conns:
        c.sendall(request)
    time.sleep(2)
    held = f"{r.threads()} threads, {r.fds()} fds"
    for c in conns:
        c.close()
    time.sleep(2)
    left = f"{r.threads()} threads, {r.fds()} fds"
    time.sleep(STUCK_WAIT)
    later = f"{r.threads()} threads, {r.fds()} fds"
    return f"while waiting: {held}; after the clients left: {left}; {STUCK_WAIT} s later: {later}"


CHECKS = {"header": header_flood, "amplified": amplified, "bodies": bodies, "stuck": stuck}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkouts", nargs="+", metavar="NAME=PATH")
    p.add_argument("--checks", default=",".join(CHECKS))
    opts = p.parse_args()
    for check in opts.checks.split(","):
        for name, root in (c.split("=", 1) for c in opts.checkouts):
            with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
                r = Runner(Path(root).resolve(), Path(tmp))
                try:
                    print(f"{check:9} {name:8} {CHECKS[check](r)}", flush=True)
                finally:
                    r.stop()


if __name__ == "__main__":
    main()
