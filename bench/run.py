"""Benchmark driver: the runner against the reference server, scenario by scenario.

For every scenario and connection count it starts each server under test as a
real process on a Unix socket in a private temp dir, runs the C load generator
(bench/loadgen.c, built here with ``cc -O2`` when missing or stale) against it,
then stops the server with SIGTERM. Per point it records calls/s, p50/p99/max
latency, errors, the server's CPU time over the measured window (the load
generator samples /proc/<pid>/stat), the load generator's own CPU time, and the
server's peak RSS (VmHWM). With ``--repeat K`` each figure is the median of K
runs (errors are summed), and every runner figure is shown next to its ratio
to the reference server measured in the same run. An ``idle`` check opens
thousands of connections at once, holds them idle, then sends one call on each
(and reports the server's RSS per idle connection and its thread count). A
``burst`` check opens N fresh connections at the same instant, one call each,
each call's latency counted from that instant. ``--compare ROOT`` adds a
third server, the runner of another checkout (e.g. main before a change),
measured in the same run, point by point.

    python bench/run.py                      # everything (about 10 minutes)
    python bench/run.py --quick              # smoke test, under a minute
    python bench/run.py --pin --scenarios stop,body --conns 16 --json out.json
    python bench/run.py --pin --busy-poll    # the load generator never sleeps (see loadgen.c)
    python bench/run.py --pin --compare /path/to/main-checkout --scenarios stop,rewrite --conns 16,64

Run it with the interpreter that has the runner's dependencies (flatbuffers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BUILD = BENCH / "build"
LOADGEN = BUILD / "loadgen"
sys.path.insert(0, str(BENCH))

import frames  # noqa: E402  (lives next to this file)

SERVERS = ("reference", "runner", "baseline")
SERVER_CPU, CLIENT_CPU = 0, 1  # --pin: one vCPU each, so neither steals the other's time
STARTUP_TIMEOUT_S = 15
STOP_TIMEOUT_S = 10
DRAIN_S = 10
NOISE_CORES = 0.1  # other load above this during a run makes the run "disturbed"
# Numeric loadgen/driver fields whose median is reported (errors are summed instead).
MEDIAN_FIELDS = (
    "calls_per_s",
    "p50_us",
    "p99_us",
    "max_us",
    "server_cpu_s",
    "server_sys_s",
    "client_cpu_s",
    "machine_cpu_s",
    "seconds",
    "calls",
    "server_peak_rss_kb",
    "server_idle_rss_kb",
    "server_idle_threads",
    "server_base_rss_kb",
    "connect_s",
)


def build_loadgen() -> None:
    source = BENCH / "loadgen.c"
    if LOADGEN.exists() and LOADGEN.stat().st_mtime >= source.stat().st_mtime:
        return
    BUILD.mkdir(exist_ok=True)
    subprocess.run(["cc", "-O2", "-Wall", "-o", str(LOADGEN), str(source)], check=True)


def pinned(cpu: int | None) -> Callable[[], None] | None:
    """A preexec_fn that pins the child before exec, so every thread it starts inherits the mask."""
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def proc_status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


def process_figures(pid: int) -> list[dict]:
    """CPU seconds since start and peak RSS of the server process and of its children (workers)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids = [pid, *map(int, f.read().split())]
    except OSError:
        pids = [pid]
    out = []
    tick = os.sysconf("SC_CLK_TCK")
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out.append(
                {
                    "pid": p,
                    "cpu_s": (int(fields[11]) + int(fields[12])) / tick,
                    "peak_rss_kb": proc_status_kb(p, "VmHWM"),
                }
            )
        except (OSError, IndexError, ValueError):
            continue
    return out


def server_command(kind: str, scenario: str, sock: Path, runner_args: list[str]) -> list[str]:
    if kind in ("runner", "baseline"):
        args = ["-m", "runner", "run", "--socket", str(sock), "--plugins", str(_plugins_for(kind, sock.parent))]
        return [sys.executable, *args, "--log-level", "warning", *runner_args]
    return [sys.executable, str(BENCH / "reference.py"), "--socket", str(sock), "--scenario", scenario]


def _plugins_for(kind: str, tmp: Path) -> Path:
    """The bench plugins; for a baseline, only the sync ones (a checkout older than async plugins refuses to start)."""
    if kind == "runner":
        return BENCH / "plugins"
    sync = tmp / "baseline-plugins"
    if not sync.exists():
        sync.mkdir()
        for f in (BENCH / "plugins").glob("*.py"):
            if "async def" not in f.read_text():
                shutil.copy(f, sync / f.name)
    return sync


