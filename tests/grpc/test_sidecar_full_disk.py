"""A full disk under `python -m dtrio serve`: the store refuses writes, and the sidecar lives on.

The store sits on a small tmpfs, beside a filler file that takes the rest of it. An SDK worker
(a process of its own) returns a ~100 KB activity result that the sidecar must store once the
disk is full. The store refuses to start instances, to settle the result, to take the item
back, and to lease waiting work; the sidecar logs each, backs off and tries again, keeps
answering reads, and once the filler is deleted finishes every instance it accepted, by itself.

Each refusal is certain, not a race: until the disk is full every write succeeds, so the WAL
file ends where its last commit does, and once it is full no write of a page more can succeed.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from durabletask.client import OrchestrationStatus, TaskHubGrpcClient
from sidecar_process import executions, listening_port, serve, start_worker, wait_until

DISK = 16 << 20
# Less than the WAL holds before its first checkpoint (about 4 MB): it only grows meanwhile.
ROOM = 1 << 20
PAYLOAD_BYTES = 100_000  # faults_worker.PAYLOAD_BYTES
WAITING = 5  # `steps` instances waiting for a worker that takes them
FULL = "database or disk is full"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of DISK bytes, mounted for the test (we run as root here and in CI)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        ci = " (CI=true: run the job as root, or in a container allowed to mount)" if (
            os.environ.get("CI") == "true") else ""
        pytest.fail(f"this test needs a small tmpfs, and mounting one failed{ci}: "
                    f"{done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


def fill(path: Path, leave: int = 0) -> None:
    """Add to `path` until `leave` bytes are free on its filesystem (0: until it is full)."""
    stat = os.statvfs(path.parent)
    size = max(0, stat.f_bavail * stat.f_frsize - leave)
    chunk = b"\0" * (64 << 10)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        while size > 0 or not leave:
            size -= os.write(fd, chunk[:size] if leave else chunk)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC and not leave, exc
    finally:
        os.close(fd)


def test_a_full_disk_is_survived_and_recovered_from(tmp_path: Path, small_disk: Path) -> None:
    db, filler, ran = small_disk / "store.sqlite3", small_disk / "filler", tmp_path / "ran.txt"
    log, worker_log = tmp_path / "sidecar.log", tmp_path / "worker.log"
    processes: list[subprocess.Popen[str]] = []
    ran.touch()

    def logged(pattern: str) -> bool:
        """Whether the sidecar logged a refusal matching `pattern` (it must not have died)."""
        text = log.read_text()
        assert sidecar.poll() is None, f"the sidecar exited with {sidecar.returncode}:\n{text}"
        return re.search(pattern + f".*{FULL}", text) is not None

    try:
        sidecar = serve(log, "--port", "0", "--db", str(db))
        processes.append(sidecar)
        address = f"127.0.0.1:{listening_port(sidecar, log)}"
        client = TaskHubGrpcClient(host_address=address)
        fill(filler, leave=ROOM)
        # A worker that takes only `big`: the `steps` instances wait in the store.
        processes.append(start_worker(address, ran, worker_log, "big"))
        waiting = [client.schedule_new_orchestration("steps", input=n, instance_id=f"steps-{n}")
                   for n in range(WAITING)]
        client.schedule_new_orchestration("big", input=0, instance_id="big-0")
        wait_until("big-0's activity runs", lambda: ("big-0", "payload") in executions(ran))

        fill(filler)
        # Starts are refused, and said to be unavailable.
        with pytest.raises(grpc.RpcError) as refused:
            client.schedule_new_orchestration("big", input=1, instance_id="big-1")
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert FULL in refused.value.details()
        # The ~100 KB result is refused, and so is the item given back: it is tried again.
        Path(f"{ran}.go").touch()  # faults_worker: payload may return
        wait_until("the result is refused", lambda: logged(r"'big-0' could not be settled"))
        wait_until("taking the item back is refused and retried",
                   lambda: logged(r"'big-0' could not be given back \(trying again"))
        # A worker that takes `steps`: leasing the waiting instances is refused, backed off
        # from, and tried again.
        processes.append(start_worker(address, ran, worker_log))
        wait_until("a lease is refused and retried", lambda: logged(
            r"orchestration work could not be leased \(retrying in 1\.0 s\)"))

        assert sidecar.poll() is None, log.read_text()
        state = client.get_orchestration_state("big-0")
        assert state is not None and state.runtime_status == OrchestrationStatus.RUNNING
        state = client.get_orchestration_state(waiting[0])
        assert state is not None and state.runtime_status == OrchestrationStatus.PENDING

        # Room again: everything that was started finishes, without help.
        filler.unlink()
        state = client.wait_for_orchestration_completion("big-0", timeout=30)
        assert state is not None and state.runtime_status == OrchestrationStatus.COMPLETED, (
            state, log.read_text())
        assert int(state.serialized_output) == PAYLOAD_BYTES + len("0:")
        for n, iid in enumerate(waiting):
            state = client.wait_for_orchestration_completion(iid, timeout=30)
            assert state is not None and state.runtime_status == OrchestrationStatus.COMPLETED, (
                iid, state, log.read_text())
            assert json.loads(state.serialized_output) == [n * 10 + i for i in range(3)]
        assert client.get_orchestration_state("big-1") is None
        sidecar.send_signal(signal.SIGTERM)
        assert sidecar.wait(timeout=30) == 0, log.read_text()
    finally:
        for process in processes:
            process.kill()
            process.wait()
