"""The dashboard as a service under the engine's Trio root: Hypercorn's Trio worker serving the
app, started with `nursery.start` once its port is bound."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from ..client import Client
from .app import build_app
from .security import Access, check_exposure

log = logging.getLogger("dtrio.dashboard")


async def serve_dashboard(
    client: Client, host: str, port: int, *, access: Access | None = None,
    stopping: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the dashboard on host:port (0: any free port) until cancelled, or until
    `stopping()` returns (then requests in flight get a second to finish). `started()` gives
    its URL."""
    access = access or Access()
    check_exposure(host, guarded=access.token is not None, read_only=access.read_only)
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("dtrio.dashboard.server")
    config.graceful_timeout = 1.0
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(lambda task_status: serve(
            build_app(client, access), config, shutdown_trigger=stopping,
            task_status=task_status))
        url = binds[0]
        log.info("dashboard on %s%s", url, " (read-only)" if access.read_only else "")
        task_status.started(url)
