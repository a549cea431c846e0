"""Creating instances, reading them back, and adding events to their inboxes."""

from __future__ import annotations

import pytest
import trio
from backend_contract import LEASE, SECOND, S, kinds, parse

from dtrio.errors import InstanceAlreadyExists, InstanceNotFound


async def test_create_then_get_returns_every_field(kit, autojump_clock):
    before = kit.now()
    new = await kit.start("i1", name="greet", input='"hello"', tags={"team": "a"},
                          parent_instance_id="parent", visible_at=kit.now() + 5 * SECOND)
    record = await kit.backend.get_instance("i1")
    assert record is not None
    assert (record.instance_id, record.execution_id, record.name, record.version) == (
        "i1", new.execution_id, "greet", "1.0")
    assert record.status == int(S.PENDING)
    assert record.created_at == record.updated_at
    assert before <= record.created_at <= kit.now()
    assert record.completed_at is None
    assert record.scheduled_start == new.visible_at  # started in the future
    assert record.parent_instance_id == "parent"
    assert record.input == '"hello"'
    assert record.output is None and record.custom_status is None and record.failure is None
    assert record.tags == {"team": "a"}


async def test_scheduled_start_is_none_when_visible_now(kit):
    await kit.start("i1")
    record = await kit.backend.get_instance("i1")
    assert record.scheduled_start is None
    assert record.tags is None


async def test_get_without_payloads_leaves_out_inputs_and_outputs(kit):
    await kit.start("i1", input='"big"', tags={"k": "v"})
    record = await kit.backend.get_instance("i1", payloads=False)
    assert record.instance_id == "i1" and record.status == int(S.PENDING)
    assert record.input is None and record.output is None
    # Small metadata comes anyway: clients show tags and custom status in listings.
    assert record.tags == {"k": "v"}
    assert record.failure is None and record.custom_status is None


async def test_get_unknown_instance_returns_none(backend):
    assert await backend.get_instance("nope") is None


async def test_duplicate_create_raises_and_changes_nothing(kit):
    first = await kit.start("i1", name="a", input='"one"')
    before = await kit.backend.get_instance("i1")
    with pytest.raises(InstanceAlreadyExists) as info:
        await kit.start("i1", name="b", input='"two"')
    assert info.value.instance_id == "i1"
    assert info.value.status == "PENDING"
    assert await kit.backend.get_instance("i1") == before
    # Only the first instance's executionStarted is in the inbox.
    item = await kit.lease_one("i1")
    assert kinds(item.events) == ["execution_started"]
    started = parse(item.events[0][1]).execution_started
    assert started.orchestration_instance.execution_id == first.execution_id
    assert started.input == '"one"'


async def test_add_event_to_unknown_instance_raises(backend, kit):
    with pytest.raises(InstanceNotFound) as info:
        await backend.add_event("ghost", kit.event_raised())
    assert info.value.instance_id == "ghost"
    assert await backend.get_instance("ghost") is None
    assert await backend.lease_orchestrations("w", 10, LEASE) == []


async def test_add_event_lands_in_inbox_in_order(kit):
    await kit.start("i1")
    await kit.backend.add_event("i1", kit.event_raised("first"))
    await kit.backend.add_event("i1", kit.event_raised("second"))
    item = await kit.lease_one("i1")
    assert kinds(item.events) == ["execution_started", "event_raised", "event_raised"]
    assert [parse(e).event_raised.name for _, e in item.events[1:]] == ["first", "second"]
    ids = [i for i, _ in item.events]
    assert ids == sorted(ids) and len(set(ids)) == 3


async def test_add_event_with_future_visible_at_waits(kit, autojump_clock):
    await kit.start("i1")
    item = await kit.lease_one("i1")
    await kit.backend.complete_orchestration(item, kit.step(item))
    due = kit.now() + 10 * SECOND
    await kit.backend.add_event("i1", kit.event_raised("later"), visible_at=due)
    assert await kit.lease() == {}
    assert await kit.backend.next_due() == due
    await trio.sleep(11)
    item = await kit.lease_one("i1")
    assert kinds(item.events) == ["event_raised"]


async def test_instance_not_visible_before_its_start_time(kit, autojump_clock):
    start_at = kit.now() + 60 * SECOND
    await kit.start("i1", visible_at=start_at)
    assert await kit.lease() == {}
    assert await kit.backend.next_due() == start_at
    await trio.sleep(61)
    item = await kit.lease_one("i1")
    assert kinds(item.events) == ["execution_started"]
