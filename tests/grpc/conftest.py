"""The sidecar in process on port 0, driven by the official durabletask SDK (worker and client).

The SDK is synchronous and threaded: its calls run in worker threads so the Trio loop, which
serves them, stays free.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from durabletask import worker as sdk_worker
from sidecar_harness import Sidecar, running_sidecar, sdk_worker_running


@pytest.fixture
async def sidecar() -> AsyncIterator[Sidecar]:
    async with running_sidecar() as running:
        yield running


@pytest.fixture
async def worker(sidecar: Sidecar) -> AsyncIterator[sdk_worker.TaskHubGrpcWorker]:
    """One SDK worker with every orchestrator and activity of `app` registered."""
    async with sdk_worker_running(sidecar.address) as running:
        yield running
