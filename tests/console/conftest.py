"""Fixtures of the CLI tests: a store with an engine running on it (SQLite, or PostgreSQL on a
throwaway server, see tests/pg_cluster.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pg_cluster import fresh_database


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store's --db value; tests that take it run on both stores."""
    if request.param == "postgres":
        with fresh_database(request.getfixturevalue("postgres_url")) as url:
            yield url
        return
    yield str(tmp_path / "store.sqlite3")


@pytest.fixture
def db(tmp_path: Path) -> str:
    """A SQLite store's --db value, for tests that run on SQLite only."""
    return str(tmp_path / "store.sqlite3")
