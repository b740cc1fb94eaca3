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
