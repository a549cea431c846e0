"""Activity work items: lease, renew, complete, abandon."""

from __future__ import annotations

from dataclasses import replace

import pytest
import trio
from backend_contract import LEASE, SECOND, S, kinds, parse

from dtrio import _pb as pb
from dtrio import history as h
from dtrio.errors import LeaseLost
from dtrio.events import StoredEvent


async def schedule(kit, instance_id: str, *task_ids: int, visible_at: int | None = None):
    """Start an instance and commit a step that schedules one activity per task ID."""
    _, item = await kit.started_and_leased(instance_id)
    now = kit.clock.now_dt()
    step = kit.step(item, *(h.task_scheduled(now, t, f"act{t}") for t in task_ids),
                    activities=[kit.activity(item, t, f"act{t}", f'"{t}"', visible_at)
                                for t in task_ids])
    await kit.backend.complete_orchestration(item, step)
    return item


async def test_lease_hands_each_activity_out_once(kit):
    await schedule(kit, "i1", 1, 2, 3)
    first = await kit.backend.lease_activities("a1", 2, LEASE)
    second = await kit.backend.lease_activities("a2", 10, LEASE)
    assert len(first) == 2 and len(second) == 1
    assert sorted(a.task_id for a in first + second) == [1, 2, 3]
    assert len({a.lock_token for a in first + second}) == 3
    assert await kit.backend.lease_activities("a3", 10, LEASE) == []


async def test_activity_with_future_visible_time_waits(kit, autojump_clock):
    due = kit.now() + 30 * SECOND
    await schedule(kit, "i1", 1, visible_at=due)
    assert await kit.backend.lease_activities("a", 10, LEASE) == []
    assert await kit.backend.next_due() == due
    await trio.sleep(31)
    [act] = await kit.backend.lease_activities("a", 10, LEASE)
    assert act.task_id == 1


async def test_expired_activity_lease_is_taken_over(kit, autojump_clock):
    await schedule(kit, "i1", 1)
    [old] = await kit.backend.lease_activities("a1", 10, 10 * SECOND)
    await trio.sleep(11)
    [new] = await kit.backend.lease_activities("a2", 10, LEASE)
    assert new.id == old.id and new.lock_token != old.lock_token
    assert new.attempt == old.attempt + 1
    with pytest.raises(LeaseLost):
        await kit.backend.complete_activity(old, kit.task_completed(1))
    with pytest.raises(LeaseLost):
        await kit.backend.renew_activity(old, LEASE)
    await kit.backend.complete_activity(new, kit.task_completed(1, '"new"'))
    item = await kit.lease_one("i1")
    assert [parse(e).task_completed.result for _, e in item.events] == ['"new"']


async def test_renew_extends_the_lease(kit, autojump_clock):
    await schedule(kit, "i1", 1)
    [act] = await kit.backend.lease_activities("a1", 10, 10 * SECOND)
    await trio.sleep(8)
    await kit.backend.renew_activity(act, 10 * SECOND)  # now expires at t=18
    await trio.sleep(8)  # t=16: past the first lease, within the renewed one
    assert await kit.backend.lease_activities("a2", 10, LEASE) == []
    assert await kit.backend.next_due() == kit.now() + 2 * SECOND
    await trio.sleep(3)
    [again] = await kit.backend.lease_activities("a2", 10, LEASE)
    assert again.id == act.id
    with pytest.raises(LeaseLost):
        await kit.backend.renew_activity(act, LEASE)  # stale token


async def test_complete_delivers_the_result_to_the_instance(kit):
    item = await schedule(kit, "i1", 1, 2)
    acts = await kit.backend.lease_activities("a", 10, LEASE)
    assert [a.execution_id for a in acts] == [item.execution_id] * 2
    result = kit.task_completed(2, '"two"')
    await kit.backend.complete_activity(acts[1], result)
    got = await kit.lease_one("i1")
    assert [e for _, e in got.events] == [result]
    # The second completion of the same activity is refused and delivers nothing.
    with pytest.raises(LeaseLost):
        await kit.backend.complete_activity(acts[1], kit.task_completed(2, '"again"'))
    await kit.backend.complete_orchestration(got, kit.step(got))
    assert await kit.lease() == {}
    # The other activity is still leased to its worker and can complete.
    await kit.backend.complete_activity(acts[0], kit.task_completed(1))
    assert kinds((await kit.lease_one("i1")).events) == ["task_completed"]


