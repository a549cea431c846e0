"""DBOS (PyPI `dbos`) on a PostgreSQL system database: the embedded throughput workload, for
`bench_postgres.py` to set beside dtrio's on the same server.

    python benchmarks/peer_dbos_postgres.py URL [COUNT]

Prints one line, `rate <orch/s> cpu <ms per orchestration>`. DBOS runs with its default
configuration except its thread pool, capped at `DBOS_THREADS` threads (default 1) as in
`peer_dbos.py`, DBOS's best here. Run it in a process of its own: DBOS is a process-wide
singleton.
"""

from __future__ import annotations

import os
import sys
import time

from dbos import DBOS


@DBOS.step()
def step(n: int) -> int:
    return n + 1


@DBOS.workflow()
def three_steps(n: int) -> int:
    for _ in range(3):
        n = step(n)
    return n


def throughput(url: str, count: int) -> tuple[float, float]:
    config = {"name": "bench", "system_database_url": url, "log_level": "WARNING"}
    threads = int(os.environ.get("DBOS_THREADS", "1"))
    if threads:
        config["max_executor_threads"] = threads
    DBOS(config=config)
    DBOS.launch()
    try:
        three_steps(0)  # warm
        begin, cpu_begin = time.perf_counter(), time.process_time()
        handles = [DBOS.start_workflow(three_steps, i) for i in range(count)]
        for i, handle in enumerate(handles):
            assert handle.get_result() == i + 3
        return (count / (time.perf_counter() - begin),
                (time.process_time() - cpu_begin) * 1000 / count)
    finally:
        DBOS.destroy()


if __name__ == "__main__":
    rate, cpu = throughput(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1000)
    print(f"rate {rate:.3f} cpu {cpu:.4f}", flush=True)
