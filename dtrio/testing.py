"""Helpers for testing your own orchestrations deterministically.

    import trio.testing, dtrio.testing

    async def test_reminder(autojump_clock):  # pytest-trio fixture: MockClock(autojump_threshold=0)
        async with dtrio.testing.open_test_engine(registry) as engine:
            iid = await engine.client.schedule_new_orchestration(remind_in_30_days)
            state = await engine.client.wait_for_orchestration_completion(iid)

The store is in-memory SQLite and nothing polls, so under a MockClock with autojump the
engine's durable time jumps straight to the next timer: a 30-day timer takes milliseconds.
`db="postgresql://..."` runs the same on an (empty) PostgreSQL database instead: durable time
still jumps, and holds still while a statement runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from . import history
from .registry import Registry
from .services import Engine, open_engine

__all__ = ["history", "open_test_engine"]


@asynccontextmanager
async def open_test_engine(
    registry: Registry, *, db: str | None = None, **overrides: Any
) -> AsyncIterator[Engine]:
    """An engine on a store that only this process uses: a fresh in-memory one, or the
    PostgreSQL database at `db`."""
    overrides.setdefault("max_poll_interval", None)
    overrides.setdefault("shutdown_grace", 0.0)
    async with open_engine(registry, db=db, **overrides) as engine:
        yield engine
