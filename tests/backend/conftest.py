"""The backend contract suite: every test here runs against every backend.

Tests talk to the backend only through the `Backend` contract (no SQL, no mocks), so a new
backend joins the suite by adding one parameter to `backend_and_clock` below. Store-safety tests
for SQLite files live in test_backend_sqlite_store.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from backend_contract import Kit

from dtrio.backend import Backend, open_sqlite_backend
from dtrio.clock import Clock


@pytest.fixture(params=["sqlite-file", "sqlite-memory"])
async def backend_and_clock(
    request: pytest.FixtureRequest, tmp_path
) -> AsyncIterator[tuple[Backend, Clock]]:
    # Built inside the trio run: Clock reads trio.current_time() (the MockClock, if one is used).
    clock = Clock()
    if request.param == "sqlite-file":
        backend = open_sqlite_backend(tmp_path / "store.db", clock)
    else:
        backend = open_sqlite_backend(None, clock)
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


