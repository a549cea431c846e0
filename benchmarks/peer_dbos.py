"""The same workloads on DBOS (PyPI `dbos`), embedded, with a SQLite system database.

For fairness the system database runs in WAL mode with the same `synchronous` setting as dtrio:
every SQLAlchemy connection DBOS opens gets `PRAGMA journal_mode=WAL` and
`PRAGMA synchronous=<setting>` (DBOS itself sets neither, so out of the box it uses SQLite's
rollback journal). Everything else is DBOS's default configuration (synchronous workflows and
steps on its thread pool, the way its documentation writes them), except that the throughput
run caps that pool at `DBOS_THREADS` threads (default 1; 0 leaves DBOS's default, one thread
per running workflow): 1,000 workflows on 1,000 threads ran about 1.4x slower here than on one
thread, and the comparison should be with DBOS at its best.

Import this module only in a process that measures DBOS: DBOS is a process-wide singleton.
"""

from __future__ import annotations

import os
import statistics
import time

import sqlalchemy as sa
from _common import new_db, sqlite_used_bytes
from dbos import DBOS
from sqlalchemy import event

_SYNCHRONOUS = ["NORMAL"]


@event.listens_for(sa.engine.Engine, "connect")
def _pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
    dbapi_conn.execute("PRAGMA journal_mode=WAL")
    dbapi_conn.execute(f"PRAGMA synchronous={_SYNCHRONOUS[0]}")


@DBOS.step()
def step(n: int) -> int:
    return n + 1


@DBOS.workflow()
def three_steps(n: int) -> int:
    for _ in range(3):
        n = step(n)
    return n


@DBOS.workflow()
def child(n: int) -> int:
    return step(n)


@DBOS.workflow()
def fan_out(n: int) -> int:
    handles = [DBOS.start_workflow(child, i) for i in range(n)]
    return sum(h.get_result() for h in handles)


def _dbos_instance():  # noqa: ANN202
    from dbos._dbos import _get_dbos_instance

    return _get_dbos_instance()


class _Launched:
    """DBOS launched on a fresh SQLite system database for the duration of the block."""

    def __init__(self, tmp: str, sync: str, name: str, threads: int = 0) -> None:
        self.db = new_db(tmp, f"dbos-{name}")
        self.threads = threads
        _SYNCHRONOUS[0] = sync.upper()

    def __enter__(self) -> _Launched:
        config = {
            "name": "bench",
            "system_database_url": f"sqlite:///{self.db}",
            "log_level": "WARNING",
        }
        if self.threads:
            config["max_executor_threads"] = self.threads
        DBOS(config=config)
        DBOS.launch()
        # Check what DBOS's connections really use.
        with _dbos_instance()._sys_db.engine.connect() as conn:
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
            level = conn.exec_driver_sql("PRAGMA synchronous").scalar()
        expected = {"NORMAL": 1, "FULL": 2}[_SYNCHRONOUS[0]]
        assert mode == "wal" and level == expected, (mode, level)
        return self

    def __exit__(self, *exc: object) -> None:
        DBOS.destroy()


def threads() -> int:
    return int(os.environ.get("DBOS_THREADS", "1"))


def throughput(tmp: str, sync: str, count: int = 1000, *, with_store: bool = False) -> dict:
    with _Launched(tmp, sync, "tp", threads()) as launched:
        three_steps(0)  # warm
        begin = time.perf_counter()
        cpu_begin = time.process_time()  # all threads of this process
        handles = [DBOS.start_workflow(three_steps, i) for i in range(count)]
        for i, handle in enumerate(handles):
            assert handle.get_result() == i + 3
        rate = count / (time.perf_counter() - begin)
        cpu_ms = (time.process_time() - cpu_begin) * 1000 / count
    result = {"rate": rate, "cpu": cpu_ms}
    if with_store:
        empty = _Launched(tmp, sync, "empty")
        with empty:
            pass
        used = sqlite_used_bytes(launched.db) - sqlite_used_bytes(empty.db)
        result["store"] = used / (count + 1)
    return result


def latency(tmp: str, sync: str, count: int = 200) -> dict:
    samples = []
    with _Launched(tmp, sync, "lat"):
        for i in range(count + 10):
            begin = time.perf_counter()
            assert three_steps(i) == i + 3
            if i >= 10:  # warm-up
                samples.append((time.perf_counter() - begin) * 1000)
    samples.sort()
    return {"p50": statistics.median(samples), "p99": samples[int(len(samples) * 0.99) - 1]}


def fan_out_time(tmp: str, sync: str, width: int = 100) -> float:
    """One workflow starting `width` child workflows (one step each) and summing their results,
    the usual way to fan out in DBOS."""
    with _Launched(tmp, sync, "fan"):
        fan_out(2)  # warm
        begin = time.perf_counter()
        assert fan_out(width) == sum(range(1, width + 1))
        return (time.perf_counter() - begin) * 1000


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        print(throughput(tmp, os.environ.get("SYNC", "NORMAL"), 200, with_store=True))
        print(latency(tmp, "NORMAL", 50))
        print(fan_out_time(tmp, "NORMAL", 100))
