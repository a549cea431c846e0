"""Embedded-engine benchmarks: prints a table of medians.

    python benchmarks/bench_embedded.py [--runs 3] [--synchronous NORMAL|FULL]

Rows: 1,000 three-activity sequences started at once (durable SQLite file, WAL); one
orchestration at a time (p50/p99 latency); fan-out/fan-in of 100 activities with when_all.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import trio

import dtrio

registry = dtrio.Registry()


@registry.activity
async def step(ctx: dtrio.ActivityContext, n: int) -> int:
    return n + 1


@registry.orchestrator
async def three_steps(ctx: dtrio.OrchestrationContext, n: int) -> int:
    for _ in range(3):
        n = await ctx.call_activity(step, input=n)
    return n


@registry.orchestrator
async def fan_out(ctx: dtrio.OrchestrationContext, n: int) -> int:
    return sum(await dtrio.when_all([ctx.call_activity(step, input=i) for i in range(n)]))


def _db(tmp: str, name: str) -> str:
    return os.path.join(tmp, f"{name}-{time.monotonic_ns()}.sqlite3")


async def throughput(tmp: str, sync: str, count: int = 1000) -> float:
    async with dtrio.open_engine(registry, db=_db(tmp, "tp"), synchronous=sync) as engine:
        client = engine.client
        begin = time.perf_counter()
        ids: list[str] = []

        async def start(i: int) -> None:
            ids.append(await client.schedule_new_orchestration(three_steps, input=i))

        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(start, i)
        for iid in ids:
            state = await client.wait_for_orchestration_completion(iid, timeout=300)
            assert state.runtime_status == dtrio.OrchestrationStatus.COMPLETED, state
        return count / (time.perf_counter() - begin)


async def latency(tmp: str, sync: str, count: int = 200) -> tuple[float, float]:
    samples = []
    async with dtrio.open_engine(registry, db=_db(tmp, "lat"), synchronous=sync) as engine:
        client = engine.client
        for i in range(count + 10):
            begin = time.perf_counter()
            iid = await client.schedule_new_orchestration(three_steps, input=i)
            await client.wait_for_orchestration_completion(iid, timeout=30)
            if i >= 10:  # warm-up
                samples.append((time.perf_counter() - begin) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


async def fan_out_time(tmp: str, sync: str, width: int = 100) -> float:
    async with dtrio.open_engine(registry, db=_db(tmp, "fan"), synchronous=sync) as engine:
        client = engine.client
        begin = time.perf_counter()
        iid = await client.schedule_new_orchestration(fan_out, input=width)
        state = await client.wait_for_orchestration_completion(iid, timeout=60)
        assert state.output == sum(range(1, width + 1))
        return (time.perf_counter() - begin) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--synchronous", default="NORMAL")
    args = parser.parse_args()
    sync = args.synchronous
    rows: dict[str, list[float]] = {"tp": [], "p50": [], "p99": [], "fan": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.runs):
            rows["tp"].append(trio.run(throughput, tmp, sync))
            p50, p99 = trio.run(latency, tmp, sync)
            rows["p50"].append(p50)
            rows["p99"].append(p99)
            rows["fan"].append(trio.run(fan_out_time, tmp, sync))
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"dtrio embedded benchmark (SQLite file, WAL, synchronous={sync}, "
          f"median of {args.runs} runs, Python {sys.version.split()[0]}, {os.cpu_count()} cores)")
    print(f"| {'measure':<48} | {'dtrio':>10} | {'target':>9} |")
    print(f"|{'-' * 50}|{'-' * 12}|{'-' * 11}|")
    print(f"| {'1,000 three-activity sequences at once (orch/s)':<48} | {med['tp']:>10.0f} | {'>= 1000':>9} |")
    print(f"| {'one at a time, p50 latency (ms)':<48} | {med['p50']:>10.2f} | {'<= 2':>9} |")
    print(f"| {'one at a time, p99 latency (ms)':<48} | {med['p99']:>10.2f} | {'':>9} |")
    print(f"| {'fan-out/fan-in of 100 activities (ms)':<48} | {med['fan']:>10.1f} | {'<= 75':>9} |")


if __name__ == "__main__":
    main()
