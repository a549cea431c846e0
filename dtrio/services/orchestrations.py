"""The orchestration dispatcher: replays orchestrators over their history and commits steps."""

from __future__ import annotations

import logging
from collections import OrderedDict

import trio

from .. import _pb as pb
from .. import history as h
from ..backend import Backend, OrchestrationWorkItem
from ..clock import Clock
from ..errors import LeaseLost
from ..registry import Registry
from ..replay import OrchestrationRun
from ..state import TERMINAL, apply_step
from .dispatch import RELEASE_TIMEOUT, Dispatcher, backoff
from .options import EngineOptions

log = logging.getLogger("dtrio.engine")


class RunCache:
    """Orchestration runs kept in memory between steps, so a step replays only its new events.

    An entry is valid only for the instance's step counter it was saved at: a step committed
    anywhere else (another process, a restart) makes the stored counter move past it.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._runs: OrderedDict[str, tuple[int, OrchestrationRun]] = OrderedDict()

    def take(self, instance_id: str, step: int) -> OrchestrationRun | None:
        entry = self._runs.pop(instance_id, None)
        if entry is None or entry[0] != step:
            return None
        return entry[1]

    def put(self, instance_id: str, step: int, run: OrchestrationRun) -> None:
        if self._size == 0:
            return
        self._runs[instance_id] = (step, run)
        if len(self._runs) > self._size:
            self._runs.popitem(last=False)

    def __len__(self) -> int:
        return len(self._runs)


class OrchestrationDispatcher:
    def __init__(self, backend: Backend, clock: Clock, registry: Registry, options: EngineOptions, owner: str) -> None:
        self._backend = backend
        self._clock = clock
        self._registry = registry
        self._lease_us = int(options.orchestration_lease * 1_000_000)
        self._owner = owner
        self.cache = RunCache(options.cache_size)
        self._failures: dict[str, int] = {}
        self.dispatcher: Dispatcher[OrchestrationWorkItem] = Dispatcher(
            "orchestration",
            options.max_concurrent_orchestrations,
            backend.orchestrations_ready,
            self._lease,
            self._execute,
            log,
        )

    async def _lease(self, limit: int) -> list[OrchestrationWorkItem]:
        return await self._backend.lease_orchestrations(self._owner, limit, self._lease_us)

    async def _execute(self, item: OrchestrationWorkItem) -> None:
        settled = False
        try:
            if not item.events or item.status in TERMINAL:
                await self._backend.release_orchestration(item)
                settled = True
                return
            run = self.cache.take(item.instance_id, item.step)
            past: list[pb.HistoryEvent] = []
            if run is None:
                run = OrchestrationRun(self._registry.orchestrators, item.instance_id)
                past = [pb.HistoryEvent.parse(data) for data in await self._backend.load_history(item.instance_id)]
            now = self._clock.now_dt()
            new = [(h.orchestrator_started(now), None)]
            cached = item.decoded
            for inbox_id, data in item.events:
                event = cached.get(inbox_id)
                new.append((pb.HistoryEvent.parse(data) if event is None else event, data))
            actions = run.feed(past, [event for event, _ in new])
            step = apply_step(
                item.instance_id, item.execution_id, run.started, new, actions, now,
                custom_status=run.custom_status, suspended=run.is_suspended,
            )
            await self._backend.complete_orchestration(item, step)
            settled = True
            self._failures.pop(item.instance_id, None)
            if not step.completed and not step.reset_history:
                self.cache.put(item.instance_id, item.step + 1, run)
            if step.completed:
                log.info(
                    "orchestration %s (%s) finished: %s",
                    item.instance_id, item.name, pb.OrchestrationStatus(step.status).name,
                )
        except LeaseLost as exc:
            settled = True
            log.warning("orchestration %s: %s", item.instance_id, exc)
        finally:
            if not settled:
                await self._abandon(item)

    async def _abandon(self, item: OrchestrationWorkItem) -> None:
        attempt = self._failures[item.instance_id] = self._failures.get(item.instance_id, 0) + 1
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + RELEASE_TIMEOUT
            try:
                await self._backend.abandon_orchestration(item, int(backoff(attempt) * 1_000_000))
            except Exception:
                log.exception("orchestration %s: could not abandon its work item", item.instance_id)
