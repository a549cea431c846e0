"""The sidecar service: remote work dispatch and the gRPC server, over a running engine."""

from __future__ import annotations

import logging
from functools import partial

import trio

from ..durations import Duration, to_seconds
from ..errors import InvalidInput
from ..services import Engine
from .bridge import serve_grpc
from .inbound import DEFAULT_MAX_MESSAGE_SIZE
from .remote import DEFAULT_MAX_WORK_ITEM_SIZE, RemoteWork
from .servicer import Servicer

log = logging.getLogger("dtrio.grpc")

# The Python SDK worker takes 120 s without a message for a dead stream.
HEALTH_PING_INTERVAL = 30.0


async def serve_sidecar(
    engine: Engine,
    host: str = "127.0.0.1",
    port: int = 4001,
    *,
    health_ping_interval: Duration = HEALTH_PING_INTERVAL,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    max_work_item_size: int = DEFAULT_MAX_WORK_ITEM_SIZE,
    entity_request_version: int = 2,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve TaskHubSidecarService for `engine` until cancelled; `started()` gives the bound port.

    Run the engine with `local_workers=False`: its work is for the SDK workers that connect.
    Cancelling releases every work item those workers hold, for the next start to pick up.
    A request over `max_message_size` bytes fails alone: a client's with RESOURCE_EXHAUSTED, a
    worker's result by failing its activity, orchestration or entity operations. A work item
    over `max_work_item_size` bytes is not sent: its activity, orchestration or entity
    operations fail instead. Entity work goes to workers as `entityRequestV2` work items, or
    with `entity_request_version=1` as `entityRequest` (for workers that take only that form).
    """
    ping_every = to_seconds(
        health_ping_interval, "serve_sidecar(health_ping_interval=...)", positive=True
    )
    for name, size in (("max_message_size", max_message_size),
                       ("max_work_item_size", max_work_item_size)):
        if size < 1:
            raise InvalidInput(f"{name} must be at least 1 byte")
    if engine.options.local_workers:
        # Both would lease the same work, and wait on the same backend wake-ups.
        raise InvalidInput(
            "the sidecar serves an engine without in-process workers: "
            "start it with local_workers=False"
        )
    remote = RemoteWork(
        engine, health_ping_interval=ping_every, max_work_item_size=max_work_item_size,
        entity_request_version=entity_request_version,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(remote.serve)
        bound = await nursery.start(partial(
            serve_grpc, Servicer(engine, remote), host, port, max_message_size=max_message_size
        ))
        log.info("sidecar listening on %s:%d", host, bound)
        task_status.started(bound)
