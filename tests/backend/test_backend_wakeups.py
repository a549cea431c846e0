"""In-process wake-ups the dispatchers and clients wait on."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from backend_contract import LEASE, SECOND

from dtrio import history as h
from dtrio.errors import LeaseLost
from dtrio.state import Message


async def wait_returns_at_once(wakeup) -> bool:
    with trio.move_on_after(0.01) as scope:
        await wakeup.wait()
    return not scope.cancelled_caught


async def test_create_instance_sets_orchestrations_ready(kit):
    backend = kit.backend
    assert not await wait_returns_at_once(backend.orchestrations_ready)
    await kit.start("i1")
    assert await wait_returns_at_once(backend.orchestrations_ready)
    assert not await wait_returns_at_once(backend.orchestrations_ready)  # consumed


async def test_future_instance_sets_schedule_changed_not_ready(kit):
    backend = kit.backend
    await kit.start("i1", visible_at=kit.now() + 60 * SECOND)
    assert not await wait_returns_at_once(backend.orchestrations_ready)
    assert await wait_returns_at_once(backend.schedule_changed)


async def test_add_event_sets_orchestrations_ready(kit):
    await kit.start("i1")
    await kit.backend.orchestrations_ready.wait()
    await kit.backend.add_event("i1", kit.event_raised())
    assert await wait_returns_at_once(kit.backend.orchestrations_ready)


async def test_scheduling_an_activity_sets_activities_ready(kit):
    backend = kit.backend
    _, item = await kit.started_and_leased("i1")
    assert not await wait_returns_at_once(backend.activities_ready)
    await backend.complete_orchestration(item, kit.step(
        item, h.task_scheduled(kit.clock.now_dt(), 1, "act"), activities=[kit.activity(item, 1)]))
    assert await wait_returns_at_once(backend.activities_ready)


async def test_waiter_is_woken_by_a_commit(kit):
    woke = trio.Event()

    async def waiter():
        await kit.backend.orchestrations_ready.wait()
        woke.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert not woke.is_set()
        await kit.start("i1")
        with trio.fail_after(1):
            await woke.wait()


async def test_instance_changes_after_create_and_complete(kit):
    changes = kit.backend.instance_changes
    created = changes.event_for("i1")
    other = changes.event_for("other")
    await kit.start("i1")
    assert created.is_set()
    assert not other.is_set()

    item = await kit.lease_one("i1")
    completed = changes.event_for("i1")
    assert not completed.is_set()
    await kit.backend.complete_orchestration(item, kit.step(item))
    assert completed.is_set()
    assert not other.is_set()


async def test_instance_changes_for_a_child_created_by_a_step(kit):
    _, item = await kit.started_and_leased("parent")
    child_changed = kit.backend.instance_changes.event_for("child")
    child = kit.new_instance("child", parent_instance_id="parent")
    await kit.backend.complete_orchestration(item, kit.step(item, new_instances=[child]))
    assert child_changed.is_set()


async def test_failed_completion_announces_nothing(kit, autojump_clock):
    await kit.start("i1")
    old = await kit.lease_one("i1", lease_us=SECOND)
    await trio.sleep(2)
    await kit.lease_one("i1", owner="w2")
    changed = kit.backend.instance_changes.event_for("i1")
    with pytest.raises(LeaseLost):
        await kit.backend.complete_orchestration(old, kit.step(
            old, activities=[kit.activity(old, 1)],
            messages=[Message("i1", kit.event_raised(), kit.now())]))
    assert not changed.is_set()
    assert not await wait_returns_at_once(kit.backend.activities_ready)
    assert await kit.backend.lease_activities("a", 10, LEASE) == []


async def test_schedule_changed_only_for_work_due_before_the_poller_wakes(kit, autojump_clock):
    backend = kit.backend
    now = kit.now()
    backend.poller_due = now + 100 * SECOND
    backend.schedule_changed.clear()
    await kit.start("late", visible_at=now + 200 * SECOND)
    assert not await wait_returns_at_once(backend.schedule_changed)
    await kit.start("early", visible_at=now + 50 * SECOND)
    assert await wait_returns_at_once(backend.schedule_changed)


async def test_abandon_with_delay_wakes_the_poller(kit):
    backend = kit.backend
    _, item = await kit.started_and_leased("i1")
    backend.schedule_changed.clear()
    await backend.abandon_orchestration(item, 10 * SECOND)
    assert await wait_returns_at_once(backend.schedule_changed)
