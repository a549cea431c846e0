"""Profile one embedded-engine measure with pyinstrument and say where the time went.

    python benchmarks/profile_embedded.py throughput|latency|fanout10k|scaling1000|parked
        [--sync NORMAL] [--interval 0.001] [--statements]

Prints the measure's figure (slowed by the profiler), the share of samples by part (self time
grouped by module: dtrio's own modules, trio, the sqlite3 C calls, json, ...), and writes the
call tree to /tmp/dtrio-profile-<measure>.txt. With --statements, instead of profiling, it counts
the SQL statements and transactions each orchestration costs (one at a time and 1,000 at once).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

import bench_embedded as b  # noqa: E402
import trio  # noqa: E402

import dtrio  # noqa: E402

PARTS = (
    ("/dtrio/wire.py", "dtrio/wire.py (protobuf encoding)"),
    ("/dtrio/state.py", "dtrio/state.py (step -> commit plan)"),
    ("/dtrio/replay/", "dtrio/replay (replay core)"),
    ("/dtrio/backend/", "dtrio/backend (Python around SQL)"),
    ("/dtrio/services/", "dtrio/services (dispatchers)"),
    ("/dtrio/client.py", "dtrio/client.py"),
    ("/dtrio/history.py", "dtrio/history.py"),
    ("/dtrio/payloads.py", "dtrio/payloads.py (JSON payloads)"),
    ("/dtrio/signals.py", "dtrio/signals.py (wake-ups)"),
    ("/dtrio/_pb/", "betterproto2 classes"),
    ("betterproto2", "betterproto2 classes"),
    ("/dtrio/", "dtrio, other"),
    ("/trio/", "trio (scheduling, tasks, checkpoints)"),
    ("/json/", "json"),
    ("/outcome/", "trio (scheduling, tasks, checkpoints)"),
    ("bench_", "the benchmark itself"),
)


def _part(frame) -> str:  # noqa: ANN001
    path, fn = frame.file_path or "", frame.function or ""
    if fn.startswith(("Connection.", "Cursor.")):
        return "sqlite3 C calls (statements, commits)"
    if path in ("", "<built-in>"):
        return ""  # attributed to the caller
    if "generated methods trio" in path or "generated methods outcome" in path:
        return "trio (scheduling, tasks, checkpoints)"
    if "importlib" in path:
        return "imports on first use"
    if path == "<string>":
        return "dataclass __init__ (betterproto messages, work items)"
    for key, label in PARTS:
        if key in path:
            return label
    return "other: " + os.path.basename(path)


def _shares(session) -> list[tuple[str, float]]:  # noqa: ANN001
    totals: collections.Counter[str] = collections.Counter()

    def walk(frame, inherited: str) -> None:  # noqa: ANN001
        part = inherited if (frame.function or "").startswith("[") else (_part(frame) or inherited)
        totals[part] += frame.total_self_time
        for child in frame.children:
            walk(child, part)

    walk(session.root_frame(), "?")
    whole = sum(totals.values())
    return [(part, t / whole) for part, t in totals.most_common()]


MEASURES = {
    "throughput": lambda tmp, sync: trio.run(b.throughput, tmp, sync, 2000),
    "latency": lambda tmp, sync: trio.run(b.latency, tmp, sync, 500),
    "fanout10k": lambda tmp, sync: trio.run(b.fan_out_time, tmp, sync, 10_000),
    "scaling1000": lambda tmp, sync: trio.run(b.bounded_throughput, tmp, sync, 1000, 2000),
    "parked": lambda tmp, sync: trio.run(b.parked_rss, tmp, sync, 10_000),
}


def profile(name: str, sync: str, interval: float) -> None:
    from pyinstrument import Profiler

    import dtrio.backend.sqlite  # noqa: F401  imported before the profile starts
    import dtrio.services  # noqa: F401

    with tempfile.TemporaryDirectory() as tmp:
        profiler = Profiler(interval=interval, async_mode="disabled")
        profiler.start()
        result = MEASURES[name](tmp, sync)
        profiler.stop()
    tree = f"/tmp/dtrio-profile-{name}.txt"
    with open(tree, "w") as f:
        f.write(profiler.output_text(unicode=False, color=False))
    print(f"{name} (synchronous={sync}) under the profiler: {result}")
    print(f"share of samples by part (call tree in {tree}):")
    for part, share in _shares(profiler.last_session):
        if share >= 0.005:
            print(f"  {share:6.1%}  {part}")


async def _count(n: int, concurrent: bool, counts: collections.Counter[str]) -> None:
    def trace(sql: str) -> None:
        counts[" ".join(sql.split()[:3]).split("(")[0]] += 1

    with tempfile.TemporaryDirectory() as tmp:
        async with dtrio.open_engine(b.registry, db=os.path.join(tmp, "s.sqlite3")) as engine:
            engine.backend._store.conn.set_trace_callback(trace)  # type: ignore[attr-defined]

            async def one(i: int) -> None:
                iid = await engine.client.schedule_new_orchestration(b.three_steps, input=i)
                await engine.client.wait_for_orchestration_completion(iid, timeout=60)

            if concurrent:
                async with trio.open_nursery() as nursery:
                    for i in range(n):
                        nursery.start_soon(one, i)
            else:
                for i in range(n):
                    await one(i)
            engine.backend._store.conn.set_trace_callback(None)  # type: ignore[attr-defined]


def statements(n: int = 1000) -> None:
    for concurrent in (False, True):
        counts: collections.Counter[str] = collections.Counter()
        trio.run(_count, n, concurrent, counts)
        how = f"{n:,} at once" if concurrent else "one at a time"
        print(f"three-activity orchestrations, {how}: {sum(counts.values()) / n:.1f} statements "
              f"and {counts['COMMIT'] / n:.1f} transactions per orchestration")
        for sql, count in counts.most_common(16):
            print(f"  {count / n:6.2f}  {sql}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("measure", nargs="?", choices=sorted(MEASURES), default="throughput")
    parser.add_argument("--sync", default="NORMAL")
    parser.add_argument("--interval", type=float, default=0.001)
    parser.add_argument("--statements", action="store_true")
    args = parser.parse_args()
    if args.statements:
        statements()
    else:
        profile(args.measure, args.sync.upper(), args.interval)


if __name__ == "__main__":
    main()
