"""An activity's result with the step it wakes (`complete_activity` with a `NextStep`): either
that step commits in the same transaction, the result never entering the inbox, or the result is
delivered as usual and the instance is left as it was. SQLite takes the step when the instance is
idle at the offered step; PostgreSQL always delivers."""

from __future__ import annotations

import pytest
import trio
from backend_contract import LEASE, SECOND, S, kinds, parse
from test_backend_activities import schedule

from dtrio import history as h
from dtrio.backend.base import OrchestrationWorkItem
from dtrio.errors import LeaseLost
from dtrio.state import OrchestrationStep


class Planner:
    """A NextStep that plans a step scheduling activity 2 (or declines, with `decline`)."""

    def __init__(self, kit, step: int, *, decline: bool = False) -> None:
        self.kit = kit
        self.owner = "w1"
        self.step = step
        self.decline = decline
        self.items: list[OrchestrationWorkItem] = []

    def plan(self, item: OrchestrationWorkItem) -> OrchestrationStep | None:
        self.items.append(item)
        if self.decline:
            return None
        now = self.kit.clock.now_dt()
        return self.kit.step(item, h.task_scheduled(now, 2, "act2"),
                             activities=[self.kit.activity(item, 2, "act2")])


async def test_the_step_commits_with_the_result_or_the_result_is_delivered(kit):
    item = await schedule(kit, "i1", 1)
    [act] = await kit.backend.lease_activities("a", 10, LEASE)
    result = kit.task_completed(1)
    planner = Planner(kit, item.step + 1)
    stepped = await kit.backend.complete_activity(act, result, planner)
    assert stepped == kit.backend.dialect.plans_in_place
    if not stepped:
        assert planner.items == []
        delivered = await kit.lease_one("i1")
        assert [e for _, e in delivered.events] == [result]
        return
    [taken] = planner.items
    assert (taken.instance_id, taken.execution_id, taken.step, taken.status) == (
        "i1", item.execution_id, item.step + 1, int(S.RUNNING))
    assert [e for _, e in taken.events] == [result]
    history = await kit.backend.load_history("i1")
    assert kinds(history)[-4:] == [
        "task_completed", "orchestrator_started", "task_scheduled", "orchestrator_completed"]
    assert parse(history[-4]) == result.event
    # Nothing in the inbox, the step's activity queued, and the instance not held: an event
    # raised now is leased at once, at the next step.
    [act2] = await kit.backend.lease_activities("a", 10, LEASE)
    assert act2.task_id == 2
    assert await kit.lease() == {}
    await kit.backend.add_event("i1", kit.event_raised())
    after = await kit.lease_one("i1", owner="w2")
    assert kinds(after.events) == ["event_raised"]
    assert after.step == item.step + 2


async def test_a_leased_instance_gets_the_result_in_its_inbox(kit):
    item = await schedule(kit, "i1", 1)
    [act] = await kit.backend.lease_activities("a", 10, LEASE)
    await kit.backend.add_event("i1", kit.event_raised())
    held = await kit.lease_one("i1", owner="w2")
    planner = Planner(kit, item.step + 1)
    assert not await kit.backend.complete_activity(act, kit.task_completed(1), planner)
    assert planner.items == []
    await kit.backend.complete_orchestration(held, kit.step(held))
    after = await kit.lease_one("i1")
    assert kinds(after.events) == ["task_completed"]


async def test_an_instance_with_other_events_due_gets_the_result_in_its_inbox(kit):
    item = await schedule(kit, "i1", 1)
    [act] = await kit.backend.lease_activities("a", 10, LEASE)
    await kit.backend.add_event("i1", kit.event_raised())
    planner = Planner(kit, item.step + 1)
    assert not await kit.backend.complete_activity(act, kit.task_completed(1), planner)
    assert planner.items == []
    after = await kit.lease_one("i1")
    assert kinds(after.events) == ["event_raised", "task_completed"]


async def test_a_run_current_for_another_step_gets_the_result_in_its_inbox(kit):
    item = await schedule(kit, "i1", 1)
    [act] = await kit.backend.lease_activities("a", 10, LEASE)
    planner = Planner(kit, item.step)  # the step before the stored one
    assert not await kit.backend.complete_activity(act, kit.task_completed(1), planner)
    assert planner.items == []
    after = await kit.lease_one("i1")
    assert kinds(after.events) == ["task_completed"] and after.step == item.step + 1


async def test_a_declined_plan_leaves_the_instance_unleased_with_the_result_delivered(kit):
    item = await schedule(kit, "i1", 1)
    [act] = await kit.backend.lease_activities("a", 10, LEASE)
    planner = Planner(kit, item.step + 1, decline=True)
    assert not await kit.backend.complete_activity(act, kit.task_completed(1), planner)
    assert len(planner.items) == kit.backend.dialect.plans_in_place
    after = await kit.lease_one("i1", owner="w2")
    assert kinds(after.events) == ["task_completed"] and after.step == item.step + 1
    await kit.backend.complete_orchestration(after, kit.step(after))


async def test_a_lost_activity_lease_changes_nothing(kit, autojump_clock):
    item = await schedule(kit, "i1", 1)
    [old] = await kit.backend.lease_activities("a1", 10, 10 * SECOND)
    await trio.sleep(11)
    [new] = await kit.backend.lease_activities("a2", 10, LEASE)
    planner = Planner(kit, item.step + 1)
    with pytest.raises(LeaseLost):
        await kit.backend.complete_activity(old, kit.task_completed(1), planner)
    assert planner.items == []
    assert await kit.lease() == {}
    await kit.backend.complete_activity(new, kit.task_completed(1, '"new"'))
    after = await kit.lease_one("i1")
    assert [parse(e).task_completed.result for _, e in after.events] == ['"new"']
