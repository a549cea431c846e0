"""Soak: many orchestrations through `python -m dtrio serve` while the official Python SDK's
worker processes are killed (SIGKILL) and started again every few seconds, and the sidecar
itself is stopped (SIGTERM) and started again on the same store once; then every instance is
checked and the sidecar's resident memory, sampled every second, is printed as a text plot.

    python benchmarks/soak.py [--count 10000] [--workers 2] [--kill-every 3]

Half the instances are scheduled before the workers start; the sidecar is restarted once a
quarter of all have completed (the first half still in flight), and the second half is scheduled
on the new sidecar. "Nothing lost" means: every instance COMPLETED with its own output, and its
history (read back through the SDK) holds one ExecutionCompleted and one TaskCompleted per
scheduled task. Exits non-zero if anything was lost.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPLETED = 1  # OrchestrationStatus.COMPLETED, as the sidecar stores it


# -- the worker process: an official SDK worker until it is killed ---------------------------

def double(ctx, n: int) -> int:
    return 2 * n


def soaked(ctx, n: int):
    once = yield ctx.call_activity(double, input=n)
    twice = yield ctx.call_activity(double, input=once)
    return twice + 1


def expected_output(n: int) -> str:
    return str(4 * n + 1)


def _quiet() -> logging.Logger:
    # The SDK logs every call at INFO, and every reconnect while the sidecar is away.
    quiet = logging.getLogger("soak.sdk")
    quiet.setLevel(logging.CRITICAL)
    return quiet


def run_worker(address: str) -> None:
    from durabletask import worker as sdk_worker

    worker = sdk_worker.TaskHubGrpcWorker(host_address=address, logger=_quiet())
    worker.add_orchestrator(soaked)
    worker.add_activity(double)
    worker.start()
    threading.Event().wait()  # until killed


# -- the processes the soak drives --------------------------------------------------------------

def start_sidecar(db: Path, port: int, log: Path) -> tuple[subprocess.Popen[str], int]:
    """`python -m dtrio serve` on `db` (port 0: any free port); returns it and its port."""
    with log.open("a") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "dtrio", "serve", "--port", str(port), "--db", str(db),
             "--log-level", "warning"],
            stdout=subprocess.PIPE, stderr=err, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
    line = process.stdout.readline()  # type: ignore[union-attr]
    found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
    if not found:
        process.kill()
        raise RuntimeError(f"the sidecar did not start: {line!r}\n{log.read_text()}")
    return process, int(found.group(1))


def start_worker(address: str, log: Path) -> subprocess.Popen[str]:
    with log.open("a") as err:
        return subprocess.Popen([sys.executable, __file__, "--worker", address],
                                stdout=subprocess.DEVNULL, stderr=err, text=True)


class RssSampler:
    """VmRSS of the current sidecar process, once a second, from /proc/PID/status."""

    def __init__(self) -> None:
        self.pid = 0
        self.samples: list[tuple[float, int, int]] = []  # (seconds, pid, kB)
        self._stop = threading.Event()
        self._begin = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            pid = self.pid
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue  # between incarnations
            found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
            if found:
                self.samples.append((time.monotonic() - self._begin, pid, int(found.group(1))))


@dataclass
class SoakResult:
    count: int
    seconds: float = 0.0
    worker_kills: int = 0
    sidecar_restarts: int = 0
    not_completed: list[str] = field(default_factory=list)
    wrong_output: list[str] = field(default_factory=list)
    completed_twice: list[str] = field(default_factory=list)
    task_completed_twice: list[str] = field(default_factory=list)
    rss: list[tuple[float, int, int]] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return len(self.not_completed) + len(self.wrong_output)


def _completed(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(
            "SELECT count(*) FROM instances WHERE status = ?", (COMPLETED,)).fetchone()[0]
    finally:
        conn.close()


def _schedule(address: str, ids: range) -> None:
    from durabletask.client import TaskHubGrpcClient

    client = TaskHubGrpcClient(host_address=address, logger=_quiet())
    try:
        for n in ids:
            client.schedule_new_orchestration(soaked, input=n, instance_id=instance_id(n))
    finally:
        client.close()


class Feeder(threading.Thread):
    """`_schedule` in a thread of its own, keeping what it raised."""

    def __init__(self, address: str, ids: range) -> None:
        super().__init__(daemon=True)
        self.address, self.ids = address, ids
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            _schedule(self.address, self.ids)
        except BaseException as error:
            self.error = error


def instance_id(n: int) -> str:
    return f"soak-{n:06d}"


def soak(count: int, workdir: Path, *, workers: int = 2, kill_every: float = 3.0,
         timeout: float = 3600, progress: Callable[[str], None] = lambda line: None,
         ) -> SoakResult:
    """Run the soak in `workdir` and check every instance; the timeout only bounds a failure.

    A worker is killed once an eighth of the instances have completed and then every
    `kill_every` seconds, each time the next one in turn, and started again at once."""
    db, log = workdir / "soak.sqlite3", workdir / "soak.log"
    result = SoakResult(count)
    half = count // 2
    pool: list[subprocess.Popen[str]] = []
    sidecar, port = start_sidecar(db, 0, log)
    address = f"127.0.0.1:{port}"
    begin = time.monotonic()
    try:
        with RssSampler() as sampler:
            sampler.pid = sidecar.pid
            # Scheduled before any worker runs, so the first half is still in flight when the
            # first worker is killed and the sidecar restarted.
            _schedule(address, range(half))
            pool = [start_worker(address, log) for _ in range(workers)]
            feeder: Feeder | None = None
            next_kill: float | None = None
            next_progress = begin + 10
            done = 0
            while done < count:
                if time.monotonic() - begin > timeout:
                    raise TimeoutError(f"{done} of {count} completed after {timeout} s")
                time.sleep(0.05)
                if feeder is not None and feeder.error is not None:
                    raise feeder.error
                done = _completed(db)
                now = time.monotonic()
                if next_kill is None and done >= count // 8:
                    next_kill = now
                if next_kill is not None and now >= next_kill:
                    victim = result.worker_kills % workers
                    pool[victim].send_signal(signal.SIGKILL)
                    pool[victim].wait()
                    pool[victim] = start_worker(address, log)
                    result.worker_kills += 1
                    next_kill = now + kill_every
                if not result.sidecar_restarts and done >= count // 4:
                    progress(f"{done} completed: restarting the sidecar")
                    sidecar.terminate()
                    sidecar.wait(timeout=60)
                    sidecar, _ = start_sidecar(db, port, log)
                    sampler.pid = sidecar.pid
                    result.sidecar_restarts += 1
                    # In a thread: workers go on being killed while the second half arrives.
                    feeder = Feeder(address, range(half, count))
                if now >= next_progress:
                    progress(f"{now - begin:5.0f} s: {done} of {count} completed")
                    next_progress = now + 10
            result.seconds = time.monotonic() - begin
            _check(address, result)
        result.rss = sampler.samples
    finally:
        for process in [*pool, sidecar]:
            process.kill()
            process.wait()
    return result


def _check(address: str, result: SoakResult) -> None:
    from durabletask import history
    from durabletask.client import OrchestrationStatus, TaskHubGrpcClient

    client = TaskHubGrpcClient(host_address=address, logger=_quiet())
    try:
        for n in range(result.count):
            iid = instance_id(n)
            state = client.get_orchestration_state(iid)
            if state is None or state.runtime_status != OrchestrationStatus.COMPLETED:
                result.not_completed.append(iid)
                continue
            if state.serialized_output != expected_output(n):
                result.wrong_output.append(iid)
            events = client.get_orchestration_history(iid)
            if sum(isinstance(e, history.ExecutionCompletedEvent) for e in events) != 1:
                result.completed_twice.append(iid)
            done = Counter(e.task_scheduled_id for e in events
                           if isinstance(e, history.TaskCompletedEvent))
            scheduled = {e.event_id for e in events if isinstance(e, history.TaskScheduledEvent)}
            if set(done) != scheduled or any(times != 1 for times in done.values()):
                result.task_completed_twice.append(iid)
    finally:
        client.close()


# -- the report ----------------------------------------------------------------------------------

def rss_plot(samples: list[tuple[float, int, int]], checked_from: float, rows: int = 12,
             width: int = 50) -> str:
    """The samples cut into `rows` equal spans of time, each a bar of its highest VmRSS; spans
    from `checked_from` on are the reading back of every instance, after the run."""
    if not samples:
        return "(no samples)"
    span = samples[-1][0] / rows or 1.0
    top = max(kb for _, _, kb in samples)
    incarnation: dict[int, int] = {}
    for _, pid, _ in samples:
        incarnation.setdefault(pid, len(incarnation) + 1)
    lines = []
    for row in range(rows):
        chunk = [s for s in samples if row * span <= s[0] < (row + 1) * span
                 or (row == rows - 1 and s[0] >= (row + 1) * span)]
        if not chunk:
            continue
        _, pid, kb = max(chunk, key=lambda sample: sample[2])
        phase = "  (reading back)" if row * span >= checked_from else ""
        bar = "#" * round(width * kb / top)
        lines.append(f"{row * span:7.0f} s  sidecar {incarnation[pid]}  {kb / 1024:6.1f} MiB  "
                     f"{bar}{phase}")
    return "\n".join(lines)


def report(result: SoakResult, workers: int) -> str:
    by_pid: dict[int, list[int]] = {}
    for _, pid, kb in result.rss:
        by_pid.setdefault(pid, []).append(kb)
    lines = [
        f"soak: {result.count:,} two-activity orchestrations through `python -m dtrio serve` "
        f"(SQLite), {workers} official SDK worker processes",
        f"| {'measure':<44} | {'value':>12} |",
        f"|{'-' * 46}|{'-' * 14}|",
        f"| {'wall time (s)':<44} | {result.seconds:>12.1f} |",
        f"| {'orchestrations/s':<44} | {result.count / result.seconds:>12.1f} |",
        f"| {'worker processes killed (SIGKILL)':<44} | {result.worker_kills:>12} |",
        f"| {'sidecar restarts (SIGTERM, same store)':<44} | {result.sidecar_restarts:>12} |",
        f"| {'not completed':<44} | {len(result.not_completed):>12} |",
        f"| {'wrong output':<44} | {len(result.wrong_output):>12} |",
        f"| {'ExecutionCompleted not exactly once':<44} | {len(result.completed_twice):>12} |",
        f"| {'a task completed twice or never':<44} | {len(result.task_completed_twice):>12} |",
    ]
    for i, kbs in enumerate(by_pid.values(), 1):
        tail = kbs[len(kbs) // 2:]
        label = f"sidecar {i} VmRSS MiB: first/mid/last/max"
        figures = f"{kbs[0] / 1024:.0f}/{tail[0] / 1024:.0f}/{kbs[-1] / 1024:.0f}/" \
                  f"{max(kbs) / 1024:.0f}"
        lines.append(f"| {label:<44} | {figures:>12} |")
    lines += ["", "sidecar VmRSS, sampled every second (highest per span):",
              rss_plot(result.rss, result.seconds)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kill-every", type=float, default=3.0, metavar="SECONDS")
    parser.add_argument("--worker", metavar="ADDRESS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # Stopped with SIGTERM, the soak still kills the processes it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.worker:
        run_worker(args.worker)
        return
    if args.count < 8:
        parser.error("--count must be at least 8")
    with tempfile.TemporaryDirectory() as tmp:
        result = soak(args.count, Path(tmp), workers=args.workers, kill_every=args.kill_every,
                      progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(report(result, args.workers))
    problems = result.lost + len(result.completed_twice) + len(result.task_completed_twice)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
