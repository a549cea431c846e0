"""Concurrent completions share one transaction, each in its own savepoint."""

from __future__ import annotations

import pytest
import trio
from backend_contract import LEASE, SECOND, kinds

from dtrio import history as h
from dtrio.errors import InstanceAlreadyExists, InstanceNotFound, LeaseLost
from dtrio.state import Message


async def _collect(results: dict, key: str, fn, *args) -> None:
    try:
        await fn(*args)
    except Exception as exc:  # noqa: BLE001 - the test inspects what each call raised
        results[key] = exc
    else:
        results[key] = None


async def test_concurrent_completions_all_commit(kit):
    ids = [f"i{n}" for n in range(6)]
    for iid in ids:
        await kit.start(iid)
    items = await kit.lease()
    assert set(items) == set(ids)
    steps = {}
    for iid, item in items.items():
        steps[iid] = kit.step(item, h.task_scheduled(kit.clock.now_dt(), 1, "act"),
                              custom_status=f'"{iid}"', activities=[kit.activity(item, 1)])
    commits: list = []
    kit.backend.listen(commits.append)
    complete = kit.backend.complete_orchestration
    results: dict = {}
    async with trio.open_nursery() as nursery:
        for iid, item in items.items():
            nursery.start_soon(_collect, results, iid, complete, item, steps[iid])
    assert results == {iid: None for iid in ids}
    # Group-committed: fewer transactions than completions (all started in one tick).
    assert 0 < len(commits) < len(ids)
    for iid in ids:
        assert await kit.backend.load_history(iid) == steps[iid].history
        assert (await kit.backend.get_instance(iid)).custom_status == f'"{iid}"'
    acts = await kit.backend.lease_activities("a", 100, LEASE)
    assert sorted(a.instance_id for a in acts) == sorted(ids)


async def test_one_lost_lease_fails_alone(kit, autojump_clock):
    await kit.start("stale")
    stale = await kit.lease_one("stale", lease_us=SECOND)
    await trio.sleep(2)
    ids = ["a", "b", "c"]
    for iid in ids:
        await kit.start(iid)
    items = await kit.lease(owner="w2")  # takes "stale" over too
    assert set(items) == {"stale", *ids}
    history_before = await kit.backend.load_history("stale")
    record_before = await kit.backend.get_instance("stale")

    steps = {
        iid: kit.step(items[iid], messages=[
            Message("stale", kit.event_raised(f"from-{iid}"), kit.now())])
        for iid in ids
    }
    bad_step = kit.step(stale, h.task_scheduled(kit.clock.now_dt(), 1, "act"),
                        activities=[kit.activity(stale, 1)], custom_status='"bad"',
                        messages=[Message("a", kit.event_raised("from-stale"), kit.now())])
    results: dict = {}
    async with trio.open_nursery() as nursery:
        complete = kit.backend.complete_orchestration
        nursery.start_soon(_collect, results, "a", complete, items["a"], steps["a"])
        nursery.start_soon(_collect, results, "stale", complete, stale, bad_step)
        nursery.start_soon(_collect, results, "b", complete, items["b"], steps["b"])
        nursery.start_soon(_collect, results, "c", complete, items["c"], steps["c"])

    assert isinstance(results.pop("stale"), LeaseLost)
    assert results == {"a": None, "b": None, "c": None}
    for iid in ids:
        assert await kit.backend.load_history(iid) == steps[iid].history
    # Nothing of the failed step was written: no history, status, activity or message.
    assert await kit.backend.load_history("stale") == history_before == []
    assert await kit.backend.get_instance("stale") == record_before
    assert await kit.backend.lease_activities("aw", 10, LEASE) == []
    assert await kit.lease(owner="w3") == {}  # "stale" still leased to w2; "a" got no message
    # The winning lease on "stale" still works and sees the other steps' messages.
    await kit.backend.complete_orchestration(items["stale"], kit.step(items["stale"]))
    item = await kit.lease_one("stale", owner="w3")
    assert kinds(item.events) == ["event_raised"] * 3


async def test_mixed_operations_in_one_group(kit):
    _, item = await kit.started_and_leased("run")
    await kit.start("dup")
    results: dict = {}
    async with trio.open_nursery() as nursery:
        b = kit.backend
        nursery.start_soon(_collect, results, "dup", b.create_instance, kit.new_instance("dup"))
        nursery.start_soon(_collect, results, "ghost", b.add_event, "ghost", kit.event_raised())
        nursery.start_soon(_collect, results, "new", b.create_instance, kit.new_instance("new"))
        nursery.start_soon(_collect, results, "event", b.add_event, "dup", kit.event_raised())
        nursery.start_soon(_collect, results, "run", b.complete_orchestration, item, kit.step(item))
    assert isinstance(results.pop("dup"), InstanceAlreadyExists)
    assert isinstance(results.pop("ghost"), InstanceNotFound)
    assert results == {"new": None, "event": None, "run": None}
    leased = await kit.lease()
    assert set(leased) == {"dup", "new"}
    assert kinds(leased["dup"].events) == ["execution_started", "event_raised"]
    assert kinds(await kit.backend.load_history("run"))[-1] == "orchestrator_completed"


@pytest.mark.parametrize("n", [50])
async def test_many_concurrent_writers(kit, n):
    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(kit.start, f"i{i}")
    items = await kit.lease()
    assert len(items) == n


async def test_a_write_the_store_rejects_fails_alone(kit):
    from dtrio.errors import StorageError

    for iid in ("good", "bad"):
        await kit.start(iid)
    items = await kit.lease()
    good = kit.step(items["good"], h.task_scheduled(kit.clock.now_dt(), 1, "act"),
                    activities=[kit.activity(items["good"], 1)])
    bad_activity = kit.activity(items["bad"], 1)
    bad_activity.name = None  # violates NOT NULL: SQLite refuses this write
    bad = kit.step(items["bad"], h.task_scheduled(kit.clock.now_dt(), 1, "act"),
                   activities=[bad_activity])
    history_before = await kit.backend.load_history("bad")
    results: dict = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_collect, results, "good", kit.backend.complete_orchestration,
                           items["good"], good)
        nursery.start_soon(_collect, results, "bad", kit.backend.complete_orchestration,
                           items["bad"], bad)
    assert results["good"] is None
    assert isinstance(results["bad"], StorageError) and "NOT NULL" in str(results["bad"])
    assert await kit.backend.load_history("good") == good.history
    assert await kit.backend.load_history("bad") == history_before
