"""The sidecar server's own CPU per orchestration, for one or more versions of dtrio.

    python benchmarks/bench_sidecar_cpu.py [LABEL=]TREE ... [--runs 5] [--count 1000]

A TREE is a directory holding a `dtrio` package (this checkout, or an export of another commit:
`git archive <commit> | tar -x -C /tmp/dtrio-old`). Each run starts `python -m dtrio serve` on
a fresh SQLite file (WAL, synchronous=NORMAL) from every tree in turn, the order rotating from
run to run, and drives it with bench_sidecar.py's driver (the official Python SDK worker and
client in a process of their own, 1 warm-up then `--count` three-activity orchestrations at
once). The server's user+system CPU time is read from /proc/<pid>/stat just before the driver
starts and just after it exits, and divided by the orchestrations it ran; orch/s is the
driver's. Prints one table of medians with the range over the runs. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import median, python_banner

HERE = Path(__file__).resolve().parent
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process `pid`, all its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15)


def _env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree)}


def which_dtrio(tree: Path) -> str:
    out = subprocess.run([sys.executable, "-c", "import dtrio; print(dtrio.__file__)"],
                         capture_output=True, text=True, env=_env(tree), cwd=tree, check=True)
    return out.stdout.strip()


def one_run(tree: Path, tmp: str, count: int) -> tuple[float, float]:
    """(server CPU ms per orchestration, orchestrations/s) for one server and one driver."""
    db = os.path.join(tmp, f"sidecar-{os.getpid()}-{len(os.listdir(tmp))}.sqlite3")
    server = subprocess.Popen(
        [sys.executable, "-m", "dtrio", "serve", "--port", "0", "--db", db,
         "--log-level", "warning", "--synchronous", "NORMAL"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env(tree), cwd=tree,
    )
    try:
        line = server.stdout.readline()  # type: ignore[union-attr]
        found = re.search(r"listening on ([\d.]+:\d+)", line)
        if not found:
            raise RuntimeError(f"{tree}: the server did not start: {line!r}")
        before = cpu_seconds(server.pid)
        out = subprocess.run(
            [sys.executable, str(HERE / "bench_sidecar.py"), "--drive", found.group(1),
             "--count", str(count)],
            capture_output=True, text=True, timeout=900, check=False,
        )
        used = cpu_seconds(server.pid) - before
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    rate = re.search(r"^rate ([\d.]+)$", out.stdout, re.MULTILINE)
    if out.returncode != 0 or not rate:
        raise RuntimeError(f"driver against {tree} failed:\n{out.stdout}\n{out.stderr}")
    return used / (count + 1) * 1000, float(rate.group(1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("trees", nargs="+", metavar="[LABEL=]TREE")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()
    trees: dict[str, Path] = {}
    for spec in args.trees:
        label, _, path = spec.rpartition("=")
        tree = Path(path).resolve()
        trees[label or tree.name] = tree
        print(f"{label or tree.name}: {which_dtrio(tree)}", file=sys.stderr)
    results: dict[str, list[tuple[float, float]]] = {label: [] for label in trees}
    labels = list(trees)
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            shift = run % len(labels)
            for label in labels[shift:] + labels[:shift]:
                results[label].append(one_run(trees[label], tmp, args.count))
                cpu, rate = results[label][-1]
                print(f"run {run + 1}/{args.runs} {label}: {cpu:.2f} ms CPU/orch, "
                      f"{rate:.1f} orch/s", file=sys.stderr, flush=True)
    print(f"{python_banner()}; {args.count:,} three-activity orchestrations per run, "
          f"medians of {args.runs} alternating runs (min-max)\n")
    print("| server | server CPU per orchestration (ms) | orchestrations/s |")
    print("| --- | ---: | ---: |")
    for label, rows in results.items():
        cpus, rates = [r[0] for r in rows], [r[1] for r in rows]
        print(f"| {label} | {median(cpus):.2f} ({min(cpus):.2f}-{max(cpus):.2f}) "
              f"| {median(rates):.1f} ({min(rates):.1f}-{max(rates):.1f}) |")


if __name__ == "__main__":
    main()
