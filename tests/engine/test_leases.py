"""The leases of work this process holds stay its own while it runs the work, however long: renewed
every third of a lease, again soon after the store refused a renewal, and first thing when the
event loop was too busy to renew them in time (before this process could lease its own work
again, for a second run)."""

from __future__ import annotations

import sqlite3
from collections import Counter

import trio

import dtrio

registry = dtrio.Registry()
LEASE = 3.0
runs: list[int] = []
clock: trio.testing.MockClock | None = None


@registry.activity
async def busy(ctx: dtrio.ActivityContext, _) -> int:
    runs.append(ctx.task_id)
    assert clock is not None
    clock.jump(2 * LEASE)  # the loop was busy for two leases: every renewal is late
    await trio.sleep(LEASE)  # and it runs on
    return ctx.task_id


@registry.orchestrator
async def busy_ones(ctx: dtrio.OrchestrationContext, n: int) -> list[int]:
    return [await ctx.call_activity(busy) for _ in range(n)]


async def test_a_busy_loop_does_not_lease_its_own_work_again(autojump_clock):
    global clock
    clock = autojump_clock
    runs.clear()
    # Polled: the poller wakes once the busy spell ends, with the leases held here lapsed.
    async with dtrio.open_engine(registry, db=None, max_poll_interval=1,
                                 activity_lease=LEASE) as engine:
        iid = await engine.client.schedule_new_orchestration(busy_ones, input=5)
        state = await engine.client.wait_for_orchestration_completion(iid, timeout=600)
    assert state.output == [0, 1, 2, 3, 4]
    assert Counter(runs) == Counter(range(5))  # each ran once


started = trio.Event()


@registry.activity
async def slow(ctx: dtrio.ActivityContext, _) -> str:
    started.set()
    await trio.sleep(4 * LEASE)
    return "slow"


@registry.orchestrator
async def one_slow(ctx: dtrio.OrchestrationContext, _) -> str:
    return await ctx.call_activity(slow)


def expiry(conn: sqlite3.Connection) -> int:
    [(at,)] = conn.execute("SELECT available_at FROM activities").fetchall()
    return at


async def test_a_renewal_the_store_refused_is_made_again_soon(autojump_clock, tmp_path):
    global started
    started = trio.Event()
    db = tmp_path / "store.sqlite3"
    async with dtrio.open_engine(registry, db=db, max_poll_interval=None,
                                 activity_lease=LEASE) as engine:
        # Refused at once while another connection writes, rather than after a wait that
        # would hold up the event loop.
        engine.backend._store.conn.execute("PRAGMA busy_timeout=0")
        iid = await engine.client.schedule_new_orchestration(one_slow)
        await started.wait()
        leased_at = trio.current_time()
        other = sqlite3.connect(db, isolation_level=None)
        first = expiry(other)
        other.execute("BEGIN IMMEDIATE")  # the renewals due one and two thirds in fail
        await trio.sleep_until(leased_at + 2.5)
        other.execute("ROLLBACK")
        await trio.sleep_until(leased_at + 2.9)
        # Renewed again once the store took writes, before the lease it had ran out.
        assert expiry(other) > first
        other.close()
        state = await engine.client.wait_for_orchestration_completion(iid, timeout=600)
    assert state.output == "slow"
