"""dtrio on PostgreSQL: prints a table of medians.

    python benchmarks/bench_postgres.py [--runs 3] [--only embedded,latency,...] [--db URL]

Without `--db`, a throwaway cluster is started from the local server binaries, as the tests do
(tests/pg_cluster.py: fsync off, 127.0.0.1); every measure runs on a fresh database of its own.

Rows (`--only` takes their names):
  embedded     1,000 three-activity sequences started at once (one engine process), and the
               same on DBOS with a system database on the same server (peer_dbos_postgres.py,
               in a process of its own; skipped when `dbos` is not installed)
  latency      one three-activity orchestration at a time, p50 and p99
  fanout       fan-out/fan-in of 100 activities in one orchestration
  sidecar      `python -m dtrio serve --db <the database>` driven by the official Python SDK worker
               and client in a process of their own (bench_sidecar.py's driver): 1,000
               three-activity orchestrations at once
  scaling      1, 2 and 3 engine processes on one database sharing 600 three-activity sequences
               whose activities sleep 20 ms, each process running at most 10 activities at
               once (so capacity per process, not this machine's cores, is what is measured);
               a client-only engine in this process starts them and waits for them
  roundtrips   what the server received per orchestration: statements (each a round trip, or
               less when pipelined) and transactions, counted in the server's log (log_statement
               = all), for 1,000 sequences at once and for 100 one at a time (throwaway cluster
               only: it reads the server's log)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import trio
from _common import markdown_table, median, python_banner, spread

import dtrio

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
from pg_cluster import Cluster, fresh_database, own_cluster  # noqa: E402

ROWS = ("embedded", "latency", "fanout", "sidecar", "scaling", "roundtrips")
PROCESSES = (1, 2, 3)
SCALING_TOTAL = 600
ACTIVITIES_PER_PROCESS = 10

registry = dtrio.Registry()


@registry.activity
async def nap(ctx: dtrio.ActivityContext, n: int) -> int:
    await trio.sleep(0.020)
    return n + 1


@registry.orchestrator
async def sleepy_steps(ctx: dtrio.OrchestrationContext, n: int) -> int:
    for _ in range(3):
        n = await ctx.call_activity(nap, input=n)
    return n


# -- the scaling row: worker processes and a client-only engine --------------------------------

async def _worker(url: str) -> None:
    async with dtrio.open_engine(registry, db=url,
                                 max_concurrent_activities=ACTIVITIES_PER_PROCESS):
        print("ready", flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)  # until the benchmark closes stdin


async def _start_and_wait(url: str, total: int) -> float:
    async with dtrio.open_engine(dtrio.Registry(), db=url, local_workers=False) as engine:
        client = engine.client
        begin = time.perf_counter()
        ids = [await client.schedule_new_orchestration(sleepy_steps, input=i)
               for i in range(total)]
        for iid in ids:
            state = await client.wait_for_orchestration_completion(iid, timeout=300)
            assert state.runtime_status == dtrio.OrchestrationStatus.COMPLETED, state
        return total / (time.perf_counter() - begin)


def scaling(url: str, processes: int) -> float:
    """Orchestrations/s with `processes` engine processes sharing the work."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, HERE])}
    workers = [subprocess.Popen([sys.executable, __file__, "--worker", url], env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
               for _ in range(processes)]
    try:
        for worker in workers:
            assert worker.stdout.readline().strip() == "ready"
        return trio.run(_start_and_wait, url, SCALING_TOTAL)
    finally:
        for worker in workers:
            worker.stdin.close()
            worker.wait(timeout=60)


# -- statements and transactions per orchestration ---------------------------------------------

@contextmanager
def counted(cluster: Cluster, url: str) -> Iterator[dict[str, int]]:
    """Count what the server logs while the block runs: statements and transactions."""
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" SET log_statement = \'all\'')
    start = os.path.getsize(cluster.log)
    counts: dict[str, int] = {}
    yield counts
    with open(cluster.log, errors="replace") as log:
        log.seek(start)
        lines = [line for line in log if "LOG:  statement: " in line or "LOG:  execute " in line]
    counts["statements"] = len(lines)
    counts["transactions"] = sum(1 for line in lines if line.rstrip().endswith(": BEGIN"))


def round_trips(cluster: Cluster, at_once: bool) -> tuple[float, float]:
    import bench_embedded as b

    count = 1000 if at_once else 100
    with fresh_database(cluster.url) as url:
        with counted(cluster, url) as counts:
            if at_once:
                trio.run(b.throughput, "", "NORMAL", count, url)
            else:
                trio.run(b.latency, "", "NORMAL", count - 10, url)
    return counts["statements"] / count, counts["transactions"] / count


# -- the table ----------------------------------------------------------------------------------

def measure(row: str, server: str, cluster: Cluster | None) -> dict[str, float]:
    import bench_embedded as b

    if row == "roundtrips":
        assert cluster is not None
        statements, transactions = round_trips(cluster, at_once=True)
        one_statements, one_transactions = round_trips(cluster, at_once=False)
        return {"statements": statements, "transactions": transactions,
                "one statements": one_statements, "one transactions": one_transactions}
    with fresh_database(server) as url:
        if row == "embedded":
            rate = trio.run(b.throughput, "", "NORMAL", 1000, url)
            return {"rate": rate, **_dbos(server)}
        if row == "latency":
            p50, p99 = trio.run(b.latency, "", "NORMAL", 200, url)
            return {"p50": p50, "p99": p99}
        if row == "fanout":
            return {"100": trio.run(b.fan_out_time, "", "NORMAL", 100, url)}
        if row == "sidecar":
            return {"sidecar": _sidecar(url)}
    out = {}
    for processes in PROCESSES:
        with fresh_database(server) as url:
            out[f"p{processes}"] = scaling(url, processes)
    return out


def _sidecar(url: str) -> float:
    """The SDK driver's orchestrations/s against a sidecar on database `url`."""
    import bench_sidecar

    server = subprocess.Popen(
        [sys.executable, "-m", "dtrio", "serve", "--port", "0", "--db", url,
         "--log-level", "warning"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": ROOT})
    try:
        line = server.stdout.readline()  # type: ignore[union-attr]
        address = line.rsplit("listening on ", 1)[1].split()[0]
        out = subprocess.run(
            [sys.executable, bench_sidecar.__file__, "--drive", address, "--count", "1000"],
            capture_output=True, text=True, timeout=900, check=True).stdout
    finally:
        bench_sidecar._stop(server)
    return float(out.split("rate ", 1)[1].split()[0])


def _dbos(server: str) -> dict[str, float]:
    """DBOS's throughput on a fresh database of the same server (nothing without `dbos`)."""
    if importlib.util.find_spec("dbos") is None:
        return {}
    with fresh_database(server) as url:
        out = subprocess.run(
            [sys.executable, os.path.join(HERE, "peer_dbos_postgres.py"), url, "1000"],
            capture_output=True, text=True, timeout=900, check=True).stdout.split()
    return {"dbos rate": float(out[1])}


LINES = {
    "embedded": [("1,000 three-activity sequences at once", "orch/s", "rate", "{:,.0f}"),
                 ("the same on DBOS, same server", "orch/s", "dbos rate", "{:,.0f}")],
    "latency": [("one orchestration at a time, p50", "ms", "p50", "{:.2f}"),
                ("one orchestration at a time, p99", "ms", "p99", "{:.2f}")],
    "fanout": [("fan-out/fan-in of 100", "ms", "100", "{:,.1f}")],
    "sidecar": [("sidecar, official SDK worker, 1,000 at once", "orch/s", "sidecar", "{:,.0f}")],
    "scaling": [(f"{p} process{'es' if p > 1 else ''}, 20 ms activities, 10 at once each",
                 "orch/s", f"p{p}", "{:,.0f}") for p in PROCESSES],
    "roundtrips": [
        ("statements per orchestration, 1,000 at once", "", "statements", "{:.1f}"),
        ("transactions per orchestration, 1,000 at once", "", "transactions", "{:.1f}"),
        ("statements per orchestration, one at a time", "", "one statements", "{:.1f}"),
        ("transactions per orchestration, one at a time", "", "one transactions", "{:.1f}"),
    ],
}


def render(results: dict[str, list[dict[str, float]]], runs: int, where: str) -> str:
    head = ["measure", "unit", "dtrio on PostgreSQL", "runs vary"]
    table = []
    for row, lines in LINES.items():
        for label, unit, key, fmt in lines:
            values = [r[key] for r in results.get(row, []) if key in r]
            if values:
                table.append([label, unit, fmt.format(median(values)), f"{spread(values):.0%}"])
    scale = [median([r[f"p{p}"] for r in results.get("scaling", [])]) for p in PROCESSES
             if results.get("scaling")]
    if scale:
        table.append(["3 processes vs 1", "", f"{scale[-1] / scale[0]:.2f}x", ""])
    dbos = [r for r in results.get("embedded", []) if "dbos rate" in r]
    if dbos:
        ratio = median([r["rate"] / r["dbos rate"] for r in dbos])
        table.append(["dtrio vs DBOS, 1,000 at once (median of the runs' ratios)", "",
                      f"{ratio:.2f}x", ""])
    out = [f"dtrio on PostgreSQL ({where}): medians of {runs} runs, {python_banner()}.",
           *markdown_table(head, table)]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default=",".join(ROWS),
                        help=f"comma-separated rows: {','.join(ROWS)} (default: all)")
    parser.add_argument("--db", help="a PostgreSQL server to create databases on (default: a "
                        "throwaway cluster; the roundtrips row needs that)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        trio.run(_worker, args.worker)
        return
    rows = [r for r in ROWS if r in {x.strip() for x in args.only.split(",")}]
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(), (
        own_cluster() if args.db is None else _given(args.db)
    ) as cluster:
        server = cluster.url
        for run in range(args.runs):
            for row in rows:
                if row == "roundtrips" and args.db is not None:
                    continue
                result = measure(row, server, cluster if args.db is None else None)
                results.setdefault(row, []).append(result)
                shown = ", ".join(f"{k}={v:,.2f}" for k, v in result.items())
                print(f"  run {run + 1} {row}: {shown}", file=sys.stderr, flush=True)
    where = "a throwaway local cluster, fsync off" if args.db is None else "the given server"
    print(render(results, args.runs, where))


@contextmanager
def _given(url: str) -> Iterator[Cluster]:
    cluster = Cluster.__new__(Cluster)
    cluster.url = url
    yield cluster


if __name__ == "__main__":
    main()
