"""What each commit reports to the backend's listeners: the work it made due, the earliest
later time something is due, and the instances whose status changed."""

from __future__ import annotations

import pytest
import trio
from backend_contract import LEASE, SECOND

from dtrio import history as h
from dtrio.backend import Committed
from dtrio.errors import LeaseLost
from dtrio.state import Message


@pytest.fixture
def reports(kit) -> list[Committed]:
    seen: list[Committed] = []
    kit.backend.listen(seen.append)
    return seen


def due(reports: list[Committed], kind: str) -> bool:
    return any(getattr(r, kind) for r in reports)


async def test_create_instance_reports_an_orchestration_due_and_a_change(kit, reports):
    await kit.start("i1")
    assert len(reports) == 1
    assert reports[0].orchestration and not reports[0].activity and not reports[0].entity
    assert reports[0].instances == {"i1"}
    assert reports[0].next_due is None


async def test_future_instance_reports_when_it_is_due(kit, reports):
    at = kit.now() + 60 * SECOND
    await kit.start("i1", visible_at=at)
    assert not due(reports, "orchestration")
    assert reports[-1].next_due == at


async def test_add_event_reports_an_orchestration_due(kit, reports):
    await kit.start("i1")
    reports.clear()
    await kit.backend.add_event("i1", kit.event_raised())
    assert due(reports, "orchestration")
    assert reports[-1].instances == set()  # its status did not change


async def test_scheduling_an_activity_reports_an_activity_due(kit, reports):
    _, item = await kit.started_and_leased("i1")
    reports.clear()
    await kit.backend.complete_orchestration(item, kit.step(
        item, h.task_scheduled(kit.clock.now_dt(), 1, "act"), activities=[kit.activity(item, 1)]))
    assert due(reports, "activity")


async def test_every_listener_hears_every_commit(kit, reports):
    others: list[Committed] = []
    kit.backend.listen(others.append)
    await kit.start("i1")
    await kit.start("i2")
    assert len(reports) == len(others) == 2


async def test_instance_changes_after_create_and_complete(kit, reports):
    await kit.start("i1")
    item = await kit.lease_one("i1")
    reports.clear()
    await kit.backend.complete_orchestration(item, kit.step(item))
    assert reports[-1].instances == {"i1"}  # PENDING -> RUNNING


async def test_instance_changes_for_a_child_created_by_a_step(kit, reports):
    _, item = await kit.started_and_leased("parent")
    child = kit.new_instance("child", parent_instance_id="parent")
    reports.clear()
    await kit.backend.complete_orchestration(item, kit.step(item, new_instances=[child]))
    assert "child" in reports[-1].instances


async def test_failed_completion_reports_nothing(kit, reports, autojump_clock):
    await kit.start("i1")
    old = await kit.lease_one("i1", lease_us=SECOND)
    await trio.sleep(2)
    await kit.lease_one("i1", owner="w2")
    reports.clear()
    with pytest.raises(LeaseLost):
        await kit.backend.complete_orchestration(old, kit.step(
            old, activities=[kit.activity(old, 1)],
            messages=[Message("i1", kit.event_raised(), kit.now())]))
    assert not any(r.instances or r.activity or r.orchestration for r in reports)
    assert await kit.backend.lease_activities("a", 10, LEASE) == []


async def test_abandon_with_delay_reports_when_it_is_due_again(kit, reports):
    _, item = await kit.started_and_leased("i1")
    reports.clear()
    before = kit.now()
    await kit.backend.abandon_orchestration(item, 10 * SECOND)
    assert not due(reports, "orchestration")
    assert reports[-1].next_due is not None
    assert before + 10 * SECOND <= reports[-1].next_due <= kit.now() + 10 * SECOND