class Server:
    """One server under test, as a child process listening on ``sock``.

    It runs from ``root`` with ``root`` first on PYTHONPATH, so ``-m runner``
    imports that checkout's runner package.
    """

    def __init__(self, name: str, cmd: list[str], sock: Path, log: Path, root: Path, cpu: int | None) -> None:
        self.name, self.sock, self.log = name, sock, log
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out, preexec_fn=pinned(cpu)
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log.read_text()}")
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(str(self.sock))
                    return
                except (FileNotFoundError, ConnectionRefusedError):
                    time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.name} did not listen on {self.sock} within {STARTUP_TIMEOUT_S} s")

    @property
    def peak_rss_kb(self) -> int:
        return proc_status_kb(self.proc.pid, "VmHWM")

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def run_point(kind: str, scenario: str, conns: int, opts: argparse.Namespace, tmp: Path, mode: str = "load") -> dict:
    """Start ``kind``, load it with the load generator, stop it; returns the point's figures."""
    sock = tmp / f"{kind}.sock"
    cpu = SERVER_CPU if opts.pin else None
    runner_args = {"runner": shlex.split(opts.runner_args), "baseline": shlex.split(opts.baseline_args)}.get(kind, [])
    if kind == "runner" and opts.workers > 1:
        runner_args += ["--workers", str(opts.workers)]
    if mode != "load" and kind == "runner":
        runner_args += ["--max-connections", str(conns + 64)]
    command = server_command(kind, scenario, sock, runner_args)
    root = opts.compare if kind == "baseline" else opts.runner_root
    server = Server(kind, command, sock, tmp / f"{kind}.log", root, cpu)
    cmd = [str(LOADGEN), "--socket", str(sock), "--frames", str(tmp / "frames"), "--scenario", scenario]
    cmd += ["--conns", str(conns), "--server-pid", str(server.proc.pid), "--drain", str(DRAIN_S)]
    if mode == "idle":
        cmd += ["--idle-hold", str(opts.idle_hold), "--duration", str(opts.idle_timeout)]
        budget = opts.idle_hold + opts.idle_timeout + 60
    elif mode == "burst":
        cmd += ["--burst", "--duration", str(opts.idle_timeout)]
        budget = opts.idle_timeout + 60
    else:
        cmd += ["--duration", str(opts.duration), "--warmup", str(opts.warmup)]
        cmd += ["--busy-poll"] if opts.busy_poll else []
        budget = opts.warmup + opts.duration + DRAIN_S + 30
    try:
        client_cpu = CLIENT_CPU if opts.pin else None
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=budget, preexec_fn=pinned(client_cpu))
        peak = server.peak_rss_kb
        procs = process_figures(server.proc.pid)
    finally:
        exit_status = server.stop()
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed against {kind} ({scenario}, {conns} conns):\n{done.stderr}")
    point = json.loads(done.stdout.splitlines()[-1])
    point.update(server=kind, server_peak_rss_kb=peak, server_exit=exit_status, server_processes=procs)
    if done.stderr:
        point["loadgen_stderr"] = done.stderr[-4000:]
    if point["errors"] or exit_status:
        print(f"! {kind} {scenario} x{conns}: {point['errors']} errors, exit status {exit_status}", file=sys.stderr)
        print(done.stderr + server.log.read_text()[-2000:], file=sys.stderr)
    return point


def other_cores(point: dict) -> float:
    """CPU that neither the server nor the load generator used during the window: other load."""
    if point["machine_cpu_s"] < 0 or point["server_cpu_s"] < 0:  # unknown (e.g. the server died)
        return 0.0
    busy = point["machine_cpu_s"] - point["server_cpu_s"] - point["client_cpu_s"]
    return max(0.0, busy) / point["seconds"]


def summarise(points: list[dict]) -> dict[tuple, dict]:
    """Median of every figure per (server, scenario, mode, conns); errors are summed.

    Runs disturbed by other load on the machine are left out of the median
    when the point has at least one undisturbed run.
    """
    groups: dict[tuple, list[dict]] = {}
    for p in points:
        groups.setdefault((p["server"], p["scenario"], p["mode"], p["conns"]), []).append(p)
    out = {}
    for key, ps in groups.items():
        clean = [p for p in ps if other_cores(p) <= NOISE_CORES] or ps
        row = {f: statistics.median(p[f] for p in clean) for f in MEDIAN_FIELDS}
        row["errors"] = sum(p["errors"] for p in ps)
        row["runs"] = f"{len(clean)}/{len(ps)}"
        row["server_cpu_us_per_call"] = row["server_cpu_s"] / row["calls"] * 1e6 if row["calls"] else 0
        row["server_sys_us_per_call"] = row["server_sys_s"] / row["calls"] * 1e6 if row["calls"] else 0
        row["server_cores"] = row["server_cpu_s"] / row["seconds"]
        row["client_cores"] = row["client_cpu_s"] / row["seconds"]
        row["other_cores"] = statistics.median(other_cores(p) for p in clean)
        row["rss_per_conn_kb"] = (
            (row["server_idle_rss_kb"] - row["server_base_rss_kb"]) / key[3] if row["server_idle_rss_kb"] > 0 else 0
        )
        out[key] = row
    return out