async def test_completed_activity_is_not_leased_again(kit, autojump_clock):
    await schedule(kit, "i1", 1)
    [act] = await kit.backend.lease_activities("a", 10, SECOND)
    await kit.backend.complete_activity(act, kit.task_completed(1))
    await trio.sleep(5)  # well past the lease it had
    assert await kit.backend.lease_activities("a", 10, LEASE) == []


async def test_result_for_a_finished_instance_is_dropped(kit):
    item = await schedule(kit, "i1", 1)
    [act] = await kit.backend.lease_activities("a", 10, LEASE)
    await kit.backend.add_event("i1", kit.event_raised("stop"))
    item = await kit.lease_one("i1")
    await kit.backend.complete_orchestration(item, kit.step(item, status=S.TERMINATED))
    await kit.backend.complete_activity(act, kit.task_completed(1))
    assert await kit.lease() == {}
    assert (await kit.backend.get_instance("i1")).status == int(S.TERMINATED)


async def test_abandon_with_delay_then_retry_increments_attempt(kit, autojump_clock):
    await schedule(kit, "i1", 1)
    [act] = await kit.backend.lease_activities("a", 10, LEASE)
    assert act.attempt == 1
    await kit.backend.abandon_activity(act, 20 * SECOND)
    assert await kit.backend.lease_activities("a", 10, LEASE) == []
    assert await kit.backend.next_due() == kit.now() + 20 * SECOND
    with pytest.raises(LeaseLost):
        await kit.backend.complete_activity(act, kit.task_completed(1))
    await trio.sleep(19)
    assert await kit.backend.lease_activities("a", 10, LEASE) == []
    await trio.sleep(2)
    [again] = await kit.backend.lease_activities("a", 10, LEASE)
    assert (again.id, again.task_id, again.input) == (act.id, 1, '"1"')
    assert again.attempt == 2
    await kit.backend.abandon_activity(again, 0)
    [third] = await kit.backend.lease_activities("a", 10, LEASE)
    assert third.attempt == 3
    await kit.backend.complete_activity(third, kit.task_completed(1))
    assert kinds((await kit.lease_one("i1")).events) == ["task_completed"]


async def test_abandon_with_stale_token_changes_nothing(kit, autojump_clock):
    await schedule(kit, "i1", 1)
    [old] = await kit.backend.lease_activities("a1", 10, SECOND)
    await trio.sleep(2)
    [new] = await kit.backend.lease_activities("a2", 10, LEASE)
    await kit.backend.abandon_activity(old, 0)
    assert await kit.backend.lease_activities("a3", 10, LEASE) == []
    await kit.backend.renew_activity(new, LEASE)
    await kit.backend.complete_activity(new, kit.task_completed(1))


async def test_a_retried_call_counts_its_attempts_across_its_tasks(kit, autojump_clock):
    """A call with a retry policy runs as several tasks; each lease of any of them is one more
    attempt of the call, and the call's ID comes with every one."""
    _, item = await kit.started_and_leased("i1")
    call = replace(kit.activity(item, 1), call_id=1, retries=0)
    await kit.backend.complete_orchestration(item, kit.step(item, activities=[call]))
    [first] = await kit.backend.lease_activities("a", 10, LEASE)
    assert (first.attempt, first.call_id) == (1, 1)
    await kit.backend.abandon_activity(first, 0)  # a redelivery is an attempt too
    [again] = await kit.backend.lease_activities("a", 10, LEASE)
    assert again.attempt == 2
    failed = h.event(kit.clock.now_dt(), task_failed=pb.TaskFailedEvent(
        task_scheduled_id=1, failure_details=pb.TaskFailureDetails(error_type="E")))
    await kit.backend.complete_activity(again, StoredEvent.of(failed))

    item = await kit.lease_one("i1")
    retry = replace(kit.activity(item, 3), call_id=1, retries=1)
    other = replace(kit.activity(item, 4), call_id=4, retries=0)
    unknown = replace(kit.activity(item, 5), call_id=5, retries=2)  # earlier attempts unknown
    await kit.backend.complete_orchestration(
        item, kit.step(item, activities=[retry, other, kit.activity(item, 6), unknown]))
    leased = {a.task_id: a for a in await kit.backend.lease_activities("a", 10, LEASE)}
    assert {t: (a.attempt, a.call_id) for t, a in leased.items()} == {
        3: (3, 1), 4: (1, 4), 6: (1, None), 5: (3, 5)}
