"""The benchmark as a user runs it: it must measure the real runner and catch wrong replies.

Only correctness is asserted here (every reply validated, none wrong); the
figures themselves belong to ``make bench``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parent.parent / "bench"
pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="the load generator needs a C compiler")


def _bench(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "bench.json"
    run = [sys.executable, str(BENCH / "run.py"), "--duration", "0.3", "--warmup", "0.1", "--repeat", "1"]
    done = subprocess.run([*run, "--json", str(out), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(out.read_text())


def test_every_scenario_is_answered_correctly_by_the_runner_and_the_reference(tmp_path: Path) -> None:
    points = _bench(tmp_path, "--conns", "4", "--idle-conns", "0", "--burst-conns", "0", "--busy-poll")["points"]
    served = {(p["server"], p["scenario"]) for p in points}
    scenarios = ("stop", "async-stop", "rewrite", "var", "body", "resp", "async-wait", "sync-wait")
    assert served == {(s, c) for s in ("runner", "reference") for c in scenarios}
    for p in points:
        assert p["calls"] > 0 and p["errors"] == 0 and p["server_exit"] == 0, p
        assert 0 <= p["server_sys_s"] <= p["server_cpu_s"], p  # the kernel's part of the server's CPU


def test_idle_connections_are_all_answered(tmp_path: Path) -> None:
    args = ("--scenarios", "stop", "--servers", "runner", "--conns", "1", "--idle-conns", "200", "--burst-conns", "0")
    result = _bench(tmp_path, *args)
    idle = [p for p in result["points"] if p["conns"] == 200]
    assert idle and idle[0]["calls"] == 200 and idle[0]["errors"] == 0, idle
    assert idle[0]["server_idle_threads"] < 200  # idle connections hold no thread


def test_a_burst_of_fresh_connections_is_all_answered(tmp_path: Path) -> None:
    args = ("--scenarios", "stop", "--servers", "runner", "--conns", "1", "--idle-conns", "0", "--burst-conns", "300")
    burst = [p for p in _bench(tmp_path, *args)["points"] if p["mode"] == "burst"]
    assert burst and burst[0]["calls"] == 300 and burst[0]["errors"] == 0, burst


def test_the_load_generator_counts_replies_that_do_not_match_the_scenario(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import run  # bench/run.py: builds the load generator, writes the frames
    finally:
        sys.path.remove(str(BENCH))
    run.build_loadgen()
    run.frames.write(tmp_path / "frames")
    sock = tmp_path / "ref.sock"
    # A server answering rewrite calls while the load generator expects stops.
    server = run.Server(
        "reference", run.server_command("reference", "rewrite", sock, []), sock, tmp_path / "log", run.ROOT, None
    )
    try:
        cmd = [str(run.LOADGEN), "--socket", str(sock), "--frames", str(tmp_path / "frames"), "--scenario", "stop"]
        cmd += ["--conns", "2", "--duration", "0.3", "--warmup", "0"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    finally:
        server.stop()
    point = json.loads(done.stdout.splitlines()[-1])
    assert point["errors"] > 0, point


# A summary as valgrind 3.19's cachegrind prints it (--cache-sim=yes --branch-sim=yes).
_CACHEGRIND_SUMMARY = """\
==482== I   refs:      531,419,275
==482== I1  misses:      2,016,913
==482== LLi misses:         19,566
==482== I1  miss rate:        0.38%
==482== D   refs:      240,905,216  (159,475,342 rd   + 81,429,874 wr)
==482== D1  misses:      4,948,953  (  4,266,616 rd   +    682,337 wr)
==482== Branches:       90,327,144  ( 78,498,262 cond + 11,828,882 ind)
==482== Mispredicts:     9,292,747  (  5,547,036 cond +  3,745,711 ind)
"""


def test_cachegrind_reads_every_total_of_valgrinds_summary() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import cachegrind
    finally:
        sys.path.remove(str(BENCH))
    assert cachegrind.summary(_CACHEGRIND_SUMMARY) == {
        "I refs": 531_419_275,
        "I1 misses": 2_016_913,
        "D1 misses": 4_948_953,
        "Mispredicts": 9_292_747,
    }


def test_the_calls_cachegrind_counts_run_on_this_checkout() -> None:
    # The part that runs under valgrind, without it: one batch of each scenario.
    for scenario in ("stop", "rewrite", "var", "resp"):
        child = [sys.executable, str(BENCH / "cachegrind.py"), "--child", str(BENCH.parent), scenario, "1"]
        done = subprocess.run(child, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
