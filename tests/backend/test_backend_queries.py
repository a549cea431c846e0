"""Instance queries as operators use them: by name, by parent, newest first, and counts per
status; on every backend."""

from __future__ import annotations

from backend_contract import Kit, S

from dtrio.backend import InstanceQuery


async def _three_of_two_names(kit: Kit) -> None:
    for i, name in enumerate(["alpha", "beta", "alpha"]):
        await kit.start(f"i{i}", name=name, parent_instance_id="p" if i else None)


async def test_query_by_name_and_by_parent(kit: Kit) -> None:
    await _three_of_two_names(kit)
    page = await kit.backend.query_instances(InstanceQuery(name="alpha"))
    assert sorted(r.instance_id for r in page.instances) == ["i0", "i2"]
    page = await kit.backend.query_instances(InstanceQuery(parent_instance_id="p"))
    assert sorted(r.instance_id for r in page.instances) == ["i1", "i2"]
    page = await kit.backend.query_instances(InstanceQuery(name="gamma"))
    assert page.instances == [] and page.continuation_token is None


async def test_newest_first_pages_walk_back_without_gaps(kit: Kit) -> None:
    ids = [f"n{i:02}" for i in range(7)]
    for iid in ids:
        await kit.start(iid)
    seen: list[str] = []
    token = None
    while True:
        page = await kit.backend.query_instances(
            InstanceQuery(newest_first=True, page_size=3, continuation_token=token))
        seen += [r.instance_id for r in page.instances]
        token = page.continuation_token
        if token is None:
            break
    assert seen == sorted(ids, reverse=True)  # same created_at ties break on the ID, descending
    oldest = await kit.backend.query_instances(InstanceQuery(page_size=7))
    assert [r.instance_id for r in oldest.instances] == ids


async def test_counts_per_status_follow_the_filters(kit: Kit) -> None:
    await _three_of_two_names(kit)
    counts = await kit.backend.count_instances(InstanceQuery())
    assert counts == {int(S.PENDING): 3}
    assert await kit.backend.count_instances(InstanceQuery(name="beta")) == {int(S.PENDING): 1}
    assert await kit.backend.count_instances(InstanceQuery(instance_id_prefix="x")) == {}
    # Statuses and paging do not narrow a count: it is the figure beside every status filter.
    query = InstanceQuery(statuses=frozenset({int(S.FAILED)}), page_size=1)
    assert await kit.backend.count_instances(query) == {int(S.PENDING): 3}
