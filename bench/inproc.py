"""In-process A/B: the cost of ``Dispatcher.handle`` per call, per scenario, for several checkouts.

No sockets and no load generator: the runner package of each checkout is
loaded side by side in one interpreter (copied under its own package name),
and each handles the benchmark's own frames (``frames.py``) with the
benchmark plugins (``plugins/``), ExtraInfo questions answered from a
prebuilt payload. The checkouts take turns batch by batch (A B C, C B A, ...),
so that a slow spell on a shared machine hits all of them alike. Per
checkout and scenario it prints µs per call, the min and the median over
every batch, and the median over rounds of the ratio to the first checkout's
batch of the same round (the steadiest of the three figures). This is what
``runner/caches.py`` cites; the end-to-end figures come from ``run.py``.

    python bench/inproc.py before=/path/to/checkout after=.
    python bench/inproc.py --rounds 400 --scenarios stop,resp a=../a b=../b
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH = Path(__file__).resolve().parent
SCENARIOS = ("stop", "rewrite", "var", "resp")
BATCH = 256  # calls per timed batch, each with its own request id

sys.path.insert(0, str(BENCH))
import frames  # noqa: E402  (lives next to this file)


def load(root: Path, alias: str, into: Path) -> ModuleType:
    """The runner package of checkout ``root``, imported as ``alias``."""
    shutil.copytree(root / "runner", into / alias)
    return importlib.import_module(alias)


def dispatcher(package: ModuleType, root: Path) -> Any:
    dispatch = importlib.import_module(f"{package.__name__}.dispatch")
    cache = importlib.import_module(f"{package.__name__}.cache")
    try:  # where the loader lives depends on the checkout's age
        loader = importlib.import_module(f"{package.__name__}.loader")
    except ImportError:
        loader = importlib.import_module(f"{package.__name__}.plugins")
    saved = sys.modules.get("runner")
    sys.modules["runner"] = package  # the plugins' ``from runner import Plugin``
    try:
        registry = loader.load_plugins(root / "bench" / "plugins")
    finally:
        if saved is None:
            del sys.modules["runner"]
        else:
            sys.modules["runner"] = saved
    return dispatch.Dispatcher(registry, cache.ConfCache(3600))


class _Call:
    """The call each frame comes with: its ExtraInfo questions are answered from a prebuilt payload.

    Callable too, for checkouts whose dispatcher took a plain ``exchange`` function.
    """

    answer = frames.extra_info_resp(frames.VAR_VALUE)

    def __init__(self) -> None:
        self.plugin = None
        self.request_id = self.conf_token = 0
        self.deadline = time.monotonic() + 3600
        self.given_up = False

    def __call__(self, question: bytes) -> bytes:
        return self.answer

    ask = __call__

    async def ask_async(self, question: bytes) -> bytes:
        return self.answer


_exchange = _Call()


def calls(d: Any, scenario: str) -> tuple[int, list[bytes]]:
    """The frame type and one batch of payloads (ids 1000...) on a fresh token of ``d``."""
    s = frames.SCENARIOS[scenario]
    reply = d.handle(s.prepare[0], s.prepare[4:], _exchange)
    token = struct.unpack_from("<I", reply, 4 + frames.scalar_offset(reply[4:], 0))[0]
    type_, request = s.request[0], bytearray(s.request[4:])
    token_slot = 6 if type_ == frames.HTTP_REQ_CALL else 3
    struct.pack_into("<I", request, frames.scalar_offset(bytes(request), token_slot), token)
    id_at = frames.scalar_offset(bytes(request), 0)
    payloads = []
    for i in range(BATCH):
        struct.pack_into("<I", request, id_at, 1000 + i)
        payloads.append(bytes(request))
    for payload in payloads:  # warm up, and check it is the call's reply
        if d.handle(type_, payload, _exchange)[0] != type_:
            raise SystemExit(f"{scenario} answered with an error")
    return type_, payloads


def batch(handle: Callable[..., bytes], type_: int, payloads: list[bytes]) -> float:
    started = time.perf_counter()
    for payload in payloads:
        handle(type_, payload, _exchange)
    return (time.perf_counter() - started) / len(payloads) * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkouts", nargs="+", metavar="NAME=PATH", help="checkouts to compare; the first is the base")
    p.add_argument("--rounds", type=int, default=200, help="batches per checkout and scenario (default 200)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    opts = p.parse_args()
    checkouts = [c.split("=", 1) for c in opts.checkouts]
    if any(len(c) != 2 for c in checkouts):
        p.error("give checkouts as NAME=PATH")
    with tempfile.TemporaryDirectory() as tmp:
        sys.path.insert(0, tmp)
        dispatchers = [
            dispatcher(load(Path(path), f"runner_{i}", Path(tmp)), Path(path)) for i, (_, path) in enumerate(checkouts)
        ]
        compare([name for name, _ in checkouts], dispatchers, opts.scenarios.split(","), opts.rounds)


def compare(names: list[str], dispatchers: list[Any], scenarios: list[str], rounds: int) -> None:
    print(f"µs per call: min / median, and the median ratio to {names[0]} per round ({rounds} rounds)")
    print(f"{'scenario':10}" + "".join(f"{name:>28}" for name in names))
    for scenario in scenarios:
        work = [(d.handle, *calls(d, scenario)) for d in dispatchers]
        times: list[list[float]] = [[] for _ in work]
        for r in range(rounds):
            order = range(len(work)) if r % 2 == 0 else reversed(range(len(work)))
            for i in order:
                times[i].append(batch(*work[i]))
        cells = []
        for t in times:
            ratio = statistics.median(a / b for a, b in zip(t, times[0], strict=True))
            cells.append(f"{min(t):6.2f} / {statistics.median(t):6.2f} ({ratio:.3f})")
        print(f"{scenario:10}" + "".join(f"{c:>28}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
