"""The sidecar service: the gRPC server, and the work-item lifecycles whose runner is the
connected SDK workers, over a running engine."""

from __future__ import annotations

import logging
from functools import partial
from os import PathLike

import trio

from ..durations import Duration, to_seconds
from ..errors import InvalidInput
from ..logs import as_debug, withhold_header_dumps
from ..services import Engine
from ..services.remote import RemoteRunner, RemoteWork
from .bridge import DEFAULT_MAX_CONCURRENT_STREAMS, serve_grpc
from .inbound import DEFAULT_MAX_MESSAGE_SIZE
from .security import is_loopback, open_door
from .servicer import Servicer
from .workitems import DEFAULT_MAX_WORK_ITEM_SIZE, HEALTH_PING, WorkItemEncoder

log = logging.getLogger("dtrio.grpc")

# The Python SDK worker takes 120 s without a message for a dead stream.
HEALTH_PING_INTERVAL = 30.0
# How long the streams of workers may take to end once the sidecar has drained.
STREAMS_END_TIMEOUT = 5.0
# How long a worker may read nothing, or finish nothing while it holds orchestration steps or
# entity batches, before it counts as gone (a slow worker is not a dead one: longer than a lease).
STALL_TIMEOUT = 60.0


async def serve_sidecar(
    engine: Engine,
    host: str = "127.0.0.1",
    port: int = 4001,
    *,
    health_ping_interval: Duration = HEALTH_PING_INTERVAL,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    max_work_item_size: int = DEFAULT_MAX_WORK_ITEM_SIZE,
    entity_request_version: int = 2,
    stall_timeout: Duration | None = None,
    max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS,
    tls_cert: str | PathLike[str] | None = None,
    tls_key: str | PathLike[str] | None = None,
    tls_client_ca: str | PathLike[str] | None = None,
    auth_token_file: str | PathLike[str] | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve TaskHubSidecarService for `engine`; `started()` gives the bound port.

    Run the engine with `local_workers=False`: its work is for the SDK workers that connect.
    `engine.shutdown()` drains it: no new work is handed out, work items that workers hold get
    the engine's `shutdown_grace` to complete, the rest are given back, the workers' streams
    end (the SDKs reconnect from that) and this returns. Cancelling gives back at once every
    work item the workers hold, for the next start to pick up.

    A request over `max_message_size` bytes fails alone: a client's with RESOURCE_EXHAUSTED, a
    worker's result by failing its activity, orchestration or entity operations. A work item
    over `max_work_item_size` bytes is not sent: its activity, orchestration or entity
    operations fail instead. Entity work goes to workers as `entityRequestV2` work items, or
    with `entity_request_version=1` as `entityRequest` (for workers that take only that form).
    A worker whose stream stops reading, or that finishes nothing for `stall_timeout` seconds
    (default 60) while it holds orchestration steps or entity batches,
    counts as gone: its stream is ended and its work items go to other workers.

    With `tls_cert` and `tls_key` (PEM files) it serves over TLS; with `tls_client_ca` too,
    only to clients presenting a certificate that CA signed. With `auth_token_file`, every RPC
    but Hello must carry the header `authorization: Bearer <token>` (the file's text, without
    the whitespace around it), or it fails with UNAUTHENTICATED. One connection may have
    `max_concurrent_streams` calls open at once; a client opening more waits for its turn.
    """
    door = open_door(tls_cert, tls_key, tls_client_ca, auth_token_file)
    ping_every = to_seconds(
        health_ping_interval, "serve_sidecar(health_ping_interval=...)", positive=True
    )
    for name, size in (("max_message_size", max_message_size),
                       ("max_work_item_size", max_work_item_size)):
        if size < 1:
            raise InvalidInput(f"{name} must be at least 1 byte")
    if max_concurrent_streams < 1:
        raise InvalidInput("max_concurrent_streams must be at least 1")
    if engine.options.local_workers:
        # Both would lease the same work, and wait on the same wake-ups.
        raise InvalidInput(
            "the sidecar serves an engine without in-process workers: "
            "start it with local_workers=False"
        )
    stall = STALL_TIMEOUT if stall_timeout is None else to_seconds(
        stall_timeout, "serve_sidecar(stall_timeout=...)", positive=True)
    remote = RemoteWork(
        WorkItemEncoder(max_work_item_size, entity_request_version), stall_timeout=stall)
    runners = {name: RemoteRunner(remote, kind) for name, kind in engine.kinds.items()}
    # grpclib's INFO lines say that a caller cancelled its call or let its deadline pass: a
    # worker that stops, a client that gives up waiting. Callers do that; the lines that
    # matter (a worker's stream connected or disconnected) are dtrio's own.
    as_debug("grpclib.server")
    if door.token is not None:
        withhold_header_dumps()
    async with trio.open_nursery() as nursery:
        workers = await nursery.start(engine.serve_workers, runners)
        remote.bind(workers.lifecycles)
        bound = await nursery.start(partial(
            serve_grpc, Servicer(engine, remote, ping=HEALTH_PING, ping_interval=ping_every,
                                 stall_timeout=stall),
            host, port, max_message_size=max_message_size,
            max_concurrent_streams=max_concurrent_streams, door=door,
        ))
        log.info("sidecar listening on %s:%d (%s, %s)", host, bound,
                 "TLS" if door.ssl else "plaintext",
                 "token required" if door.token else "no token")
        await _warn_if_open(host, door.token is not None, door.ssl is not None)
        task_status.started(bound)
        await engine.stopping.wait()
        # The engine drains these workers with the rest; their streams stay open meanwhile, so
        # that the work items they hold can be completed.
        await workers.finished.wait()
        remote.close()
        with trio.move_on_after(STREAMS_END_TIMEOUT):
            await remote.connected_streams.wait_value(0)
        log.info("sidecar drained; closing the server")
        nursery.cancel_scope.cancel()


async def _warn_if_open(host: str, token: bool, tls: bool) -> None:
    if await is_loopback(host):
        return
    if not token:
        log.warning("the sidecar listens on %s, beyond this machine, without an auth token: "
                    "anyone who reaches the port can start, terminate and purge instances "
                    "(give --auth-token-file, and TLS)", host)
    elif not tls:
        log.warning("the sidecar listens on %s, beyond this machine, without TLS: the auth "
                    "token crosses the network in clear (give --tls-cert and --tls-key)", host)
