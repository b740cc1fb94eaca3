"""In-process A/B: the cost of ``Dispatcher.handle`` per call, per scenario, for several checkouts.

No sockets and no load generator: each checkout's runner package handles the
benchmark's own frames (``frames.py``) with the benchmark plugins
(``plugins/``) in a fresh interpreter, ExtraInfo questions answered from a
prebuilt payload. Checkouts are measured interleaved (A B B A ...), several
rounds, so that a slow spell on a shared machine hits all of them; each
figure is µs per call, min and median over every timed batch. This is what
``runner/caches.py`` cites; the end-to-end figures come from ``run.py``.

    python bench/inproc.py before=/path/to/checkout after=.
    python bench/inproc.py --rounds 20 --scenarios stop,resp a=../a b=../b
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SCENARIOS = ("stop", "rewrite", "var", "resp")
BATCH = 256  # calls per timed batch, each with its own request id


def measure(root: str, scenarios: list[str], batches: int) -> dict[str, list[float]]:
    """µs per call of each timed batch, per scenario, for the checkout at ``root``."""
    sys.path[:0] = [root, str(BENCH)]
    import frames

    from runner.cache import ConfCache
    from runner.dispatch import Dispatcher
    from runner.plugins import load_plugins

    dispatcher = Dispatcher(load_plugins(BENCH / "plugins"), ConfCache(3600))
    var_answer = frames.extra_info_resp(frames.VAR_VALUE)

    def exchange(question: bytes) -> bytes:
        return var_answer

    out: dict[str, list[float]] = {}
    for name in scenarios:
        s = frames.SCENARIOS[name]
        reply = dispatcher.handle(s.prepare[0], s.prepare[4:], exchange)
        token = struct.unpack_from("<I", reply, 4 + frames.scalar_offset(reply[4:], 0))[0]
        type_, request = s.request[0], bytearray(s.request[4:])
        token_slot = 6 if type_ == frames.HTTP_REQ_CALL else 3
        struct.pack_into("<I", request, frames.scalar_offset(bytes(request), token_slot), token)
        id_at = frames.scalar_offset(bytes(request), 0)
        payloads = []
        for i in range(BATCH):
            struct.pack_into("<I", request, id_at, 1000 + i)
            payloads.append(bytes(request))
        handle = dispatcher.handle
        for payload in payloads:  # warm up, and check the answer is the call's reply
            if handle(type_, payload, exchange)[0] != type_:
                raise SystemExit(f"{root}: {name} answered with an error")
        times = []
        for _ in range(batches):
            started = time.perf_counter()
            for payload in payloads:
                handle(type_, payload, exchange)
            times.append((time.perf_counter() - started) / BATCH * 1e6)
        out[name] = times
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkouts", nargs="*", metavar="NAME=PATH", help="checkouts to compare; the first is the base")
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    p.add_argument("--batches", type=int, default=12, help=f"timed batches of {BATCH} calls per round (default 12)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--child", help=argparse.SUPPRESS)
    opts = p.parse_args()
    scenarios = opts.scenarios.split(",")
    if opts.child:
        print(json.dumps(measure(opts.child, scenarios, opts.batches)))
        return
    checkouts = [c.split("=", 1) for c in opts.checkouts]
    if not checkouts or any(len(c) != 2 for c in checkouts):
        p.error("give checkouts as NAME=PATH")
    times: dict[str, dict[str, list[float]]] = {name: {s: [] for s in scenarios} for name, _ in checkouts}
    for r in range(opts.rounds):
        for name, path in checkouts if r % 2 == 0 else checkouts[::-1]:
            argv = [sys.executable, __file__, "--child", str(Path(path).resolve()), "--scenarios", opts.scenarios]
            argv += ["--batches", str(opts.batches)]
            result = json.loads(subprocess.run(argv, check=True, capture_output=True, text=True).stdout)
            for s in scenarios:
                times[name][s] += result[s]
    base = checkouts[0][0]
    print("µs per call, min / median (ratio to " + base + ")")
    print(f"{'scenario':10}" + "".join(f"{name:>30}" for name, _ in checkouts))
    for s in scenarios:
        b = times[base][s]
        cells = []
        for name, _ in checkouts:
            t = times[name][s]
            lo, mid = min(t), statistics.median(t)
            cells.append(f"{lo:6.2f} / {mid:6.2f} ({lo / min(b):.3f} / {mid / statistics.median(b):.3f})")
        print(f"{s:10}" + "".join(f"{c:>30}" for c in cells))


if __name__ == "__main__":
    main()
