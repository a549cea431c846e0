"""Owners of leases: which hold leases that have not lapsed, and ending every lease of one that
is gone, so that its work is taken over at once."""

from __future__ import annotations

import trio
from backend_contract import LEASE, SECOND

from dtrio import _pb as pb
from dtrio import history as h
from dtrio.backend import TakenOver
from dtrio.events import StoredEvent
from dtrio.inbox import Message


async def signal(kit, entity: str) -> None:
    event = h.event(kit.clock.now_dt(), entity_operation_signaled=pb.EntityOperationSignaledEvent(
        request_id="r1", operation="op", target_instance_id=entity))
    await kit.backend.send_entity_message(Message(entity, StoredEvent.of(event), kit.now()))


async def test_the_leases_of_a_gone_owner_end_at_once(kit, autojump_clock):
    backend = kit.backend
    for iid in ("i1", "i2"):
        _, item = await kit.started_and_leased(iid, name=f"wf-{iid}")
        await backend.complete_orchestration(item, kit.step(item, activities=[
            kit.activity(item, 1, f"act-{iid}")]))
    await kit.start("i3", name="wf-i3")
    await signal(kit, "@counter@a")
    assert await backend.lease_owners() == set()

    [dead_act] = await backend.lease_activities("dead", 1, LEASE)
    await backend.lease_activities("alive", 1, LEASE)
    await backend.lease_orchestrations("dead", 10, LEASE)
    [dead_entity] = await backend.lease_entities("dead", 10, LEASE, 100)
    await signal(kit, "@counter@b")
    await backend.lease_entities("lapsing", 10, SECOND, 100)
    assert await backend.lease_owners() == {"dead", "alive", "lapsing"}
    await trio.sleep(2)
    assert await backend.lease_owners() == {"dead", "alive"}  # a lapsed lease holds nothing

    taken = await backend.release_owner("dead")
    assert sorted(taken, key=lambda t: t.kind) == [
        TakenOver("activity", dead_act.instance_id, dead_act.name, 1),
        TakenOver("entity", "@counter@a", "counter"),
        TakenOver("orchestration", "i3", "wf-i3"),
    ]
    assert await backend.lease_owners() == {"alive"}
    assert await backend.release_owner("dead") == []
    # Free for others now, not when the leases would have lapsed (and the lapsed one too).
    [again] = await backend.lease_activities("new", 10, LEASE)
    assert (again.id, again.attempt) == (dead_act.id, 2)
    assert list(await kit.lease("new")) == ["i3"]
    entities = await backend.lease_entities("new", 10, LEASE, 100)
    assert sorted(e.instance_id for e in entities) == ["@counter@a", "@counter@b"]
    assert dead_entity.instance_id == "@counter@a"
