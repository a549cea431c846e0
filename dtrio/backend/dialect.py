"""What the statement layer (`statements*.py`) needs from an SQL store: the `Tx` each operation
runs in, the `Store` that opens and commits those transactions, and the `Dialect` that spells
what SQLite and PostgreSQL write differently.

Statements are written once, with `?` marks, in the SQL both databases understand: SQLite runs
them as written (no translation on its hot paths), a PostgreSQL transaction respells the marks
once per statement text (`percent_style`). What no common spelling covers is a `Dialect` field.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from ..events import StoredEvent
from .base import Listener

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Dialect:
    # An SQL expression for a fresh lease token, evaluated once per row.
    new_token: str
    # Appended to a SELECT that reads a row the transaction goes on to change: "" where a
    # transaction holds the whole store (SQLite), a row lock where writers run side by side.
    for_update: str
    # Appended to the subquery that picks the rows a lease takes: concurrent leases skip each
    # other's rows instead of waiting on them.
    skip_locked: str
    # Lists travel as one array parameter (`= ANY(?)`) rather than a mark per value.
    arrays: bool
    # Operations run in the engine's own thread, so one may plan an orchestration step (run
    # orchestrator code) inside its transaction; elsewhere they run in worker threads.
    plans_in_place: bool

    def in_list(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """A condition that `column` is one of `values`, with its parameters."""
        if self.arrays:
            return f"{column} = ANY(?)", [list(values)]
        return f"{column} IN ({','.join('?' * len(values))})", list(values)


SQLITE = Dialect(new_token="hex(randomblob(12))", for_update="", skip_locked="", arrays=False,
                 plans_in_place=True)
POSTGRES = Dialect(
    new_token="md5(random()::text || clock_timestamp()::text)", for_update=" FOR UPDATE",
    skip_locked=" FOR UPDATE SKIP LOCKED", arrays=True, plans_in_place=False,
)


@functools.lru_cache(maxsize=1024)
def percent_style(sql: str) -> str:
    """A statement with `?` marks in psycopg's spelling (`%s`, and `%` written `%%`)."""
    return sql.replace("%", "%%").replace("?", "%s")


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Now(Protocol):
    def now_us(self) -> int: ...


class Tx(Protocol):
    """One operation's view of its transaction: statements, "now", the dialect, what the
    transaction makes due, and the parsed events it writes (kept for whoever leases them here).
    """

    dialect: Dialect
    clock: Now

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]], /) -> Any: ...

    def insert(self, sql: str, params: Sequence[Any]) -> int:
        """Run an INSERT of one row into a table keyed by `id`; its new id."""
        ...

    def due(self, kind: str, visible_at: int, now: int) -> None: ...

    def changed(self, instance_id: str) -> None: ...

    def keep(self, key: int, event: StoredEvent) -> None: ...

    def leased(self, key: int, data: bytes) -> StoredEvent: ...

    def moved(self, old: int, new: int) -> None: ...


class Store(Protocol):
    """Transactions over one database; each runs an operation `fn(tx)`."""

    clock: Now
    where: str
    dialect: Dialect

    def listen(self, listener: Listener) -> None: ...

    async def read(self, fn: Callable[[Tx], T]) -> T:
        """Reads only, seeing the last commit."""
        ...

    async def write(self, fn: Callable[[Tx], T]) -> T:
        """Group-committed with the writes queued at the same time; `fn` fails alone."""
        ...

    async def lease(self, fn: Callable[[Tx], T]) -> T:
        """In a transaction of its own, never cancelled once begun."""
        ...

    async def aclose(self) -> None: ...
