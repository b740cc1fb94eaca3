"""What a conf token costs on its first use in a worker that did not issue it.

With ``workers`` > 1, APISIX sends a PrepareConf on one connection and the
calls on other connections, which may land on another worker: that worker asks
the master once for the token's conf and keeps it. This script measures it on
a real runner with two workers: it finds one connection per worker (by the
pid the ``bench_pid`` plugin answers with), then, for each of ``--tokens``
fresh route confs, prepares the token on worker A's connection and times the
first call on worker B's connection (cross-worker first use), the second call
there (a token B knows), and the first call on worker A (the issuer). It
prints the medians in µs and the difference, the cost of the round trip to
the master.

    .venv/bin/python bench/tokens.py --tokens 2000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from runner.testing import ApisixClient, RunnerProcess  # noqa: E402


def _pid(client: ApisixClient, token: int) -> str:
    reply = client.http_req_call(token)
    return dict(reply.headers)["X-Pid"] or ""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=2000, help="fresh route confs to time (default 2000)")
    opts = p.parse_args()
    with RunnerProcess(ROOT / "bench" / "plugins", args=["--workers", "2"], log_level="warning") as runner:
        probe = ApisixClient(runner.socket_path)
        token = probe.prepare_conf({"bench_pid": None}, key="route#probe#ext-plugin-pre-req#1")
        by_worker: dict[str, ApisixClient] = {}
        for _ in range(200):  # connections land on either worker: keep one per worker
            client = ApisixClient(runner.socket_path)
            by_worker.setdefault(_pid(client, token), client)
            if len(by_worker) == 2:
                break
        if len(by_worker) != 2:
            raise SystemExit("every connection landed on one worker")
        a, b = by_worker.values()
        cross: list[float] = []
        known: list[float] = []
        issuer: list[float] = []
        for i in range(opts.tokens):
            token = a.prepare_conf({"bench_pid": None}, key=f"route#{i}#ext-plugin-pre-req#1")
            for client, times in ((b, cross), (b, known)):
                started = time.perf_counter()
                client.http_req_call(token)
                times.append((time.perf_counter() - started) * 1e6)
            token = a.prepare_conf({"bench_pid": None}, key=f"route#{i}#ext-plugin-post-req#1")
            started = time.perf_counter()
            a.http_req_call(token)
            issuer.append((time.perf_counter() - started) * 1e6)
    med = {name: statistics.median(t) for name, t in (("cross", cross), ("known", known), ("issuer", issuer))}
    print(f"{opts.tokens} tokens, call round trip in µs (median), client included:")
    print(f"  first use on the issuing worker   {med['issuer']:8.1f}")
    print(f"  first use on the other worker     {med['cross']:8.1f}")
    print(f"  later use on the other worker     {med['known']:8.1f}")
    print(f"  cross-worker first-use cost       {med['cross'] - med['known']:8.1f}")


if __name__ == "__main__":
    main()
