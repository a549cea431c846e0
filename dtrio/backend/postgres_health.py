"""A PostgreSQL store's connection to its server: lost (a restart, a network cut) and back.

Runs in the store's worker threads. The first operation to find the connection gone logs one
line and has the pool drop the other connections the server closed; operations then wait for
the pool to reconnect (it retries with backoff, up to `WAIT` seconds per operation), and the
first to succeed logs that the store is back.

An operation cut off before its COMMIT was sent changed nothing, so it is run once more on a new
connection. One cut off during its COMMIT may or may not have committed: it fails, and its
caller treats it as not done (a work item given back whose lease is already settled changes
nothing, so nothing completes twice).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

T = TypeVar("T")

log = logging.getLogger("dtrio.backend")

# How long an operation waits for a connection while the server is away.
WAIT = 15.0


def is_lost(exc: BaseException) -> bool:
    """Whether `exc` says the connection is gone (rather than that a statement was refused)."""
    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    # No SQLSTATE: libpq's own report of a broken socket; class 08: connection exception;
    # 57P01-57P03: the server is shutting down, crashed, or not yet accepting connections.
    state = exc.sqlstate
    return state is None or state.startswith(("08", "57P"))


class UnknownOutcome(psycopg.OperationalError):
    """The connection was lost while a COMMIT was in flight."""


class Health:
    def __init__(self, pool: ConnectionPool, where: str) -> None:
        self._pool = pool
        self._where = where
        self._lock = threading.Lock()
        self._lost_at: float | None = None

    def run(self, attempt: Callable[[], T], *, again: Callable[[], bool] = lambda: True) -> T:
        """`attempt()`, and once more if the connection was lost and `again()` says nothing
        was committed."""
        began = time.monotonic()
        try:
            result = attempt()
        except psycopg.Error as exc:
            if not is_lost(exc):
                raise
            self._lost(exc)
            if not again():
                raise UnknownOutcome(
                    "the connection was lost while committing; the write may or may not have "
                    "been saved"
                ) from None
            if isinstance(exc, PoolTimeout):
                raise
            began = time.monotonic()
            result = attempt()
        self._back(began)
        return result

    def _lost(self, exc: psycopg.Error) -> None:
        with self._lock:
            if self._lost_at is not None:
                return
            self._lost_at = time.monotonic()
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.warning("lost the connection to %s (%s); reconnecting, work resumes once it is "
                        "back", self._where, reason)
        # The server closed the idle connections too: drop them now rather than one failed
        # operation at a time.
        self._pool.check()

    def _back(self, began: float) -> None:
        """An attempt begun at `began` succeeded: the server is back if it began after the loss
        was seen (one begun before may have finished on a connection about to be cut)."""
        if self._lost_at is None or began <= self._lost_at:
            return
        with self._lock:
            if self._lost_at is None or began <= self._lost_at:
                return
            away, self._lost_at = time.monotonic() - self._lost_at, None
        log.info("connected to %s again after %.1f s", self._where, away)
