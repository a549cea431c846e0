"""Instructions per embedded orchestration, counted by valgrind's callgrind: a steady A/B
measure on a busy machine, where CPU times drift with the other jobs.

    python benchmarks/instructions.py [TREE ...] [--small 100] [--large 500] [--step]

For each source tree (default: this one), runs `bench_embedded.throughput` under callgrind
twice, with `--small` and `--large` three-activity orchestrations at once, and prints the
difference of the two instruction counts over the difference of the orchestration counts: the
cost of one more orchestration, without the interpreter's start-up and imports. With --step, the
same for a lone orchestration's steps (`history_step_cost` one at a time: `--small` and
`--large` sequences of steps). Python's garbage collector runs as usual, so its share is in.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

_RUN = """
import sys, tempfile, trio
import bench_embedded as b
count, step = int(sys.argv[1]), sys.argv[2] == "step"
with tempfile.TemporaryDirectory() as tmp:
    if step:
        async def main():
            async with b.dtrio.open_engine(b.registry, db=b._db(tmp, "s")) as engine:
                iid = await engine.client.schedule_new_orchestration(b.timed_steps, input=count)
                await engine.client.wait_for_orchestration_completion(iid, timeout=3600)
        trio.run(main)
    else:
        trio.run(b.throughput, tmp, "NORMAL", count)
"""


def instructions(tree: Path, count: int, step: bool) -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(tree / "benchmarks")])}
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/out",
             sys.executable, "-c", _RUN, str(count), "step" if step else "throughput"],
            capture_output=True, text=True, env=env, cwd=tree / "benchmarks", check=True)
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise RuntimeError(out.stderr)
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("trees", nargs="*", type=Path, default=[HERE.parent])
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--large", type=int, default=500)
    parser.add_argument("--step", action="store_true")
    args = parser.parse_args()
    what = "step of a lone orchestration" if args.step else "orchestration, 1 of many at once"
    for tree in (tree.resolve() for tree in args.trees):
        small = instructions(tree, args.small, args.step)
        large = instructions(tree, args.large, args.step)
        per = (large - small) / (args.large - args.small)
        print(f"{tree}: {per / 1e6:.3f} M instructions per {what}", flush=True)


if __name__ == "__main__":
    main()
