"""Engines sharing a PostgreSQL database wake each other with LISTEN/NOTIFY.

The clock is frozen (a MockClock that never moves): no poll, lease expiry or wait timeout can
fire, so work one engine creates reaches the other only by its announcement. A watchdog in real
time fails a test that would otherwise hang.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
import pytest
import trio
import trio.testing

import dtrio
from dtrio.services.peers import CHANNEL, decode, encode

registry = dtrio.Registry()


@registry.activity
async def double(ctx, n):
    return 2 * n


@registry.orchestrator
async def doubled_after_event(ctx, n):
    extra = await ctx.wait_for_external_event("go")
    return await ctx.call_activity(double, input=n + extra)


@pytest.fixture
def frozen_clock():
    return trio.testing.MockClock(rate=0)


@asynccontextmanager
async def watchdog(seconds: float) -> AsyncIterator[None]:
    """Cancel the block (and fail) after `seconds` of real time."""
    done = threading.Event()
    async with trio.open_nursery() as nursery:
        async def watch() -> None:
            if not await trio.to_thread.run_sync(done.wait, seconds):
                nursery.cancel_scope.cancel()
                pytest.fail(f"no wake-up within {seconds} s of real time")

        nursery.start_soon(watch)
        try:
            yield
        finally:
            done.set()


async def test_work_created_on_one_engine_runs_on_another(frozen_clock, postgres_db):
    options = {"max_poll_interval": 600, "shutdown_grace": 0.0}
    async with (
        watchdog(60),
        # The client's engine runs nothing itself: the worker engine must be woken.
        dtrio.open_engine(dtrio.Registry(), db=postgres_db, local_workers=False,
                          **options) as client_engine,
        dtrio.open_engine(registry, db=postgres_db, **options),
    ):
        # Someone else's notification on the channel is ignored.
        with psycopg.connect(postgres_db, autocommit=True) as conn:
            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, "not json"))
            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, '{"from": "x"}'))
        client = client_engine.client
        iid = await client.schedule_new_orchestration(doubled_after_event, input=20)
        await client.wait_for_orchestration_start(iid)
        await client.raise_orchestration_event(iid, "go", 1)
        state = await client.wait_for_orchestration_completion(iid)
        assert state.runtime_status == dtrio.OrchestrationStatus.COMPLETED
        assert state.output == 42


def test_announcements_round_trip_and_stay_under_the_payload_limit():
    notes = dtrio.backend.Committed(activity=True, next_due=123, instances={"a", "b"})
    sender, heard, anything = decode(encode("me", notes))
    assert (sender, heard, anything) == ("me", notes, False)
    assert encode("me", dtrio.backend.Committed()) is None
    many = dtrio.backend.Committed(instances={f"instance-{i:05}" for i in range(2000)})
    payload = encode("me", many)
    assert len(payload.encode()) < 8000
    assert decode(payload)[2] is True
