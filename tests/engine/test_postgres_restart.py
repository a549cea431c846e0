"""A PostgreSQL restart in the middle of a run: one line says the connection was lost, the
engine reconnects, and every instance finishes with each of its steps recorded once."""

from __future__ import annotations

import logging
from collections import Counter

import pytest
import trio
from pg_cluster import fresh_database, own_cluster

import dtrio
from dtrio import history as h

registry = dtrio.Registry()
runs: Counter[tuple[int, int]] = Counter()


@registry.activity
async def step(ctx, args):
    n, i = args
    runs[n, i] += 1
    await trio.sleep(0.01)
    return n * 10 + i


@registry.orchestrator
async def three_steps(ctx, n):
    first = await ctx.call_activity(step, input=[n, 0])
    await ctx.wait_for_external_event("go")
    return [first] + [await ctx.call_activity(step, input=[n, i]) for i in (1, 2)]


@pytest.fixture
def cluster():
    with own_cluster() as cluster:
        yield cluster


async def test_a_restart_mid_run_loses_nothing_and_completes_nothing_twice(cluster, caplog):
    caplog.set_level(logging.INFO, logger="dtrio.backend")
    count = 60
    with fresh_database(cluster.url) as url:
        async with dtrio.open_engine(registry, db=url, shutdown_grace=0.0) as engine:
            client = engine.client
            ids = [await client.schedule_new_orchestration(three_steps, input=n)
                   for n in range(count)]
            await client.wait_for_orchestration_start(ids[0], timeout=60)
            # Every instance is mid-run: none can finish before its event, raised after.
            await trio.to_thread.run_sync(cluster.restart)
            for iid in ids:
                await client.raise_orchestration_event(iid, "go")
            for n, iid in enumerate(ids):
                state = await client.wait_for_orchestration_completion(iid, timeout=120)
                assert state.runtime_status == dtrio.OrchestrationStatus.COMPLETED
                assert state.output == [n * 10 + i for i in range(3)]
                kinds = Counter(h.kind(e.event) for e in await client.commands.history(iid))
                assert kinds["task_completed"] == 3 and kinds["execution_completed"] == 1
    assert set(runs) == {(n, i) for n in range(count) for i in range(3)}
    lost = [r for r in caplog.records if r.getMessage().startswith("lost the connection")]
    back = [r for r in caplog.records if r.getMessage().startswith("connected to")]
    assert len(lost) == 1 and lost[0].levelno == logging.WARNING
    assert len(back) == 1
