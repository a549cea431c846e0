"""`python -m dtrio serve` and the `faults_worker` SDK worker as processes, for tests that
signal, restart or starve the sidecar."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("faults_worker.py")


def serve(log: Path, *args: str) -> subprocess.Popen[str]:
    """`python -m dtrio serve` from this tree; its log goes to `log`."""
    with log.open("w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "dtrio", "serve", *args], stdout=subprocess.PIPE, stderr=err,
            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def wait_until(what: str, predicate: Callable[[], bool], timeout: float = 30) -> None:
    """Poll `predicate`; the timeout only bounds a failure."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def listening_port(process: subprocess.Popen[str], log: Path) -> int:
    """The port `serve` says it listens on."""
    line = process.stdout.readline()  # type: ignore[union-attr]
    found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
    assert found, line + log.read_text()
    return int(found.group(1))


def executions(path: Path) -> list[tuple[str, str]]:
    """The (instance ID, step) of each activity execution `faults_worker` recorded."""
    return [tuple(line.split()) for line in path.read_text().splitlines()]  # type: ignore[misc]


def start_worker(address: str, executions: Path, log: Path, *args: str) -> subprocess.Popen[str]:
    """`faults_worker.py ADDRESS EXECUTIONS *args`; its log is appended to `log`."""
    with log.open("a") as err:
        return subprocess.Popen(
            [sys.executable, str(WORKER), address, str(executions), *args],
            stdout=subprocess.DEVNULL, stderr=err, text=True)
