"""APISIX's load on a runner, and the runner's memory under it, seen from outside the container.

Usage: python memory.py SOCKET PID [--idle N] [--bodies N] [--size BYTES] [--rounds N]

PID is the runner's pid as this host sees it (``docker inspect -f {{.State.Pid}}``);
with ``workers > 1`` its children (the workers) are measured too. Three phases:

1. idle: N connections (APISIX's keepalive pool), one call on each, then
   left open; RSS after they settle.
2. bodies: N connections at once, each one HTTPReqCall for the example
   ``verify_signature`` plugin, which reads a body of BYTES (it asks APISIX
   for it with ExtraInfo) and checks its HMAC. The runner answers a call
   (the signature matches: no action) or drops its connection (over
   ``memory_budget``: APISIX answers 503). RSS is sampled every 5 ms
   throughout; repeated ROUNDS times.
3. after: RSS 3 s after the last round, the bodies' connections still open.

Prints one line per phase and a last line of JSON with every figure (kB).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import threading
import time

from runner.testing import ApisixClient

SECRET = "memory-probe"
CONF = [("verify_signature", json.dumps({"secret": SECRET}))]


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def processes(pid: int) -> list[int]:
    """The runner and its children (a master's workers)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [pid, *map(int, f.read().split())]
    except OSError:
        return [pid]


class Sampler(threading.Thread):
    """The highest RSS of each process and of their sum while it runs."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.peak = dict.fromkeys(pids, 0)
        self.peak_total = 0
        self.running = True

    def run(self) -> None:
        alive = list(self.pids)
        while self.running and alive:
            now = {}
            for pid in list(alive):
                try:
                    now[pid] = rss_kb(pid)
                except OSError:  # it left (an OOM kill): the caller sees it
                    alive.remove(pid)
            for pid, kb in now.items():
                self.peak[pid] = max(self.peak[pid], kb)
            self.peak_total = max(self.peak_total, sum(now.values()))
            time.sleep(0.005)

    def stop(self) -> None:
        self.running = False
        self.join()


def idle(path: str, count: int) -> list[ApisixClient]:
    clients = []
    for _ in range(count):
        client = ApisixClient(path, 30.0)
        client.http_req_call(client.prepare_conf([("say", "{}")]))
        clients.append(client)
    return clients


def body_round(clients: list[ApisixClient | None], path: str, body: bytes) -> tuple[int, int, list[str]]:
    """One call per client at once; (answered, dropped, anything else)."""
    signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    outcomes: list[str] = [""] * len(clients)
    tokens = []
    for i, client in enumerate(clients):
        clients[i] = client = client or ApisixClient(path, 60.0)
        tokens.append(client.prepare_conf(CONF))
    start = threading.Barrier(len(clients))

    def call(i: int) -> None:
        client = clients[i]
        assert client is not None
        start.wait()
        try:
            reply = client.http_req_call(tokens[i], headers=[("X-Signature", signature)], body=body)
            ok = reply.err is None and reply.action == "none" and reply.asked == [("req_body", "")]
            outcomes[i] = "answered" if ok else f"unexpected reply {reply.err} {reply.action} {reply.status}"
        except (EOFError, OSError) as e:  # the runner closed it: APISIX would answer 503
            outcomes[i] = "dropped" if isinstance(e, (EOFError, ConnectionError)) else f"dropped ({e})"
            client.close()
            clients[i] = None

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    answered = outcomes.count("answered")
    dropped = sum(o.startswith("dropped") for o in outcomes)
    return answered, dropped, [o for o in outcomes if o not in ("answered", "dropped")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("socket")
    parser.add_argument("pid", type=int)
    parser.add_argument("--idle", type=int, default=64)
    parser.add_argument("--bodies", type=int, default=12)
    parser.add_argument("--size", type=int, default=15 << 20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    pids = processes(args.pid)
    result: dict[str, object] = {"pids": pids, "start_kb": {p: rss_kb(p) for p in pids}}

    pool = idle(args.socket, args.idle)
    time.sleep(2)
    result["idle_kb"] = {p: rss_kb(p) for p in pids}
    print(
        f"idle: RSS kB {result['start_kb']} at start, {result['idle_kb']} with {args.idle} pooled connections",
        flush=True,
    )

    body = os.urandom(args.size)
    clients: list[ApisixClient | None] = [None] * args.bodies
    sampler = Sampler(pids)
    sampler.start()
    rounds = []
    for _ in range(args.rounds):
        rounds.append(body_round(clients, args.socket, body))
        time.sleep(0.5)
    sampler.stop()
    result["rounds"] = rounds
    result["peak_kb"] = sampler.peak
    result["peak_total_kb"] = sampler.peak_total
    print(f"bodies: {args.bodies} x {args.size} bytes, {args.rounds} rounds (answered, dropped, other): {rounds}")
    print(f"bodies: peak RSS kB {sampler.peak} (sum {sampler.peak_total})", flush=True)

    time.sleep(3)
    alive = [p for p in pids if os.path.exists(f"/proc/{p}/status")]
    result["after_kb"] = {p: rss_kb(p) for p in alive}
    print(f"after: RSS kB {result['after_kb']}")
    for client in pool + [c for c in clients if c is not None]:
        client.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
