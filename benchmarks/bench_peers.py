"""dtrio side by side with its peers: prints one table of medians, ratios and targets.

    python benchmarks/bench_peers.py [--runs 3] [--only embedded,latency,...] [--sync NORMAL,FULL]

Rows (`--only` takes their names):
  embedded  1,000 three-activity sequences started at once, dtrio vs DBOS (both on a SQLite
            file in WAL mode)
  latency   one three-activity orchestration at a time, p50 and p99, dtrio vs DBOS
  fanout    fan-out/fan-in of 100 and of 10,000 activities in one orchestration (DBOS: one
            workflow starting 100 child workflows)
  sidecar   the official Python SDK worker running 1,000 three-activity orchestrations against
            `python -m dtrio serve` vs against the SDK's in-memory reference backend
            (bench_sidecar.py's machinery)
  memory    resident bytes per orchestration parked on an external event (10,000 of them) and
            the store's bytes per completed orchestration (DBOS's for comparison)
  scaling   throughput with at most 1, 10, 100 and 1,000 instances in flight (a new one starts
            as one completes), and the time of one step (activity k to activity k+1 of a lone
            instance) when its history holds 10, 100 and 1,000 events

Every measurement runs in a fresh subprocess (DBOS is a process-wide singleton, and resident
memory must not carry over), each row alternates dtrio and its peer within every run, and each
figure is the median of `--runs` runs at each `synchronous` setting. "runs vary" is
(max - min) / median over those runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from _common import calibrate, markdown_table, median, python_banner, spread

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ROWS = ("embedded", "latency", "fanout", "sidecar", "memory", "scaling")
SCALING_CONCURRENCY = (1, 10, 100, 1000)
SCALING_TOTAL = {1: 200, 10: 500, 100: 1000, 1000: 2000}
HISTORY_EVENTS = (10, 100, 1000)


# -- measurements, each run in a subprocess of its own -----------------------------------------

def _dtrio(name: str, tmp: str, sync: str) -> dict[str, float]:
    import bench_embedded as b
    import trio

    if name == "embedded":
        cpu: list[float] = []
        return {"rate": trio.run(b.throughput, tmp, sync, 1000, None, cpu), "cpu": cpu[0]}
    if name == "latency":
        p50, p99 = trio.run(b.latency, tmp, sync)
        return {"p50": p50, "p99": p99}
    if name == "fanout":
        return {"100": trio.run(b.fan_out_time, tmp, sync, 100),
                "10000": trio.run(b.fan_out_time, tmp, sync, 10_000)}
    if name == "memory":
        return {"parked": trio.run(b.parked_rss, tmp, sync),
                "store": trio.run(b.store_bytes, tmp, sync)}
    if name == "scaling":
        out = {}
        for c in SCALING_CONCURRENCY:
            out[f"c{c}"] = trio.run(b.bounded_throughput, tmp, sync, c, SCALING_TOTAL[c])
        costs = trio.run(b.history_step_cost, tmp, sync, HISTORY_EVENTS)
        out.update({f"h{events}": wall for events, (wall, _) in costs.items()})
        out.update({f"hc{events}": cpu for events, (_, cpu) in costs.items()})
        return out
    raise ValueError(name)


def _dbos(name: str, tmp: str, sync: str) -> dict[str, float]:
    import peer_dbos as d

    if name == "embedded":
        return d.throughput(tmp, sync)
    if name == "latency":
        return d.latency(tmp, sync)
    if name == "fanout":
        return {"100": d.fan_out_time(tmp, sync, 100)}
    if name == "memory":
        return {"store": d.throughput(tmp, sync, with_store=True)["store"]}
    raise ValueError(name)


def _measure_here(system: str, name: str, tmp: str, sync: str) -> None:
    before = calibrate()
    result = (_dtrio if system == "dtrio" else _dbos)(name, tmp, sync)
    result["calibration"] = min(before, calibrate())
    print("RESULT " + json.dumps(result), flush=True)


def measure(system: str, name: str, tmp: str, sync: str, dbos_threads: int = 1) -> dict[str, float]:
    """One measurement in a fresh process; the sidecar row runs bench_sidecar's processes."""
    if name == "sidecar":
        import bench_sidecar

        kind = "dtrio" if system == "dtrio" else "reference"
        return {"rate": bench_sidecar.one_run(kind, tmp, 1000, sync), "calibration": calibrate()}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, HERE]),
           "DBOS_THREADS": str(dbos_threads)}
    out = subprocess.run(
        [sys.executable, __file__, "--measure", f"{system}:{name}", "--tmp", tmp, "--sync", sync],
        capture_output=True, text=True, timeout=1200, check=False, env=env,
    )
    found = re.search(r"^RESULT (.*)$", out.stdout, re.MULTILINE)
    if out.returncode != 0 or not found:
        raise RuntimeError(f"{system} {name} ({sync}) failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(found.group(1))


# -- the table ----------------------------------------------------------------------------------

@dataclass
class Line:
    measure: str
    unit: str
    ours: tuple[str, str]  # (system, key) in the results
    peer: tuple[str, str] | None = None
    higher_is_better: bool = True
    target: str = ""
    met: Callable[[float, float | None, str], bool] | None = None  # (value, ratio, setting)
    fmt: str = "{:,.0f}"


def _rate_target(ours: float, ratio: float | None, setting: str) -> bool:
    return ours >= 1000 and ratio is not None and ratio >= 10


LINES: dict[str, list[Line]] = {
    "embedded": [
        Line("1. 1,000 three-activity sequences at once", "orch/s", ("dtrio", "rate"),
             ("dbos", "rate"), target=">= 1,000/s and >= 10x", met=_rate_target),
        Line("1. the same: process CPU time per orchestration", "ms", ("dtrio", "cpu"),
             ("dbos", "cpu"), higher_is_better=False, target="<= 1.0 ms",
             met=lambda v, r, s: v <= 1.0, fmt="{:.2f}"),
    ],
    "latency": [
        Line("2. one orchestration at a time, p50", "ms", ("dtrio", "p50"), ("dbos", "p50"),
             higher_is_better=False, target="<= 2 ms / 4 ms (FULL)",
             met=lambda v, r, s: v <= (4 if s == "FULL" else 2), fmt="{:.2f}"),
        Line("2. one orchestration at a time, p99", "ms", ("dtrio", "p99"), ("dbos", "p99"),
             higher_is_better=False, fmt="{:.2f}"),
    ],
    "fanout": [
        Line("3. fan-out/fan-in of 100", "ms", ("dtrio", "100"), ("dbos", "100"),
             higher_is_better=False, target="<= 20 ms", met=lambda v, r, s: v <= 20, fmt="{:,.1f}"),
        Line("3. fan-out/fan-in of 10,000", "ms", ("dtrio", "10000"), None,
             higher_is_better=False, target="<= 1,000 ms", met=lambda v, r, s: v <= 1000),
    ],
    "sidecar": [
        Line("4. sidecar: SDK worker, 1,000 three-activity orch.", "orch/s", ("dtrio", "rate"),
             ("reference", "rate"), target=">= 0.9x",
             met=lambda v, r, s: r is not None and r >= 0.9),
    ],
    "memory": [
        Line("5. resident bytes per parked orchestration (10,000)", "B", ("dtrio", "parked"),
             None, higher_is_better=False, target="<= 2 KB", met=lambda v, r, s: v <= 2_000),
        Line("5. store bytes per completed three-activity orch.", "B", ("dtrio", "store"),
             ("dbos", "store"), higher_is_better=False, target="below DBOS",
             met=lambda v, r, s: r is not None and r > 1),
    ],
    "scaling": [
        *(Line(f"6. throughput, at most {c:,} in flight", "orch/s", ("dtrio", f"c{c}"))
          for c in SCALING_CONCURRENCY),
        *(Line(f"6. one step at history of {e:,} events, wall", "ms", ("dtrio", f"h{e}"),
               higher_is_better=False, fmt="{:.3f}")
          for e in HISTORY_EVENTS),
        *(Line(f"6. one step at history of {e:,} events, CPU", "ms", ("dtrio", f"hc{e}"),
               higher_is_better=False, fmt="{:.3f}",
               target="flat" if e == HISTORY_EVENTS[-1] else "")
          for e in HISTORY_EVENTS),
    ],
}
PEER_NAME = {"dbos": "DBOS", "reference": "SDK in-memory"}


@dataclass
class Results:
    # (row, sync, system) -> list of result dicts, one per run
    runs: dict[tuple[str, str, str], list[dict[str, float]]] = field(
        default_factory=lambda: defaultdict(list)
    )

    def values(self, row: str, sync: str, system: str, key: str) -> list[float]:
        return [r[key] for r in self.runs[(row, sync, system)] if key in r]


def _fmt(values: list[float], fmt: str) -> str:
    return fmt.format(median(values)) if values else ""


def render(
    results: Results, rows: list[str], syncs: list[str], runs: int, dbos_threads: int
) -> str:
    """One line per measure; each setting of `synchronous` gets its own dtrio and peer column."""
    head = ["measure", "unit", *(f"dtrio {s}" for s in syncs), "peer",
            *(f"peer {s}" for s in syncs), "dtrio vs peer", "target", "met", "runs vary"]
    table = []
    for row in rows:
        for line in LINES[row]:
            ours = {s: results.values(row, s, *line.ours) for s in syncs}
            if not any(ours.values()):
                continue
            peer = {s: results.values(row, s, *line.peer) if line.peer else [] for s in syncs}
            ratios, mets, varies = [], [], []
            for s in syncs:
                ratio = None
                if ours[s] and peer[s]:
                    a, b = median(ours[s]), median(peer[s])
                    ratio = a / b if line.higher_is_better else b / a
                    ratios.append(f"{ratio:.2f}x")
                if line.met is not None and ours[s]:
                    mets.append("yes" if line.met(median(ours[s]), ratio, s) else "NO")
                if row == "scaling" and line.ours[1] == f"hc{HISTORY_EVENTS[-1]}":
                    first = results.values(row, s, "dtrio", f"hc{HISTORY_EVENTS[0]}")
                    if first and ours[s]:  # flat: within 1.5x of the cost at the shortest history
                        mets.append("yes" if median(ours[s]) <= 1.5 * median(first) else "NO")
                varies += [spread(v) for v in (ours[s], peer[s]) if v]
            table.append([
                line.measure, line.unit, *(_fmt(ours[s], line.fmt) for s in syncs),
                PEER_NAME.get(line.peer[0], "") if line.peer else "",
                *(_fmt(peer[s], line.fmt) for s in syncs),
                " / ".join(ratios), line.target, " / ".join(mets),
                f"{max(varies):.0%}" if varies else "",
            ])
    calibration = [r["calibration"] for rs in results.runs.values() for r in rs
                   if "calibration" in r]
    pool = f"{dbos_threads} executor thread(s)" if dbos_threads else "DBOS's default pool"
    out = [f"dtrio vs peers: medians of {runs} runs, SQLite files in WAL mode with synchronous="
           f"{' and '.join(syncs)}, {python_banner()}.",
           "dtrio vs peer: times better (rates: dtrio/peer; times and bytes: peer/dtrio), "
           f"one figure per setting; runs vary: largest (max-min)/median of a figure; DBOS "
           f"throughput on {pool}."]
    if calibration:
        out.append(f"Machine check: a fixed Python loop took {median(calibration):.1f} ms "
                   f"({min(calibration):.1f}-{max(calibration):.1f}) while these figures "
                   "were taken.")
    out += markdown_table(head, table)
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default=",".join(ROWS),
                        help=f"comma-separated rows: {','.join(ROWS)} (default: all)")
    parser.add_argument("--sync", default="NORMAL,FULL",
                        help="comma-separated SQLite synchronous settings (default: NORMAL,FULL)")
    parser.add_argument("--json", metavar="FILE", help="also write every run's figures here")
    parser.add_argument("--dbos-threads", type=int, default=1,
                        help="DBOS executor threads for its throughput run (default 1, its best "
                        "here; 0: DBOS's default of one per running workflow)")
    parser.add_argument("--render", metavar="FILE",
                        help="print the table again from a --json file instead of measuring")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    args = parser.parse_args()
    syncs = [s.strip().upper() for s in args.sync.split(",") if s.strip()]
    if args.measure:
        system, name = args.measure.split(":")
        _measure_here(system, name, args.tmp, syncs[0])
        return
    chosen = {r.strip() for r in args.only.split(",") if r.strip()}
    rows = [r for r in ROWS if r in chosen]
    unknown = chosen - set(ROWS)
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}; choose from {', '.join(ROWS)}")
    results = Results()
    if args.render:
        with open(args.render) as f:
            saved = json.load(f)
        for key, value in saved.items():
            results.runs[tuple(key.split("|"))] = value  # type: ignore[index]
        runs = max(len(v) for v in saved.values())
        print(render(results, rows, syncs, runs, args.dbos_threads))
        return
    begin = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            for row in rows:
                peers = {"sidecar": ["reference"], "memory": ["dbos"], "scaling": []}.get(
                    row, ["dbos"])
                for sync in syncs:
                    # Alternate, and swap who goes first every run.
                    order = ["dtrio", *peers] if run % 2 == 0 else [*peers, "dtrio"]
                    for system in order:
                        result = measure(system, row, tmp, sync, args.dbos_threads)
                        results.runs[(row, sync, system)].append(result)
                        shown = ", ".join(f"{k}={v:,.2f}" for k, v in result.items()
                                          if k != "calibration")
                        print(f"  run {run + 1} {row} {sync} {system}: {shown}",
                              file=sys.stderr, flush=True)
    print(f"({time.monotonic() - begin:.0f} s)", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"|".join(k): v for k, v in results.runs.items()}, f, indent=1)
    print(render(results, rows, syncs, args.runs, args.dbos_threads))


if __name__ == "__main__":
    main()