# Table columns: (heading, field, decimals, scale). Ratios are shown for every
# server-side figure; errors and the load generator's CPU get none.
LOAD_COLUMNS = [
    ("calls/s", "calls_per_s", 0, 1),
    ("p50 µs", "p50_us", 0, 1),
    ("p99 µs", "p99_us", 0, 1),
    ("max µs", "max_us", 0, 1),
    ("errors", "errors", 0, 1),
    ("server CPU µs/call", "server_cpu_us_per_call", 1, 1),
    ("of which kernel", "server_sys_us_per_call", 1, 1),
    ("server cores", "server_cores", 2, 1),
    ("client cores", "client_cores", 2, 1),
    ("other cores", "other_cores", 2, 1),
    ("peak RSS MiB", "server_peak_rss_kb", 1, 1 / 1024),
    ("runs used", "runs", None, 1),
]
IDLE_COLUMNS = [
    ("answered", "calls", 0, 1),
    ("errors", "errors", 0, 1),
    ("connect s", "connect_s", 2, 1),
    ("idle RSS MiB", "server_idle_rss_kb", 1, 1 / 1024),
    ("RSS KiB per idle conn", "rss_per_conn_kb", 1, 1),
    ("threads", "server_idle_threads", 0, 1),
    ("peak RSS MiB", "server_peak_rss_kb", 1, 1 / 1024),
    ("p50 µs", "p50_us", 0, 1),
    ("max µs", "max_us", 0, 1),
]
BURST_COLUMNS = [
    ("answered", "calls", 0, 1),
    ("errors", "errors", 0, 1),
    ("p50 ms", "p50_us", 1, 1 / 1000),
    ("p99 ms", "p99_us", 1, 1 / 1000),
    ("max ms", "max_us", 1, 1 / 1000),
    ("threads after", "server_idle_threads", 0, 1),
    ("peak RSS MiB", "server_peak_rss_kb", 1, 1 / 1024),
    ("server CPU s", "server_cpu_s", 2, 1),
]
NO_RATIO = {"errors", "client_cores", "other_cores", "calls"}


def cell(row: dict, ref: dict | None, field: str, decimals: int | None, scale: float) -> str:
    if decimals is None:
        return str(row[field])
    text = f"{row[field] * scale:,.{decimals}f}"
    if ref is not None and ref.get(field) and field not in NO_RATIO:
        text += f" ({row[field] / ref[field]:.2f}×)"
    return text


