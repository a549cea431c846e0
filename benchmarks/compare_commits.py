"""Two versions of dtrio side by side: the embedded and sidecar rows of bench_peers.py, and the
CPU time of a lone orchestration step, run alternately for each version in every round, so that
the machine's drift hits both alike.

    git worktree add /tmp/dtrio-old <commit>
    python benchmarks/compare_commits.py /tmp/dtrio-old [--runs 5] [--only embedded,step,sidecar]

Each measurement runs in a fresh process with that version's own benchmark code and package.
Prints one table of medians (and the spread of the runs).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import median, python_banner, spread

HERE = Path(__file__).resolve().parent
NEW = HERE.parent

_SIDECAR = """
import sys, json, tempfile
import bench_sidecar
with tempfile.TemporaryDirectory() as tmp:
    print("RESULT " + json.dumps({"rate": bench_sidecar.one_run("dtrio", tmp, 1000)}))
"""

_STEP = """
import json, tempfile, trio
import bench_embedded as b
with tempfile.TemporaryDirectory() as tmp:
    costs = trio.run(b.history_step_cost, tmp, "NORMAL", (10, 100), 3)
print("RESULT " + json.dumps({"cpu": costs[10][1], "wall": costs[10][0]}))
"""


def measure(tree: Path, row: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(tree / "benchmarks")])}
    with tempfile.TemporaryDirectory() as tmp:
        if row == "sidecar":
            argv = [sys.executable, "-c", _SIDECAR]
        elif row == "step":
            argv = [sys.executable, "-c", _STEP]
        else:
            argv = [sys.executable, str(tree / "benchmarks" / "bench_peers.py"), "--measure",
                    f"dtrio:{row}", "--tmp", tmp, "--sync", "NORMAL"]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=1200, env=env,
                             cwd=tree / "benchmarks")
    found = re.search(r"^RESULT (.*)$", out.stdout, re.MULTILINE)
    if out.returncode != 0 or not found:
        raise RuntimeError(f"{tree} {row} failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(found.group(1))


MEASURES = {
    "embedded": [("rate", "1,000 three-activity sequences", "orch/s", "{:,.0f}"),
                 ("cpu", "  process CPU per orchestration", "ms", "{:.2f}")],
    "step": [("cpu", "one step alone (history of 10 events), CPU", "ms", "{:.3f}"),
             ("wall", "  the same, wall", "ms", "{:.3f}")],
    "sidecar": [("rate", "sidecar, official SDK worker, 1,000 orch.", "orch/s", "{:,.1f}")],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("old", type=Path, help="a checkout of the version to compare with")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", default="embedded,sidecar")
    args = parser.parse_args()
    rows = args.only.split(",")
    trees = {"old": args.old.resolve(), "new": NEW}
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for run in range(args.runs):
        for row in rows:
            # Alternate which version goes first, so neither always runs on a warmer machine.
            order = ["old", "new"] if run % 2 == 0 else ["new", "old"]
            for name in order:
                results.setdefault((row, name), []).append(measure(trees[name], row))
                print(f"run {run + 1}/{args.runs} {row} {name}: {results[row, name][-1]}",
                      file=sys.stderr, flush=True)
    print(python_banner())
    print(f"old: {trees['old']}  new: {trees['new']}  ({args.runs} runs, medians)\n")
    print("| measure | unit | old | new | new/old | runs vary (old / new) |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for row in rows:
        for key, label, unit, fmt in MEASURES[row]:
            old = [r[key] for r in results[row, "old"]]
            new = [r[key] for r in results[row, "new"]]
            print(f"| {label} | {unit} | {fmt.format(median(old))} | {fmt.format(median(new))} "
                  f"| {median(new) / median(old):.2f} | {spread(old):.0%} / {spread(new):.0%} |")


if __name__ == "__main__":
    main()
