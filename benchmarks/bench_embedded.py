"""Embedded-engine benchmarks: prints a table of medians.

    python benchmarks/bench_embedded.py [--runs 3] [--synchronous NORMAL|FULL]

Rows: 1,000 three-activity sequences started at once (durable SQLite file, WAL); one
orchestration at a time (p50/p99 latency); fan-out/fan-in of 100 activities with when_all.

The measures are functions (`throughput`, `latency`, `fan_out_time`, `bounded_throughput`,
`history_step_cost`, `parked_rss`, `store_bytes`) that `bench_peers.py` also runs, one per
subprocess, next to the same measures for DBOS.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import trio
from _common import new_db as _new_db
from _common import rss_bytes, sqlite_used_bytes

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
async def parked(ctx: dtrio.OrchestrationContext, _input: None) -> str:
    return await ctx.wait_for_external_event("go")


@registry.orchestrator
async def fan_out(ctx: dtrio.OrchestrationContext, n: int) -> int:
    return sum(await dtrio.when_all([ctx.call_activity(step, input=i) for i in range(n)]))


def _db(tmp: str, name: str) -> str:
    return _new_db(tmp, name)


async def throughput(tmp: str, sync: str, count: int = 1000, db: str | None = None,
                     cpu: list[float] | None = None) -> float:
    """Orchestrations/s; with `cpu`, also appends this process's CPU ms per orchestration."""
    async with dtrio.open_engine(registry, db=db or _db(tmp, "tp"), synchronous=sync) as engine:
        client = engine.client
        begin = time.perf_counter()
        cpu_begin = time.process_time()
        ids: list[str] = []

        async def start(i: int) -> None:
            ids.append(await client.schedule_new_orchestration(three_steps, input=i))

        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(start, i)
        for iid in ids:
            state = await client.wait_for_orchestration_completion(iid, timeout=300)
            assert state.runtime_status == dtrio.OrchestrationStatus.COMPLETED, state
        if cpu is not None:
            cpu.append((time.process_time() - cpu_begin) * 1000 / count)
        return count / (time.perf_counter() - begin)


