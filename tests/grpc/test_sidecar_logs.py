"""What `python -m dtrio serve` logs, read from its stderr while the official SDK's worker and
client use it: each instance's start and end (without its payloads), dtrio's own lines at
DEBUG (not the libraries' frame dumps), and a worker that leaves as one dtrio line."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sdk_app as app
import trio
from durabletask import client as sdk_client
from durabletask import worker as sdk_worker
from sidecar_harness import running_sidecar, sdk_worker_running
from sidecar_process import listening_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
# dtrio.logs.TEXT_FORMAT: "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (\w+) +(\S+): (.*)")
BELOW_WARNING = {"DEBUG", "INFO"}


@contextmanager
def sidecar(
    log: Path, args: tuple[str, ...] = (), *, env: dict[str, str] | None = None,
    before: tuple[str, ...] = (),
) -> Iterator[str]:
    """`python -m dtrio [before] serve --port 0 --db :memory: [args]`, its stderr to `log` (a
    file: a debug run writes more than a pipe holds); its address. Stopped by SIGTERM after."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DTRIO_")}
    with log.open("w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "dtrio", *before, "serve", "--port", "0", "--db", ":memory:",
             *args], stdout=subprocess.PIPE, stderr=err, text=True,
            env={**environ, "PYTHONPATH": str(ROOT), **(env or {})})
    try:
        yield f"127.0.0.1:{listening_port(process, log)}"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0, log.read_text()
    finally:
        process.kill()
        process.wait()


@contextmanager
def worker(address: str) -> Iterator[None]:
    """The official SDK worker with `sdk_app`'s orchestrators and activities, stopped normally
    after."""
    running = sdk_worker.TaskHubGrpcWorker(host_address=address)
    for orchestrator in app.ORCHESTRATORS:
        running.add_orchestrator(orchestrator)
    for activity in app.ACTIVITIES:
        running.add_activity(activity)
    running.start()
    try:
        yield
    finally:
        running.stop()


def records(log: Path) -> list[tuple[str, str, str]]:
    """(level, logger, message) of each line of `log` that starts a record."""
    return [m.groups() for m in map(LINE.fullmatch, log.read_text().splitlines()) if m]


def test_each_instance_is_logged_when_it_starts_and_ends_without_its_payloads(
    tmp_path: Path,
) -> None:
    log = tmp_path / "sidecar.log"
    with sidecar(log) as address, worker(address):
        client = sdk_client.TaskHubGrpcClient(host_address=address)
        ok = client.schedule_new_orchestration(app.sequence, input="input-payload-4c1e")
        state = client.wait_for_orchestration_completion(ok, timeout=30)
        assert state is not None and state.serialized_output is not None
        assert "Hello, Tokyo!" in state.serialized_output
        waits = client.schedule_new_orchestration(app.approval)
        client.wait_for_orchestration_start(waits, timeout=30)
        client.raise_orchestration_event(waits, "approval", data="event-payload-9b2d")
        state = client.wait_for_orchestration_completion(waits, timeout=30)
        assert state is not None and "event-payload-9b2d" in (state.serialized_output or "")
        bad = client.schedule_new_orchestration(app.fails, input="the activity broke")
        state = client.wait_for_orchestration_completion(bad, timeout=30)
        assert state is not None and state.runtime_status == sdk_client.OrchestrationStatus.FAILED
    lines = records(log)
    engine = [message for level, logger, message in lines
              if (level, logger) == ("INFO", "dtrio.engine")]
    for iid, name in ((ok, "sequence"), (waits, "approval")):
        about = [m for m in engine if m.startswith(f"orchestration {iid} ")]
        assert about == [f"orchestration {iid} ({name}) started",
                         f"orchestration {iid} ({name}) finished: COMPLETED"], lines
    started, finished = [m for m in engine if m.startswith(f"orchestration {bad} ")]
    assert started == f"orchestration {bad} (fails) started"
    # The failure's type and message, as the worker reported them.
    assert finished.startswith(
        f"orchestration {bad} (fails) finished: FAILED: durabletask.task.TaskFailedError: ")
    assert finished.endswith("failed: the activity broke"), finished
    # Inputs, outputs and event data stay out of the log (at the default level, INFO).
    text = log.read_text()
    for payload in ("input-payload-4c1e", "Hello, ", "event-payload-9b2d"):
        assert payload not in text, text