def table(summary: dict[tuple, dict], mode: str, columns: list[tuple]) -> list[str]:
    """Markdown rows, each runner row right after the reference row it is compared with."""
    headings = ["server", "scenario", "conns"] + [c[0] for c in columns]
    lines = ["| " + " | ".join(headings) + " |", "|---|---|" + "--:|" * (len(headings) - 2)]
    order = list(frames.SCENARIOS)
    for key in sorted(summary, key=lambda k: (order.index(k[1]), k[3], k[0])):
        server, scenario, row_mode, conns = key
        if row_mode != mode:
            continue
        ref = summary.get(("reference", scenario, mode, conns)) if server != "reference" else None
        cells = [server, scenario, str(conns)] + [cell(summary[key], ref, *c[1:]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenarios", default=",".join(frames.SCENARIOS), help="comma-separated (default: all)")
    p.add_argument("--conns", default="1,4,16,64", help="comma-separated connection counts")
    p.add_argument("--servers", default=",".join(SERVERS), help="runner, reference or both")
    p.add_argument("--duration", type=float, default=3.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each point")
    p.add_argument("--repeat", type=int, default=3, help="runs per point; the median is reported")
    p.add_argument("--pin", action="store_true", help=f"server on CPU {SERVER_CPU}, load generator on CPU {CLIENT_CPU}")
    p.add_argument(
        "--busy-poll",
        action="store_true",
        help="load generator polls instead of sleeping (replies then wake no idle CPU: the cost under load)",
    )
    p.add_argument("--idle-conns", type=int, default=2000, help="connections for the idle check (0: skip it)")
    p.add_argument("--idle-hold", type=float, default=2.0, help="seconds the idle connections stay idle")
    p.add_argument("--idle-timeout", type=float, default=30.0, help="seconds to wait for every idle/burst answer")
    p.add_argument("--burst-conns", help="fresh connections per burst check (default 2000,10000; 0: skip it)")
    p.add_argument("--runner-args", default="", help='extra flags for the runner, e.g. "--cpu auto"')
    p.add_argument("--workers", type=int, default=1, help="runner worker processes (--workers of the runner)")
    p.add_argument("--runner-root", type=Path, default=ROOT, help="checkout whose runner package to run")
    p.add_argument("--compare", type=Path, help="also run the runner of this checkout, as server 'baseline'")
    p.add_argument("--baseline-args", default="", help="extra flags for the baseline runner")
    p.add_argument("--json", type=Path, help="write raw and summarised results to this file")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 and 16 conns, short points, one run")
    opts = p.parse_args(argv)
    if opts.quick:
        opts.conns, opts.duration, opts.warmup, opts.repeat, opts.idle_hold = "1,16", 0.5, 0.2, 1, 0.5
        opts.burst_conns = opts.burst_conns or "500"
    opts.scenarios = opts.scenarios.split(",")
    opts.conns = [int(c) for c in opts.conns.split(",")]
    opts.servers = [s for s in SERVERS if s in opts.servers.split(",") and s != "baseline"]
    if opts.compare:
        opts.servers.append("baseline")
    opts.burst_conns = [int(c) for c in (opts.burst_conns or "2000,10000").split(",") if int(c)]
    unknown = set(opts.scenarios) - set(frames.SCENARIOS)
    if unknown or not opts.servers:
        p.error(f"unknown scenario(s) {sorted(unknown)} or no server selected")
    if opts.pin and len(os.sched_getaffinity(0)) < 2:
        p.error("--pin needs two CPUs")
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    build_loadgen()
    # Each idle connection is one descriptor in the load generator and one in the server.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if max(opts.idle_conns, *opts.burst_conns, 0) + 64 > hard:
        print(f"warning: RLIMIT_NOFILE hard limit {hard} is too low for {opts.idle_conns} connections", file=sys.stderr)

    points: list[dict] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="a6bench-") as tmp_name:
        tmp = Path(tmp_name)
        frames.write(tmp / "frames")
        # Repeats are the outer loop and the servers alternate per point, so a
        # slow phase of the machine hits both servers alike.
        for rep in range(opts.repeat):
            for scenario in opts.scenarios:
                for conns in opts.conns:
                    for kind in opts.servers:
                        point = run_point(kind, scenario, conns, opts, tmp)
                        point["repeat"] = rep
                        points.append(point)
                        print(
                            f"  [{time.monotonic() - started:6.1f}s] {kind:9} {scenario:7} x{conns:<3} "
                            f"{point['calls_per_s']:>10,.0f} calls/s  {point['errors']} errors",
                            file=sys.stderr,
                        )
        if opts.idle_conns:
            for kind in opts.servers:
                points.append(run_point(kind, "stop", opts.idle_conns, opts, tmp, mode="idle"))
        for conns in opts.burst_conns:
            for kind in opts.servers:
                points.append(run_point(kind, "stop", conns, opts, tmp, mode="burst"))

    summary = summarise(points)
    out = [
        "# apisix-python-runner benchmark",
        "",
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{'pinned (server CPU 0, load generator CPU 1)' if opts.pin else 'unpinned'}, "
        f"load generator {'busy-polling' if opts.busy_poll else 'sleeping in epoll_wait'}, "
        f"runner flags: {opts.runner_args or 'none'}, "
        f"{opts.duration:g} s per point after {opts.warmup:g} s warm-up, median of {opts.repeat} run(s).",
        "Runner cells show (runner / reference) in parentheses.",
        "Cores: CPU used during the measured window by the server, by the load generator, and by everything else",
        f"on the machine. Runs with other load above {NOISE_CORES:g} core are left out of the median when the point",
        "has an undisturbed run (runs used: kept/all).",
        "",
    ]
    out += table(summary, "load", LOAD_COLUMNS)
    if opts.idle_conns:
        out += ["", f"## idle: {opts.idle_conns} connections held {opts.idle_hold:g} s, then one call on each", ""]
        out += table(summary, "idle", IDLE_COLUMNS)
    if opts.burst_conns:
        out += ["", "## burst: fresh connections opened at one instant, one call each (latency from then)", ""]
        out += table(summary, "burst", BURST_COLUMNS)
    print("\n".join(out))
    if opts.json:
        rows = [dict(zip(("server", "scenario", "mode", "conns"), k, strict=True), **v) for k, v in summary.items()]
        options = {k: str(v) if isinstance(v, Path) else v for k, v in vars(opts).items()}
        opts.json.write_text(json.dumps({"options": options, "points": points, "summary": rows}, indent=2))
    # The runner's errors fail the run; the reference's (it has no bounds) are only reported.
    mine = [p for p in points if p["server"] != "reference"]
    failed = sum(p["errors"] for p in mine) + sum(1 for p in mine if p["server_exit"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
