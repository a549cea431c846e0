"""The engine root: one nursery holding the poller and the work-item lifecycles over one
backend, and their graceful drain."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import partial
from typing import Any

import trio

from ..backend import Backend, Committed, is_postgres_url, open_backend
from ..client import Client
from ..clock import Clock
from ..registry import Registry
from . import owners
from .kinds import Activities, Entities, Orchestrations
from .lifecycle import Kind, Lifecycle, Runner
from .local import LocalActivities, LocalEntities, LocalOrchestrations, NextSteps
from .options import EngineOptions
from .poller import serve_poller
from .wakeups import Wakeups

log = logging.getLogger("dtrio.engine")

DEFAULT_DB = "dtrio.sqlite3"


class Workers:
    """One lifecycle per kind of work item, each with its runner, started and drained
    together."""

    def __init__(self, engine: Engine, runners: Mapping[str, Runner[Any, Any, Any]]) -> None:
        opts = engine.options
        limits = {"orchestration": opts.max_concurrent_orchestrations,
                  "activity": opts.max_concurrent_activities,
                  "entity": opts.max_concurrent_entities}
        self.lifecycles = {
            name: Lifecycle(engine.kinds[name], runner, engine.wakeups.ready[name],
                            owner=engine.owner, limit=limits[name])
            for name, runner in runners.items()
        }
        self.finished = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                for lifecycle in self.lifecycles.values():
                    await nursery.start(lifecycle.serve)
                task_status.started()
        finally:
            self.finished.set()

    def drain(self, grace: float) -> None:
        for lifecycle in self.lifecycles.values():
            lifecycle.drain(grace)


class Engine:
    """A running engine: `client` to drive it, `shutdown()` to stop it gracefully."""

    def __init__(
        self, registry: Registry, backend: Backend, clock: Clock, options: EngineOptions
    ) -> None:
        self.registry = registry
        self.backend = backend
        self.clock = clock
        self.options = options
        # What it leases work under: `host:pid:tag:start.space` (see owners.py).
        self.owner = owners.new_owner()
        self.wakeups = Wakeups()
        backend.listen(self.wakeups.committed)
        self.client = Client(backend, clock, poll_interval=options.max_poll_interval)
        self.kinds: dict[str, Kind[Any, Any, Any]] = {
            "orchestration": Orchestrations(backend, clock, options.orchestration_lease),
            "activity": Activities(backend, clock, options.activity_lease),
            "entity": Entities(backend, clock, options.orchestration_lease,
                               options.entity_batch_size),
        }
        # The runners of work done in this process (none when remote workers do it).
        self.local: dict[str, Any] = {}
        if options.local_workers:
            orchestrations = LocalOrchestrations(registry, clock, options.cache_size)
            next_steps = NextSteps(self.kinds["orchestration"], orchestrations, self.owner)
            self.local = {
                "orchestration": orchestrations,
                "activity": LocalActivities(registry, clock, next_steps),
                "entity": LocalEntities(registry),
            }
        self._workers: list[Workers] = []
        self.stopping = trio.Event()
        # Where the dashboard serves, once started (when `options.dashboard` asks for it).
        self.dashboard_url: str | None = None
        # The database URL other processes may share and announce their commits on (None: a
        # store without announcements, found by polling alone).
        self.shared_url: str | None = None

    def heard(self, notes: Committed | None) -> None:
        """Another process committed `notes` (None: possibly anything)."""
        self.wakeups.heard(notes)
        self.client.commands.heard(notes)

    def shutdown(self) -> None:
        """Stop taking work; in-flight items get `shutdown_grace` seconds to finish."""
        self.stopping.set()

    async def serve_workers(
        self, runners: Mapping[str, Runner[Any, Any, Any]], *,
        task_status: trio.TaskStatus[Workers] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the lifecycles of `runners` until cancelled, or drained by `shutdown()`; the
        store stays open until they have given back what they hold."""
        workers = Workers(self, runners)
        self._workers.append(workers)
        if self.stopping.is_set():
            workers.drain(self.options.shutdown_grace)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(workers.serve)
                task_status.started(workers)
        finally:
            self._workers.remove(workers)

    async def _drain(self) -> None:
        for workers in list(self._workers):
            workers.drain(self.options.shutdown_grace)
        for workers in list(self._workers):
            await workers.finished.wait()


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
    backend = open_backend(db, clock, synchronous=opts.synchronous)
    engine = Engine(registry, backend, clock, opts)
    if is_postgres_url(db) and opts.max_poll_interval is not None:
        engine.shared_url = str(db)
    return engine


async def _run_engine(engine: Engine, *, task_status: trio.TaskStatus[Engine]) -> None:
    backend, opts = engine.backend, engine.options
    owners.started(engine.owner)
    try:
        async with trio.open_nursery() as nursery:
            if engine.shared_url is not None:
                from .peers import serve_peer_wakeups  # psycopg: an optional extra

                await nursery.start(
                    serve_peer_wakeups, backend, engine.shared_url, engine.owner, engine.heard)
            await nursery.start(
                serve_poller, backend, engine.clock, engine.wakeups, opts.max_poll_interval)
            if engine.local:
                await nursery.start(engine.serve_workers, engine.local)
            # Work that processes now gone held: looked for now and, when other processes may
            # share the store (it is polled), every few seconds.
            await nursery.start(owners.serve_takeover, backend, engine.owner,
                                None if opts.max_poll_interval is None else owners.INTERVAL)
            if opts.dashboard is not None:
                engine.dashboard_url = await nursery.start(_dashboard, engine)
            log.info("engine %s started on %s (synchronous=%s)", engine.owner,
                     getattr(backend, "where", backend), opts.synchronous.upper())
            task_status.started(engine)
            await engine.stopping.wait()
            await engine._drain()
            nursery.cancel_scope.cancel()
    finally:
        owners.stopped(engine.owner)
        await backend.aclose()
        log.info("engine %s stopped", engine.owner)


async def _dashboard(engine: Engine, *, task_status: trio.TaskStatus[str]) -> None:
    # Imported only when asked for: the web stack is no part of an engine without it.
    from ..dashboard.security import Access, parse_address, read_token
    from ..dashboard.service import serve_dashboard

    opts = engine.options
    host, port = parse_address(opts.dashboard or "")
    token = read_token(opts.dashboard_token_file) if opts.dashboard_token_file else None
    await serve_dashboard(
        engine.client, host, port, access=Access(token=token, read_only=opts.dashboard_read_only),
        stopping=engine.stopping.wait, task_status=task_status)


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

    `db` is a SQLite file (created if missing), None / ":memory:" for a throwaway store, or a
    `postgresql://` URL.
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
