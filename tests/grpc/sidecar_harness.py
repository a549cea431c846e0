"""The sidecar in process on port 0 and the official durabletask SDK worker beside it, for the
sidecar tests (a module of its own: `conftest` is a name every test folder has)."""


from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import sdk_app as app
import trio
from durabletask import client as sdk_client
from durabletask import worker as sdk_worker

import dtrio
from dtrio.grpc import serve_sidecar


@dataclass
class Sidecar:
    engine: dtrio.Engine
    address: str
    client: sdk_client.TaskHubGrpcClient

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one blocking SDK call in a thread."""
        return await trio.to_thread.run_sync(partial(fn, *args, **kwargs))

    async def run(self, orchestrator: Any, *, input: Any = None, timeout: float = 20, **kw: Any):
        """Start an orchestration and wait for it to finish; its final state."""
        start = self.client.schedule_new_orchestration
        iid = await self.call(start, orchestrator, input=input, **kw)
        return await self.call(self.client.wait_for_orchestration_completion, iid, timeout=timeout)


@asynccontextmanager
async def running_sidecar(
    *, db: Any = None, engine_options: dict[str, Any] | None = None, **options: Any
) -> AsyncIterator[Sidecar]:
    """An engine on a store (in memory unless `db` names a file) with the sidecar in front of
    it, on a free port. `engine_options` are EngineOptions fields, `options` serve_sidecar's."""
    engine_options = {"max_poll_interval": None, **(engine_options or {})}
    async with dtrio.open_engine(
        dtrio.Registry(), db=db, local_workers=False, **engine_options
    ) as engine:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(partial(serve_sidecar, engine, "127.0.0.1", 0, **options))
            address = f"127.0.0.1:{port}"
            yield Sidecar(engine, address, sdk_client.TaskHubGrpcClient(host_address=address))
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def sdk_worker_running(
    address: str,
    orchestrators: Iterable[Any] = app.ORCHESTRATORS,
    activities: Iterable[Any] = app.ACTIVITIES,
    *,
    max_activities: int | None = None,
    entities: Iterable[tuple[Any, str | None]] = (),
    scheduled_tasks: bool = False,
    filters: bool = False,
    exception_properties_provider: Any = None,
) -> AsyncIterator[sdk_worker.TaskHubGrpcWorker]:
    """An SDK worker connected to `address`; `max_activities` is its concurrency hint.
    `entities` are (entity, name or None) pairs; `scheduled_tasks` turns on the SDK's
    scheduled tasks. With `filters` it asks for only the work it has registered.
    `exception_properties_provider` adds custom properties to the failures it reports."""
    worker = sdk_worker.TaskHubGrpcWorker(
        host_address=address,
        concurrency_options=sdk_worker.ConcurrencyOptions(
            maximum_concurrent_activity_work_items=max_activities
        ),
        exception_properties_provider=exception_properties_provider,
    )
    for orchestrator in orchestrators:
        worker.add_orchestrator(orchestrator)
    for activity in activities:
        worker.add_activity(activity)
    for entity, name in entities:
        worker.add_entity(entity, name=name)
    if scheduled_tasks:
        worker.configure_scheduled_tasks()
    if filters:
        worker.use_work_item_filters()
    await trio.to_thread.run_sync(worker.start)
    try:
        yield worker
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(worker.stop)
