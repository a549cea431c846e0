"""How long the dashboard's pages take on a large store: with 100,000 instances, the first page
of the list (with its counts per status), a filtered first page, a page deep in the keyset
paging, and an instance of 1,000+ events (history table and timeline).

    python benchmarks/bench_dashboard.py                     # 100,000 instances, SQLite
    python benchmarks/bench_dashboard.py --instances 20000 --requests 10
    python benchmarks/bench_dashboard.py --db postgresql://...   # an empty database

Server time is the `Server-Timing` header the dashboard sets (queries and rendering of the
page); round trip is the whole HTTP request on loopback, seen by the client. Seeding: instances
are started through the client (so they are PENDING, no worker runs them); then 1% are marked
FAILED and 60% COMPLETED with one UPDATE, so that the counts and the FAILED filter have
something to find. The big instance is run by an engine: 250 activities in sequence.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import calibrate, python_banner  # noqa: E402

import dtrio  # noqa: E402
from dtrio.backend import open_backend  # noqa: E402
from dtrio.clock import Clock  # noqa: E402
from dtrio.dashboard.service import serve_dashboard  # noqa: E402

registry = dtrio.Registry()
BIG_STEPS = 250  # 4 events per activity in sequence: 1,000 events and the start and end


@registry.activity
async def step(ctx, i):
    return i


@registry.orchestrator
async def long_run(ctx, n):
    for i in range(n):
        await ctx.call_activity(step, input=i)
    return n


async def _seed(client: dtrio.Client, instances: int) -> None:
    began = time.perf_counter()
    batch = 500
    for start in range(0, instances, batch):
        async with trio.open_nursery() as nursery:
            for i in range(start, min(start + batch, instances)):
                nursery.start_soon(lambda i=i: client.schedule_new_orchestration(
                    "not_run_here", instance_id=f"order-{i:07d}", input={"n": i}))
    print(f"seeded {instances:,} instances in {time.perf_counter() - began:.1f} s", flush=True)


def _mark_statuses(db: str) -> None:
    """1% FAILED, 60% COMPLETED: one statement, outside the engine (a benchmark's seeding)."""
    failed, completed = int(dtrio.OrchestrationStatus.FAILED), int(
        dtrio.OrchestrationStatus.COMPLETED)
    sql = (f"UPDATE instances SET status = CASE WHEN instance_id LIKE '%00' THEN {failed} "
           f"ELSE {completed} END WHERE instance_id LIKE 'order-%' "
           "AND (instance_id LIKE '%00' OR substr(instance_id, -1) IN ('0','1','2','3','4','5'))")
    if db.startswith(("postgresql://", "postgres://")):
        import psycopg

        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(sql.replace("substr(instance_id, -1)", "right(instance_id, 1)"))
    else:
        import sqlite3

        with sqlite3.connect(db) as conn:
            conn.execute(sql)


# The HTTP client runs in a process of its own, so that it takes no CPU or GIL from the server.
_CLIENT = """
import json, sys, time, urllib.request
url, n = sys.argv[1], int(sys.argv[2])
out = []
for _ in range(n):
    began = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as response:
        body = response.read()
        timing = response.headers["Server-Timing"]
    out.append(((time.perf_counter() - began) * 1000, float(timing.partition("dur=")[2]),
                len(body)))
print(json.dumps(out))
"""


async def _time(url: str, requests: int) -> tuple[list[float], list[float], int]:
    done = await trio.run_process([sys.executable, "-c", _CLIENT, url, str(requests)],
                                  capture_stdout=True)
    measured = json.loads(done.stdout)
    return [m[1] for m in measured], [m[0] for m in measured], measured[-1][2]


def _row(name: str, server: list[float], trip: list[float], size: int) -> str:
    p95 = sorted(server)[max(0, round(len(server) * 0.95) - 1)]
    ok = "yes" if statistics.median(server) < 300 and p95 < 300 else "NO"
    return (f"| {name} | {statistics.median(server):.1f} | {p95:.1f} | {max(server):.1f} | "
            f"{statistics.median(trip):.1f} | {size / 1024:.0f} KiB | {ok} |")


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or os.path.join(tmp, "dashboard.sqlite3")
        async with dtrio.open_engine(registry, db=db) as engine:
            await engine.client.schedule_new_orchestration(
                long_run, input=BIG_STEPS, instance_id="big-one")
            await engine.client.wait_for_orchestration_completion("big-one", timeout=600)
            events = len(await engine.client.get_orchestration_history("big-one"))
        # No engine from here on: the seeded instances are never run. The seeding's store is
        # closed and the dashboard opens the store afresh, as `python -m dtrio dashboard` would
        # (the seeding's store keeps what it wrote in a bounded cache, whose objects would make
        # every full garbage collection in this process slower).
        clock = Clock()
        backend = open_backend(db, clock)
        await _seed(dtrio.Client(backend, clock, poll_interval=None), args.instances)
        await backend.aclose()
        del backend
        gc.collect()
        await trio.to_thread.run_sync(_mark_statuses, db)
        backend = open_backend(db, clock)
        client = dtrio.Client(backend, clock, poll_interval=None)
        rows = []
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_dashboard, client, "127.0.0.1", 0)
            deep = min(50 * 1000, args.instances // 2)
            token = (await client.query_orchestrations(
                newest_first=True, page_size=deep)).continuation_token
            pages = [
                ("instances, first page (with counts)", "/"),
                ("instances, FAILED first page", "/?status=FAILED"),
                ("instances, name filter matching none", "/?name=nothing"),
                (f"instances, page {deep // 50 + 1:,} (keyset)", f"/?page={token}"),
                (f"instance with {events:,} events", "/instances/big-one"),
            ]
            for name, path in pages:
                await _time(url + path, 2)  # warm the caches
                server, trip, size = await _time(url + path, args.requests)
                rows.append(_row(name, server, trip, size))
            nursery.cancel_scope.cancel()
        await backend.aclose()
    print(f"\n{args.instances:,} instances, {'PostgreSQL' if args.db else 'SQLite'}; "
          f"{python_banner()}; calibration loop {calibrate():.1f} ms; {args.requests} requests "
          "per page (ms)\n")
    print("| page | server p50 | server p95 | server max | round trip p50 | size | < 300 ms |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--db", help="a postgresql:// URL of an empty database (default: "
                        "a SQLite file in a temporary directory)")
    trio.run(main, parser.parse_args())