async def latency(tmp: str, sync: str, count: int = 200,
                  db: str | None = None) -> tuple[float, float]:
    samples = []
    async with dtrio.open_engine(registry, db=db or _db(tmp, "lat"), synchronous=sync) as engine:
        client = engine.client
        for i in range(count + 10):
            begin = time.perf_counter()
            iid = await client.schedule_new_orchestration(three_steps, input=i)
            await client.wait_for_orchestration_completion(iid, timeout=30)
            if i >= 10:  # warm-up
                samples.append((time.perf_counter() - begin) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


async def fan_out_time(tmp: str, sync: str, width: int = 100, db: str | None = None) -> float:
    async with dtrio.open_engine(registry, db=db or _db(tmp, "fan"), synchronous=sync) as engine:
        client = engine.client
        begin = time.perf_counter()
        iid = await client.schedule_new_orchestration(fan_out, input=width)
        state = await client.wait_for_orchestration_completion(iid, timeout=60)
        assert state.output == sum(range(1, width + 1))
        return (time.perf_counter() - begin) * 1000


async def bounded_throughput(tmp: str, sync: str, concurrency: int, total: int) -> float:
    """Orchestrations/s for `total` three-activity sequences, never more than `concurrency`
    in flight at once (a new one starts when one completes)."""
    async with dtrio.open_engine(registry, db=_db(tmp, "scale"), synchronous=sync) as engine:
        client = engine.client
        limit = trio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with limit:
                iid = await client.schedule_new_orchestration(three_steps, input=i)
                await client.wait_for_orchestration_completion(iid, timeout=300)

        begin = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(total):
                nursery.start_soon(one, i)
        return total / (time.perf_counter() - begin)


STEP_TIMES: dict[str, list[tuple[float, float]]] = {}


@registry.activity
async def timed_step(ctx: dtrio.ActivityContext, i: int) -> int:
    now = (time.perf_counter(), time.process_time())
    STEP_TIMES.setdefault(ctx.orchestration_id, []).append(now)
    return i


@registry.orchestrator
async def timed_steps(ctx: dtrio.OrchestrationContext, n: int) -> int:
    """n activities in sequence; when activity k runs the history holds 4 + 4k events
    (orchestratorStarted, taskCompleted, taskScheduled, orchestratorCompleted per step)."""
    for i in range(n):
        await ctx.call_activity(timed_step, input=i)
    return n


async def history_step_cost(
    tmp: str, sync: str, lengths: tuple[int, ...] = (10, 100, 1000), instances: int = 3
) -> dict[int, tuple[float, float]]:
    """Milliseconds per orchestration step (activity k to activity k+1: the step that records
    k's result, replays and schedules k+1, and the activity round trip) when the history holds
    about `length` events, as (wall time, this process's CPU time); one instance at a time, so
    nothing but history length changes; medians over a window of 11 steps around that length,
    over `instances` instances."""
    at = {length: max(0, (length - 4) // 4) for length in lengths}
    n = max(at.values()) + 8
    samples: dict[int, list[float]] = {length: [] for length in lengths}
    cpu: dict[int, list[float]] = {length: [] for length in lengths}
    async with dtrio.open_engine(registry, db=_db(tmp, "hist"), synchronous=sync) as engine:
        client = engine.client
        for _ in range(instances):
            iid = await client.schedule_new_orchestration(timed_steps, input=n)
            state = await client.wait_for_orchestration_completion(iid, timeout=600)
            assert state.output == n, state
            times = STEP_TIMES.pop(iid)
            for length, k in at.items():
                for j in range(max(0, k - 5), min(n - 1, k + 6)):
                    samples[length].append((times[j + 1][0] - times[j][0]) * 1000)
                    cpu[length].append((times[j + 1][1] - times[j][1]) * 1000)
    return {length: (statistics.median(samples[length]), statistics.median(cpu[length]))
            for length in lengths}


async def parked_rss(tmp: str, sync: str, count: int = 10_000) -> float:
    """Resident bytes per orchestration parked on an external event: RSS after `count`
    instances are waiting minus RSS before, over `count`."""
    import gc

    async with dtrio.open_engine(registry, db=_db(tmp, "park"), synchronous=sync) as engine:
        client = engine.client
        # Warm: code paths, caches and statements in use before the baseline.
        for i in range(50):
            await client.schedule_new_orchestration(parked, instance_id=f"warm-{i}")
            await client.wait_for_orchestration_start(f"warm-{i}", timeout=60)
            await client.raise_orchestration_event(f"warm-{i}", "go", "x")
            await client.wait_for_orchestration_completion(f"warm-{i}", timeout=60)
        gc.collect()
        before = rss_bytes()

        async def start(lo: int, hi: int) -> None:
            for i in range(lo, hi):
                await client.schedule_new_orchestration(parked, instance_id=f"p-{i}")

        async with trio.open_nursery() as nursery:
            for lo in range(0, count, 100):
                nursery.start_soon(start, lo, min(lo + 100, count))
        for i in range(count):  # RUNNING once its first step is committed, i.e. parked
            await client.wait_for_orchestration_start(f"p-{i}", timeout=600)
        gc.collect()
        after = rss_bytes()
        # Still alive: one of them finishes when told to.
        await client.raise_orchestration_event("p-0", "go", "x")
        state = await client.wait_for_orchestration_completion("p-0", timeout=60)
        assert state.output == "x", state
    return (after - before) / count


async def store_bytes(tmp: str, sync: str, count: int = 1000) -> float:
    """Bytes the SQLite file grows by per completed three-activity orchestration."""
    empty = _db(tmp, "empty")
    async with dtrio.open_engine(registry, db=empty, synchronous=sync):
        pass
    db = _db(tmp, "store")
    await throughput(tmp, sync, count, db=db)
    return (sqlite_used_bytes(db) - sqlite_used_bytes(empty)) / count


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
    print(f"| {'1,000 three-activity sequences at once (orch/s)':<48} "
          f"| {med['tp']:>10.0f} | {'>= 1000':>9} |")
    print(f"| {'one at a time, p50 latency (ms)':<48} | {med['p50']:>10.2f} | {'<= 2':>9} |")
    print(f"| {'one at a time, p99 latency (ms)':<48} | {med['p99']:>10.2f} | {'':>9} |")
    print(f"| {'fan-out/fan-in of 100 activities (ms)':<48} | {med['fan']:>10.1f} | {'<= 75':>9} |")


if __name__ == "__main__":
    main()
