"""Whether the process behind a lease's owner is gone: certain only on this host and in this PID
space, never fooled by a PID that another process has taken since."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dtrio.services import owners

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")


def with_part(owner: str, index: int, value: str) -> str:
    parts = owner.split(":")
    parts[index] = value
    return ":".join(parts)


def test_a_process_that_died_is_gone_and_one_that_lives_is_not() -> None:
    own = owners.new_owner()
    child = subprocess.Popen(
        [sys.executable, "-c", "from dtrio.services.owners import new_owner; "
         "print(new_owner(), flush=True); input()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        theirs = child.stdout.readline().strip()
        assert theirs.split(":")[1] == str(child.pid)
        assert not owners.is_gone(theirs, own)
        # Its PID, had it been taken by another process since (one started at another time).
        start, space = theirs.split(":")[3].split(".")
        assert owners.is_gone(with_part(theirs, 3, f"{int(start) + 1}.{space}"), own)
        os.kill(child.pid, signal.SIGKILL)
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        assert owners.is_gone(theirs, own)  # dead, not reaped yet: a zombie
    finally:
        child.kill()
        child.wait()
    assert owners.is_gone(theirs, own)  # and no process has its PID


def test_engines_of_this_process() -> None:
    own, other = owners.new_owner(), owners.new_owner()
    owners.started(other)
    try:
        assert not owners.is_gone(other, own)
    finally:
        owners.stopped(other)
    assert owners.is_gone(other, own)  # an engine of this process that has stopped
    # A process that had this PID before this one.
    start, space = own.split(":")[3].split(".")
    assert owners.is_gone(with_part(own, 3, f"{int(start) - 1}.{space}"), own)


def test_what_cannot_be_known_is_not_gone() -> None:
    own = owners.new_owner()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    gone = with_part(own, 1, dead)  # a PID no process has: gone, but only if it is ours to know
    assert owners.is_gone(gone, own)
    start, _ = own.split(":")[3].split(".")
    for owner in (
        with_part(gone, 0, "elsewhere"),  # another host
        with_part(gone, 3, f"{start}.00000000"),  # another PID namespace, or an earlier boot
        ":".join(gone.split(":")[:3]),  # no start time (a platform without /proc)
        "worker-1", "", "a:b:c:d", "a:1:2:3:4",
    ):
        assert not owners.is_gone(owner, own), owner
