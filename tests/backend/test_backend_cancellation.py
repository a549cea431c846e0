"""Cancellation safety: a call that raises Cancelled changed nothing, and the store stays usable.

Trio's rule for primitives: if an operation raises Cancelled, it did not happen. A worker that
sees Cancelled abandons its item and a client reports failure, so a write (or a lease) that
happened anyway is lost or duplicated.
"""

from __future__ import annotations

import pytest
import trio
from backend_contract import LEASE, kinds, parse

from dtrio import history as h

# Trio runs each batch of ready tasks in a random order (reversed half of the time), so the
# races below are repeated to make both orders all but certain to occur.
ROUNDS = 24


async def test_write_cancelled_before_flush_writes_nothing(kit):
    await kit.start("i1")
    with trio.CancelScope() as scope:
        scope.cancel()
        await kit.backend.add_event("i1", kit.event_raised("cancelled"))
    assert scope.cancelled_caught
    with trio.CancelScope() as scope:
        scope.cancel()
        await kit.backend.create_instance(kit.new_instance("never"))
    assert scope.cancelled_caught
    assert await kit.backend.get_instance("never") is None

    # Later writes work and commit.
    await kit.backend.add_event("i1", kit.event_raised("after"))
    item = await kit.lease_one("i1")
    assert kinds(item.events) == ["execution_started", "event_raised"]
    assert parse(item.events[1][1]).event_raised.name == "after"
    await kit.backend.complete_orchestration(item, kit.step(item))
    assert await kit.backend.load_history("i1") != []


async def test_cancelled_completion_keeps_the_lease_and_writes_nothing(kit):
    _, item = await kit.started_and_leased("i1")
    step = kit.step(item, h.task_scheduled(kit.clock.now_dt(), 1, "act"),
                    activities=[kit.activity(item, 1)])
    with trio.CancelScope() as scope:
        scope.cancel()
        await kit.backend.complete_orchestration(item, step)
    assert scope.cancelled_caught
    assert await kit.backend.load_history("i1") == []
    assert await kit.backend.lease_activities("a", 10, LEASE) == []
    await kit.backend.complete_orchestration(item, step)  # the lease is still ours
    assert await kit.backend.load_history("i1") == step.history


def raised_names(item) -> list[str]:
    return [parse(e).event_raised.name for _, e in item.events if kinds([e]) == ["event_raised"]]


async def add_in_cancelled_scope(backend, event: bytes, outcome: dict) -> None:
    with trio.CancelScope() as scope:
        scope.cancel()
        await backend.add_event("i1", event)
    outcome["raised"] = scope.cancelled_caught


async def add_then_cancel(backend, event: bytes, scope: trio.CancelScope) -> None:
    await backend.add_event("i1", event)
    scope.cancel()


async def add_in_scope(backend, event: bytes, scope: trio.CancelScope, outcome: dict) -> None:
    with scope:
        await backend.add_event("i1", event)
        outcome["returned"] = True
    outcome["raised"] = scope.cancelled_caught


async def test_cancelled_write_next_to_a_live_one(kit):
    """Cancelled before it starts, a write must not be committed by a neighbour's flush."""
    await kit.start("i1")
    leaks = 0
    for n in range(ROUNDS):
        outcome: dict = {}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(add_in_cancelled_scope, kit.backend,
                               kit.event_raised(f"cancelled-{n}"), outcome)
            nursery.start_soon(kit.backend.add_event, "i1", kit.event_raised(f"live-{n}"))
        assert outcome["raised"]  # its scope was cancelled before the call: it must raise
        item = await kit.lease_one("i1")
        assert f"live-{n}" in raised_names(item)
        leaks += f"cancelled-{n}" in raised_names(item)
        await kit.backend.complete_orchestration(item, kit.step(item))
    assert leaks == 0, f"{leaks} of {ROUNDS} writes raised Cancelled but were committed"


async def test_write_raising_cancelled_was_not_committed(kit):
    """A scope cancelled while the write waits for its group to flush: either outcome is fine,
    as long as Cancelled means "not written" and a normal return means "written"."""
    await kit.start("i1")
    lies = 0
    for n in range(ROUNDS):
        outcome: dict = {}
        scope = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(add_in_scope, kit.backend, kit.event_raised(f"victim-{n}"), scope,
                               outcome)
            nursery.start_soon(add_then_cancel, kit.backend, kit.event_raised(f"other-{n}"), scope)
        item = await kit.lease_one("i1")
        written = f"victim-{n}" in raised_names(item)
        assert outcome.get("returned", False) != outcome["raised"]
        if outcome.get("returned"):
            assert written
        lies += outcome["raised"] and written
        await kit.backend.complete_orchestration(item, kit.step(item))
    assert lies == 0, f"{lies} of {ROUNDS} writes raised Cancelled but were committed"


async def test_cancelled_lease_takes_no_lease(kit):
    await kit.start("i1")
    with trio.CancelScope() as scope:
        scope.cancel()
        got = await kit.backend.lease_orchestrations("w1", 10, LEASE)
        pytest.fail(f"lease_orchestrations returned {got} in a cancelled scope")
    assert scope.cancelled_caught
    # The items of a call that raised Cancelled are gone with it; the instance must not stay
    # locked for the whole lease.
    item = await kit.lease_one("i1", owner="w2")
    assert kinds(item.events) == ["execution_started"]


async def test_cancelled_activity_lease_takes_no_lease(kit):
    _, item = await kit.started_and_leased("i1")
    await kit.backend.complete_orchestration(item, kit.step(
        item, h.task_scheduled(kit.clock.now_dt(), 1, "act"), activities=[kit.activity(item, 1)]))
    with trio.CancelScope() as scope:
        scope.cancel()
        await kit.backend.lease_activities("a1", 10, LEASE)
    assert scope.cancelled_caught
    [act] = await kit.backend.lease_activities("a2", 10, LEASE)
    assert act.attempt == 1


async def test_store_usable_after_many_cancelled_calls(kit):
    await kit.start("i1")
    for _ in range(10):
        with trio.move_on_after(0):
            await kit.backend.add_event("i1", kit.event_raised("x"))
    await kit.backend.add_event("i1", kit.event_raised("y"))
    item = await kit.lease_one("i1")
    assert kinds(item.events) == ["execution_started", "event_raised"]
