"""Leasing only the work a worker takes: by name, and by version when it lists versions."""

from __future__ import annotations

from dataclasses import replace

from backend_contract import LEASE

from dtrio.backend import NameFilter


def names(**versions: tuple[str, ...]) -> NameFilter:
    return frozenset((name, frozenset(v)) for name, v in versions.items())


async def test_orchestrations_are_leased_by_name_and_version(kit):
    await kit.start("a1", name="a")
    await kit.start("b1", name="b", version="2.0")
    await kit.start("c1", name="c", version=None)
    lease = kit.backend.lease_orchestrations
    assert await lease("w", 10, LEASE, names()) == []  # takes nothing of this kind
    assert await lease("w", 10, LEASE, names(b=("1.0",), x=())) == []
    assert [i.instance_id for i in await lease("w", 10, LEASE, names(a=()))] == ["a1"]
    # An absent version counts as "".
    assert [i.instance_id for i in await lease("w", 10, LEASE, names(c=("",)))] == ["c1"]
    assert [i.instance_id for i in await lease("w", 10, LEASE, names(b=("1.0", "2.0")))] == ["b1"]


async def test_work_no_filter_matches_stays_for_an_unfiltered_lease(kit):
    await kit.start("a1", name="a")
    await kit.start("b1", name="b")
    assert await kit.backend.lease_orchestrations("w", 10, LEASE, names(x=())) == []
    assert sorted(await kit.lease()) == ["a1", "b1"]


async def test_activities_are_leased_by_name_and_version(kit):
    _, item = await kit.started_and_leased("i1")
    activities = [kit.activity(item, 1, "a"), kit.activity(item, 2, "b"),
                  replace(kit.activity(item, 3, "b"), version="2.0")]
    await kit.backend.complete_orchestration(item, kit.step(item, activities=activities))
    lease = kit.backend.lease_activities
    assert await lease("w", 10, LEASE, names()) == []
    assert [a.task_id for a in await lease("w", 10, LEASE, names(b=("2.0",)))] == [3]
    assert [a.task_id for a in await lease("w", 10, LEASE, names(a=(), b=()))] == [1, 2]
    assert await lease("w", 10, LEASE) == []
