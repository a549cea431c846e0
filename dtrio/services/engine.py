"""The engine root: one nursery holding the poller and both dispatchers over one backend."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import partial
from typing import Any

import trio

from ..backend import Backend, open_sqlite_backend
from ..client import Client
from ..clock import Clock
from ..registry import Registry
from .activities import ActivityDispatcher
from .entities import EntityDispatcher
from .options import EngineOptions
from .orchestrations import OrchestrationDispatcher
from .poller import serve_poller

log = logging.getLogger("dtrio.engine")

DEFAULT_DB = "dtrio.sqlite3"


class Engine:
    """A running engine: `client` to drive it, `shutdown()` to stop it gracefully."""

    def __init__(
        self, registry: Registry, backend: Backend, clock: Clock, options: EngineOptions
    ) -> None:
        self.registry = registry
        self.backend = backend
        self.clock = clock
        self.options = options
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.client = Client(backend, clock, poll_interval=options.max_poll_interval)
        self.orchestrations = OrchestrationDispatcher(backend, clock, registry, options, self.owner)
        self.activities = ActivityDispatcher(backend, clock, registry, options, self.owner)
        self.entities = EntityDispatcher(backend, clock, registry, options, self.owner)
        self._stop = trio.Event()

    def shutdown(self) -> None:
        """Stop taking work; in-flight items get `shutdown_grace` seconds to finish."""
        self._stop.set()


def _options(options: EngineOptions | None, overrides: dict[str, Any]) -> EngineOptions:
    return replace(options or EngineOptions(), **overrides)


def _build_engine(
    registry: Registry,
    db: str | os.PathLike[str] | None,
    options: EngineOptions | None,
    overrides: dict[str, Any],
) -> Engine:
    opts = _options(options, overrides)
    clock = Clock()
    backend = open_sqlite_backend(db, clock, synchronous=opts.synchronous)
    return Engine(registry, backend, clock, opts)


async def _run_engine(engine: Engine, *, task_status: trio.TaskStatus[Engine]) -> None:
    backend, opts = engine.backend, engine.options
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_poller, backend, engine.clock, opts.max_poll_interval)
            dispatchers = []
            if opts.local_workers:
                await nursery.start(engine.orchestrations.dispatcher.serve)
                await nursery.start(engine.activities.serve)
                await nursery.start(engine.entities.serve)
                dispatchers = [engine.orchestrations.dispatcher, engine.activities.dispatcher,
                               engine.entities.dispatcher]
            log.info("engine %s started on %s (synchronous=%s)", engine.owner,
                     getattr(backend, "where", backend), opts.synchronous.upper())
            task_status.started(engine)
            await engine._stop.wait()
            for dispatcher in dispatchers:
                dispatcher.drain()
            with trio.move_on_after(opts.shutdown_grace):
                for dispatcher in dispatchers:
                    await dispatcher.finished.wait()
            nursery.cancel_scope.cancel()
    finally:
        await backend.aclose()
        log.info("engine %s stopped", engine.owner)


async def serve_engine(
    registry: Registry,
    *,
    db: str | os.PathLike[str] | None = DEFAULT_DB,
    options: EngineOptions | None = None,
    task_status: trio.TaskStatus[Engine] = trio.TASK_STATUS_IGNORED,
    **overrides: Any,
) -> None:
    """Run an engine until cancelled or until `engine.shutdown()`; `started()` gives the Engine."""
    await _run_engine(_build_engine(registry, db, options, overrides), task_status=task_status)


@asynccontextmanager
async def open_engine(
    registry: Registry,
    *,
    db: str | os.PathLike[str] | None = DEFAULT_DB,
    options: EngineOptions | None = None,
    **overrides: Any,
) -> AsyncIterator[Engine]:
    """Run an engine for the duration of the block; leaving the block shuts it down gracefully.

    `db` is a SQLite file (created if missing), or None / ":memory:" for a throwaway store.
    Keyword overrides set `EngineOptions` fields (e.g. `max_concurrent_activities=50`).
    """
    # Opening the store here, outside the nursery, lets its errors reach the caller unwrapped.
    engine = _build_engine(registry, db, options, overrides)
    body_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(_run_engine, engine))
            try:
                yield engine
            except BaseException as exc:
                body_error = exc
                raise
            finally:
                engine.shutdown()
    except BaseExceptionGroup as group:
        # Report the block's own error as itself, not wrapped in the nursery's group.
        if (
            body_error is not None
            and len(group.exceptions) == 1
            and group.exceptions[0] is body_error
        ):
            raise body_error from None
        raise
