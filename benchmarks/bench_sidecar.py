"""Sidecar benchmark: the official Python SDK against `python -m dtrio serve` and against the
SDK's own in-memory reference backend, alternating; prints a table of medians.

    python benchmarks/bench_sidecar.py [--runs 3] [--count 1000]

Each run starts a fresh server process (dtrio on a new SQLite file, or
`durabletask.testing.create_test_backend`) and a fresh driver process holding the SDK worker and
client, so no server shares a process, a GIL or warm state with the SDK. The driver schedules
`--count` three-activity orchestrations at once, waits for every one and reports
orchestrations/s from the first start to the last completion. The worker's concurrency settings
are fixed here and the same for both servers.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The SDK's own defaults (100 work items per core, cores + 4 threads), written out so that
# both servers see the same hints whatever the SDK's defaults become.
CORES = os.cpu_count() or 1
CONCURRENCY = {
    "maximum_concurrent_activity_work_items": 100 * CORES,
    "maximum_concurrent_orchestration_work_items": 100 * CORES,
    "maximum_thread_pool_workers": CORES + 4,
}


# -- the driver process: SDK worker and client -----------------------------------------------

def step(ctx, n: int) -> int:
    return n + 1


def three_steps(ctx, n: int):
    for _ in range(3):
        n = yield ctx.call_activity(step, input=n)
    return n


def drive(address: str, count: int) -> float:
    from durabletask import client as sdk_client
    from durabletask import worker as sdk_worker

    quiet = logging.getLogger("bench.sdk")
    quiet.setLevel(logging.WARNING)
    worker = sdk_worker.TaskHubGrpcWorker(
        host_address=address, logger=quiet,
        concurrency_options=sdk_worker.ConcurrencyOptions(**CONCURRENCY),
    )
    worker.add_orchestrator(three_steps)
    worker.add_activity(step)
    client = sdk_client.TaskHubGrpcClient(host_address=address, logger=quiet)
    worker.start()
    try:
        # Connected and warm before the clock starts.
        iid = client.schedule_new_orchestration(three_steps, input=0)
        client.wait_for_orchestration_completion(iid, timeout=60)
        begin = time.perf_counter()
        ids = [client.schedule_new_orchestration(three_steps, input=i) for i in range(count)]
        for i, iid in enumerate(ids):
            state = client.wait_for_orchestration_completion(iid, timeout=600)
            assert state is not None and state.serialized_output == str(i + 3), state
        return count / (time.perf_counter() - begin)
    finally:
        worker.stop()


# -- the server processes --------------------------------------------------------------------

def serve_reference(port: int) -> None:
    from durabletask.testing import create_test_backend

    backend = create_test_backend(port)
    print(f"listening on 127.0.0.1:{port}", flush=True)
    try:
        sys.stdin.read()  # until the benchmark closes our stdin
    finally:
        backend.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(kind: str, tmp: str, synchronous: str = "NORMAL") -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if kind == "dtrio":
        db = os.path.join(tmp, f"sidecar-{time.monotonic_ns()}.sqlite3")
        argv = ["-m", "dtrio", "serve", "--port", "0", "--db", db, "--log-level", "warning",
                "--synchronous", synchronous]
    else:
        argv = [__file__, "--serve-reference", str(_free_port())]
    server = subprocess.Popen(
        [sys.executable, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    line = server.stdout.readline()  # type: ignore[union-attr]
    found = re.search(r"listening on ([\d.]+:\d+)", line)
    if not found:
        server.kill()
        raise RuntimeError(f"{kind} server did not start: {line!r}")
    return server, found.group(1)


def _stop(server: subprocess.Popen[str]) -> None:
    server.terminate()  # SIGTERM: dtrio shuts down gracefully
    server.stdin.close()  # type: ignore[union-attr]
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def one_run(kind: str, tmp: str, count: int, synchronous: str = "NORMAL") -> float:
    server, address = _start(kind, tmp, synchronous)
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--drive", address, "--count", str(count)],
            capture_output=True, text=True, timeout=900, check=False,
        )
    finally:
        _stop(server)
    found = re.search(r"^rate ([\d.]+)$", out.stdout, re.MULTILINE)
    if out.returncode != 0 or not found:
        raise RuntimeError(f"driver against {kind} failed:\n{out.stdout}\n{out.stderr}")
    return float(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--drive", metavar="ADDRESS", help=argparse.SUPPRESS)
    parser.add_argument("--serve-reference", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        print(f"rate {drive(args.drive, args.count):.3f}", flush=True)
        return
    if args.serve_reference:
        serve_reference(args.serve_reference)
        return
    rates: dict[str, list[float]] = {"dtrio": [], "reference": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.runs):
            for kind in rates:
                rates[kind].append(one_run(kind, tmp, args.count))
                rate = rates[kind][-1]
                print(f"  {kind}: {rate:.0f} orchestrations/s", file=sys.stderr, flush=True)
    med = {kind: statistics.median(values) for kind, values in rates.items()}
    print(f"dtrio sidecar benchmark (official durabletask Python SDK worker and client in their "
          f"own process; dtrio on a SQLite file, WAL, synchronous=NORMAL; median of {args.runs} "
          f"runs, Python {sys.version.split()[0]}, {CORES} cores)")
    label = f"{args.count:,} three-activity orchestrations at once (orch/s)"
    print(f"| {'measure':<52} | {'dtrio':>7} | {'reference':>9} | {'ratio':>5} | {'target':>6} |")
    print(f"|{'-' * 54}|{'-' * 9}|{'-' * 11}|{'-' * 7}|{'-' * 8}|")
    print(f"| {label:<52} | {med['dtrio']:>7.0f} | {med['reference']:>9.0f} "
          f"| {med['dtrio'] / med['reference']:>5.2f} | {'>= 0.9':>6} |")

if __name__ == "__main__":
    main()