def test_debug_is_dtrio_lines_and_the_libraries_stay_at_warning(tmp_path: Path) -> None:
    log = tmp_path / "sidecar.log"
    with sidecar(log, ("--log-level", "debug")) as address, worker(address):
        client = sdk_client.TaskHubGrpcClient(host_address=address)
        iid = client.schedule_new_orchestration(app.sequence)
        state = client.wait_for_orchestration_completion(iid, timeout=30)
        assert state is not None and state.runtime_status.name == "COMPLETED"
    lines = records(log)
    assert ("DEBUG", "dtrio.engine", f"orchestration {iid} (sequence) step 3: events "
            "[orchestrator_started, task_completed] -> actions [complete_orchestration(id=4)]"
            ) in lines
    # Below WARNING, every line is dtrio's: no hpack header dumps, no grpclib or asyncio.
    others = [line for line in lines if line[0] in BELOW_WARNING
              and not line[1].startswith("dtrio.")]
    assert others == [], others[:10]


@pytest.mark.parametrize("args, before, env", [
    (("--library-log-level", "debug"), (), {}),
    ((), ("--library-log-level", "debug"), {}),
    ((), (), {"DTRIO_LIBRARY_LOG_LEVEL": "debug"}),
], ids=["flag", "flag before serve", "variable"])
def test_the_libraries_lines_are_there_when_asked_for(
    tmp_path: Path, args: tuple[str, ...], before: tuple[str, ...], env: dict[str, str]
) -> None:
    log = tmp_path / "sidecar.log"
    with sidecar(log, args, before=before, env=env) as address:
        with worker(address):
            wait_until("the worker connected", lambda: "stream connected" in log.read_text())
        wait_until("grpclib saw the worker's call end",
                   lambda: "Request was cancelled" in log.read_text())
    lines = records(log)
    assert any(logger == "hpack.hpack" for _, logger, _ in lines)
    # dtrio's own lines stay at their default level, INFO.
    assert not any(level == "DEBUG" and logger.startswith("dtrio.")
                   for level, logger, _ in lines)
    # A worker that leaves is ordinary: grpclib's line about it comes at DEBUG.
    cancelled = [(level, logger) for level, logger, message in lines
                 if message.startswith("Request was cancelled")]
    assert cancelled == [("DEBUG", "grpclib.server")]


@pytest.mark.parametrize("args", [(), ("--library-log-level", "info")])
def test_a_worker_that_stops_is_one_dtrio_line_not_a_cancelled_request(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    log = tmp_path / "sidecar.log"
    with sidecar(log, args) as address:
        with worker(address):
            wait_until("the worker connected", lambda: "stream connected" in log.read_text())
        wait_until("the worker's stream ended",
                   lambda: "stream disconnected" in log.read_text())
    lines = records(log)
    assert ("INFO", "dtrio.grpc",
            "worker stream disconnected (0 connected); giving back the 0 work items it held"
            ) in lines
    assert not [line for line in lines if "Request was cancelled" in line[2]], lines


async def test_embedded_too_a_worker_leaving_is_no_library_line_at_info(caplog) -> None:
    # serve_sidecar in an application's own Trio program, under its own logging set-up.
    caplog.set_level(logging.INFO, logger="dtrio.grpc")
    caplog.set_level(logging.DEBUG, logger="grpclib.server")  # (and caplog's handler)
    async with running_sidecar() as running:
        async with sdk_worker_running(running.address):
            with trio.fail_after(10):  # bounds a failure only
                while "worker stream connected" not in caplog.text:
                    await trio.sleep(0.05)
        with trio.fail_after(10):
            while not any(r.name == "grpclib.server" for r in caplog.records):
                await trio.sleep(0.05)
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "grpclib.server"]
    assert [(level, message.split(":")[0]) for level, message in lines] == [
        ("DEBUG", "Request was cancelled")], lines
