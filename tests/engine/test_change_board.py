"""The client's per-instance change notifications: a commit wakes the waiters of the instance it
changed, and an instance nobody waits on any more holds no entry (a parked instance the client
once waited on must not cost memory until it next changes)."""

from __future__ import annotations

import trio
import trio.testing

import dtrio
from dtrio.signals import ChangeBoard

registry = dtrio.Registry()


@registry.orchestrator
async def parked(ctx: dtrio.OrchestrationContext, _: None) -> str:
    return await ctx.wait_for_external_event("go")


async def test_a_watch_left_without_a_change_leaves_no_entry() -> None:
    board = ChangeBoard()
    with board.watching("a") as first, board.watching("a") as second:
        assert first is second
    assert len(board) == 0


async def test_a_change_wakes_the_watchers_of_its_key_only() -> None:
    board = ChangeBoard()
    woken: list[str] = []

    async def watch(key: str) -> None:
        with board.watching(key) as changed:
            await changed.wait()
            woken.append(key)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch, "a")
        nursery.start_soon(watch, "b")
        await trio.testing.wait_all_tasks_blocked()
        board.notify("a")
        await trio.testing.wait_all_tasks_blocked()
        assert woken == ["a"]
        assert len(board) == 1
        board.notify_all()
    assert woken == ["a", "b"]
    assert len(board) == 0


async def test_waiting_on_parked_instances_leaves_nothing_behind() -> None:
    async with dtrio.open_engine(registry, db=":memory:") as engine:
        client = engine.client
        for i in range(3):
            await client.schedule_new_orchestration(parked, instance_id=f"p-{i}")
        for i in range(3):
            await client.wait_for_orchestration_start(f"p-{i}", timeout=30)
        # Each is parked: no change will come to clear what the waits looked at.
        assert len(client.commands._changes) == 0
        await client.raise_orchestration_event("p-0", "go", "x")
        state = await client.wait_for_orchestration_completion("p-0", timeout=30)
        assert state.output == "x"
        assert len(client.commands._changes) == 0
