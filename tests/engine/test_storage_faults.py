"""Storage faults under a running engine on a SQLite file: the store made read-only, the file
removed or replaced, a corrupted page. Each is named in one error, takes no step away silently,
and (where the store can come back) is gone through without a restart."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import trio

import dtrio
from dtrio import history as h

registry = dtrio.Registry()
runs: Counter[int] = Counter()
gate = trio.Event()


@registry.activity
async def step(ctx, n):
    runs[n] += 1
    return n * 10


@registry.activity
async def gated(ctx, n):
    runs[n] += 1
    await gate.wait()
    return n * 10


@registry.orchestrator
async def two_steps(ctx, n):
    first = await ctx.call_activity(step, input=n)
    await ctx.wait_for_external_event("go")
    return [first, await ctx.call_activity(step, input=n + 1)]


@registry.orchestrator
async def waits_on_gate(ctx, n):
    return await ctx.call_activity(gated, input=n)


def immutable(paths: list[Path], on: bool) -> None:
    """chattr +i refuses writes through descriptors already open, root's too (the -shm file is
    left alone: a write into its shared mapping would be a SIGBUS, not an error)."""
    for path in paths:
        subprocess.run(["chattr", "+i" if on else "-i", str(path)], check=True)


async def wait_for_event_wait(client, iid: str) -> None:
    """Until `iid` has run its first step (it then waits for "go")."""
    while not any(h.kind(e.event) == "task_completed" for e in await client.commands.history(iid)):
        await trio.sleep(0.01)


async def test_a_store_made_read_only_refuses_work_and_recovers_without_restart(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="dtrio")
    runs.clear()
    db = tmp_path / "store.sqlite3"
    files = [db, Path(f"{db}-wal")]
    async with dtrio.open_engine(registry, db=db, shutdown_grace=0.0) as engine:
        client = engine.client
        first = await client.schedule_new_orchestration(two_steps, input=0, instance_id="a")
        await wait_for_event_wait(client, first)
        held = await client.schedule_new_orchestration(waits_on_gate, input=5, instance_id="b")
        while not runs[5]:
            await trio.sleep(0.01)
        immutable(files, True)
        try:
            # New work and events are refused, each with the store and the cause named.
            for refused in (client.schedule_new_orchestration(two_steps, input=7),
                            client.raise_orchestration_event(first, "go")):
                with pytest.raises(dtrio.StorageError) as error:
                    await refused
                assert str(db) in str(error.value) and "I/O error" in str(error.value)
            # An activity finishing meanwhile cannot be settled: it is kept for another try.
            gate.set()
            while not any("could not be settled" in r.getMessage() for r in caplog.records):
                await trio.sleep(0.01)
            # What was committed is still read back.
            state = await client.get_orchestration_state(first)
            assert state is not None and state.runtime_status == dtrio.OrchestrationStatus.RUNNING
        finally:
            immutable(files, False)
        # Writable again: the same engine takes the event and finishes both, no step twice.
        await client.raise_orchestration_event(first, "go")
        for iid, output in ((first, [0, 10]), (held, 50)):
            state = await client.wait_for_orchestration_completion(iid, timeout=30)
            assert state.runtime_status == dtrio.OrchestrationStatus.COMPLETED
            assert state.output == output
            kinds = Counter(h.kind(e.event) for e in await client.commands.history(iid))
            assert kinds["execution_completed"] == 1
            assert kinds["task_completed"] == (2 if iid == first else 1)
    refusals = [r for r in caplog.records if str(db) in r.getMessage()]
    assert refusals and all("I/O error" in r.getMessage() for r in refusals)


@pytest.mark.parametrize("how", ["removed", "replaced"])
async def test_a_store_removed_or_replaced_under_the_engine_refuses_every_write(
        tmp_path: Path, how: str) -> None:
    runs.clear()
    db = tmp_path / "store.sqlite3"
    async with dtrio.open_engine(registry, db=db, shutdown_grace=0.0) as engine:
        client = engine.client
        first = await client.schedule_new_orchestration(two_steps, input=0, instance_id="a")
        await wait_for_event_wait(client, first)
        if how == "removed":
            os.unlink(db)
        else:
            shutil.copy(db, tmp_path / "copy.sqlite3")
            os.replace(tmp_path / "copy.sqlite3", db)
        # Writes to a file no longer at its path would vanish with the process: refused.
        for refused in (client.schedule_new_orchestration(two_steps, input=7),
                        client.raise_orchestration_event(first, "go")):
            with pytest.raises(dtrio.StorageError) as error:
                await refused
            assert f"the store {db} was removed or replaced" in str(error.value)
    # Nothing was written after the fault: the file at the path holds what it held.
    if how == "replaced":
        async with dtrio.open_engine(registry, db=db, shutdown_grace=0.0) as engine:
            assert await engine.client.get_orchestration_state("a") is not None
            await engine.client.raise_orchestration_event("a", "go")
            state = await engine.client.wait_for_orchestration_completion("a", timeout=30)
            assert state.output == [0, 10]


async def test_a_corrupted_page_is_named_and_never_read_as_missing(tmp_path: Path) -> None:
    runs.clear()
    db = tmp_path / "store.sqlite3"
    count = 200
    async with dtrio.open_engine(registry, db=db, shutdown_grace=0.0) as engine:
        ids = [await engine.client.schedule_new_orchestration(
            two_steps, input=n, instance_id=f"i-{n}") for n in range(count)]
        for iid in ids:
            await wait_for_event_wait(engine.client, iid)
    # Garbage over the middle page of the instances table: a read through it must not pass.
    with sqlite3.connect(db) as conn:
        pages = [p for (p,) in conn.execute(
            "SELECT pageno FROM dbstat WHERE name = 'instances' AND pagetype = 'leaf'")]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with open(db, "r+b") as f:
        f.seek((pages[len(pages) // 2] - 1) * size)
        f.write(os.urandom(size))
    seen, errors = 0, []
    try:
        async with dtrio.open_engine(registry, db=db, shutdown_grace=0.0) as engine:
            for iid in ids:
                try:
                    state = await engine.client.get_orchestration_state(iid)
                except dtrio.StorageError as exc:
                    errors.append(str(exc))
                    continue
                # A state read back is never "no such instance": that would be a silent loss.
                assert state is not None, f"{iid} read as missing from a corrupted store"
                seen += 1
    except dtrio.StorageError as exc:
        errors.append(str(exc))
    assert errors, f"all {seen} instances read back from a store with a page of garbage"
    assert all(str(db) in e and "malformed" in e and "damaged" in e for e in errors), errors
