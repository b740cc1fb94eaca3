"""Instructions and cache misses per call of ``Dispatcher.handle``, per scenario, for several checkouts.

``inproc.py`` times calls, and on a shared VM two builds that differ in
unrelated code move by 2-3 % there. This counts instead: each checkout's
runner handles the benchmark's frames (as in ``inproc.py``, one checkout per
process) under valgrind's cachegrind, which simulates the caches and branch
predictor of the machine it runs on. The figures move little from run to run
(``PYTHONHASHSEED=0``; where code and data land still varies: two runs of the
same code differed by up to 0.7 % in instructions and 6 % in I1 misses), so
compare checkouts within one run. A call's figures are the difference between a run of ``1 + batches``
batches of 256 calls and a run of one, so start-up is left out.

What it shows and timing does not: where a call's cost goes when the caches
are cold, as on an unpinned server whose threads move between CPUs (fewer
instructions can still be slower, if they miss more). What it does not show:
the system calls and the wake-ups, which ``run.py`` measures.

    python bench/cachegrind.py before=/path/to/checkout after=.
    python bench/cachegrind.py --scenarios rewrite,resp --batches 8 a=../a b=../b

Needs valgrind (Debian: ``apt install valgrind``); about a minute per checkout.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import inproc  # noqa: E402  (lives next to this file)

#: cachegrind's summary lines, and the names shown for them.
EVENTS = {"I refs": "instructions", "I1 misses": "I1 misses", "D1 misses": "D1 misses", "Mispredicts": "mispredicts"}
_SUMMARY = re.compile(r"==\d+== (I\s+refs|I1\s+misses|D1\s+misses|Mispredicts):\s+([\d,]+)")


def child(root: Path, scenario: str, batches: int) -> None:
    """Handle ``batches`` batches of ``scenario`` with the runner of ``root`` (run under valgrind)."""
    with tempfile.TemporaryDirectory() as tmp:
        sys.path.insert(0, tmp)
        d = inproc.dispatcher(inproc.load(root, "runner_measured", Path(tmp)), root)
        type_, payloads = inproc.calls(d, scenario)
        for _ in range(batches):
            inproc.batch(d.handle, type_, payloads)


def count(root: Path, scenario: str, batches: int) -> dict[str, int]:
    """cachegrind's totals for one child run."""
    cmd = [
        "valgrind", "--tool=cachegrind", "--cache-sim=yes", "--branch-sim=yes", "--cachegrind-out-file=/dev/null",
        sys.executable, __file__, "--child", str(root), scenario, str(batches),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONHASHSEED="0")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    totals = summary(done.stderr)
    if done.returncode != 0 or len(totals) != len(EVENTS):
        raise SystemExit(f"cachegrind failed for {root} {scenario}:\n{done.stderr[-2000:]}")
    return totals


def summary(stderr: str) -> dict[str, int]:
    """The totals of ``EVENTS`` in cachegrind's summary (which aligns names with spaces: ``I1  misses``)."""
    totals = {}
    for found in filter(None, map(_SUMMARY.search, stderr.splitlines())):
        totals[" ".join(found[1].split())] = int(found[2].replace(",", ""))
    return totals


def per_call(root: Path, scenario: str, batches: int, pool: ThreadPoolExecutor) -> dict[str, float]:
    small, large = pool.map(lambda n: count(root, scenario, n), (1, 1 + batches))
    calls = batches * inproc.BATCH
    return {event: (large[event] - small[event]) / calls for event in EVENTS}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkouts", nargs="*", metavar="NAME=PATH", help="checkouts to compare; the first is the base")
    p.add_argument("--scenarios", default=",".join(inproc.SCENARIOS))
    p.add_argument("--batches", type=int, default=4, help="batches of 256 calls counted (default 4)")
    p.add_argument("--child", nargs=3, metavar=("ROOT", "SCENARIO", "BATCHES"), help=argparse.SUPPRESS)
    opts = p.parse_args()
    if opts.child:
        root, scenario, batches = opts.child
        child(Path(root), scenario, int(batches))
        return
    checkouts = [c.split("=", 1) for c in opts.checkouts]
    if not checkouts or any(len(c) != 2 for c in checkouts):
        p.error("give checkouts as NAME=PATH")
    if shutil.which("valgrind") is None:
        p.error("valgrind is not installed (Debian: apt install valgrind)")
    names = [name for name, _ in checkouts]
    print(f"per call, and the ratio to {names[0]} ({opts.batches} x {inproc.BATCH} calls, cachegrind)")
    print(f"{'scenario':10}{'':14}" + "".join(f"{name:>20}" for name in names))
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for scenario in opts.scenarios.split(","):
            figures = [per_call(Path(path).resolve(), scenario, opts.batches, pool) for _, path in checkouts]
            for i, (event, shown) in enumerate(EVENTS.items()):
                base = figures[0][event]
                cells = [f"{f[event]:10,.0f} ({f[event] / base:.3f})" for f in figures]
                print(f"{scenario if i == 0 else '':10}{shown:14}" + "".join(f"{c:>20}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
