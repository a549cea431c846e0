"""The backend contract suite: every test here runs against every backend.

Tests talk to the backend only through the `Backend` contract (no SQL, no mocks), so a new
backend joins the suite by adding one parameter to `backend_and_clock` below. Store-safety tests
for SQLite files live in test_backend_sqlite_store.py. The PostgreSQL parameter runs on a
throwaway server (see tests/pg_cluster.py), a fresh database per test.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from backend_contract import Kit

from dtrio.backend import Backend, open_backend
from dtrio.clock import Clock

sys.path.insert(0, str(Path(__file__).parent.parent))
from pg_cluster import fresh_database  # noqa: E402


@pytest.fixture(params=["sqlite-file", "sqlite-memory", "postgres"])
async def backend_and_clock(
    request: pytest.FixtureRequest, tmp_path
) -> AsyncIterator[tuple[Backend, Clock]]:
    # Built inside the trio run: Clock reads trio.current_time() (the MockClock, if one is used).
    clock = Clock()
    if request.param == "postgres":
        with fresh_database(request.getfixturevalue("postgres_url")) as url:
            backend = open_backend(url, clock)
            try:
                yield backend, clock
            finally:
                await backend.aclose()
        return
    backend = open_backend(tmp_path / "store.db" if request.param == "sqlite-file" else None,
                           clock)
    try:
        yield backend, clock
    finally:
        await backend.aclose()


@pytest.fixture
def backend(backend_and_clock: tuple[Backend, Clock]) -> Backend:
    return backend_and_clock[0]


@pytest.fixture
def kit(backend_and_clock: tuple[Backend, Clock]) -> Kit:
    return Kit(*backend_and_clock)
