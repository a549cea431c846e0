"""The entity dispatcher: runs batches of entity operations in process and commits them."""

from __future__ import annotations

import logging
from datetime import datetime

import trio

from .. import _pb as pb
from ..backend import Backend, EntityWorkItem
from ..clock import Clock
from ..entities.batch import EntityBatch, finish_batch, plan_batch
from ..entities.context import run_batch
from ..errors import LeaseLost
from ..logs import work_item
from ..registry import Registry
from ..signals import Wakeup
from ..wire import decode
from .dispatch import RELEASE_TIMEOUT, Dispatcher, backoff
from .options import EngineOptions

log = logging.getLogger("dtrio.engine")


def plan_item(item: EntityWorkItem, now: datetime) -> EntityBatch:
    """The batch a leased entity work item runs (shared with the sidecar's remote work)."""
    messages = [
        (inbox_id, item.decoded.get(inbox_id) or decode(pb.HistoryEvent, data))
        for inbox_id, data in item.messages
    ]
    return plan_batch(
        item.instance_id, item.state, item.locked_by, item.lock_section, messages, now)


class EntityDispatcher:
    def __init__(
        self, backend: Backend, clock: Clock, registry: Registry, options: EngineOptions,
        owner: str,
    ) -> None:
        self._backend = backend
        self._clock = clock
        self._registry = registry
        self._owner = owner
        self._lease_us = int(options.orchestration_lease * 1_000_000)
        self._batch_size = options.entity_batch_size
        self._failures: dict[str, int] = {}
        # By lease token: a batch whose lease ran out may be leased again here while the first
        # one still runs, and each keeps its own entry.
        self._running: dict[str, EntityWorkItem] = {}
        self._started = Wakeup()
        self.dispatcher: Dispatcher[EntityWorkItem] = Dispatcher(
            "entity", options.max_concurrent_entities, backend.entities_ready, self._lease,
            self._execute, log,
        )

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._renew_leases)
            await self.dispatcher.serve(task_status=task_status)
            nursery.cancel_scope.cancel()

    async def _renew_leases(self) -> None:
        """Keep the leases of batches whose operations take long (they may await I/O)."""
        while True:
            if not self._running:
                # Sleep without a deadline while idle, so a MockClock can jump straight to timers.
                await self._started.wait()
            await trio.sleep(self._lease_us / 3_000_000)
            for item in list(self._running.values()):
                try:
                    await self._backend.renew_entity(item, self._lease_us)
                except LeaseLost as exc:
                    log.warning("%s", exc, extra=work_item("entity", item.instance_id))

    async def _lease(self, limit: int) -> list[EntityWorkItem]:
        return await self._backend.lease_entities(
            self._owner, limit, self._lease_us, self._batch_size)

    async def _execute(self, item: EntityWorkItem) -> None:
        settled = False
        self._running[item.lock_token] = item
        self._started.set()
        try:
            now = self._clock.now_dt()
            batch = plan_item(item, now)
            result = await run_batch(self._registry.entities, batch, now)
            step = finish_batch(batch, result, now)
            for why in step.rejected:
                log.warning("dropped %s", why, extra=work_item("entity", item.instance_id))
            await self._backend.complete_entity(item, step)
            settled = True
            self._failures.pop(item.instance_id, None)
            if log.isEnabledFor(logging.DEBUG):
                failed = sum(r.failure is not None for r in result.results)
                log.debug("entity %s ran %d operations (%d failed) of %d messages",
                          item.instance_id, len(batch.operations), failed, len(item.messages),
                          extra=work_item("entity", item.instance_id))
        except LeaseLost as exc:
            settled = True
            log.warning("entity %s: %s", item.instance_id, exc,
                        extra=work_item("entity", item.instance_id))
        finally:
            self._running.pop(item.lock_token, None)
            if not settled:
                await self._abandon(item)

    async def _abandon(self, item: EntityWorkItem) -> None:
        attempt = self._failures[item.instance_id] = self._failures.get(item.instance_id, 0) + 1
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + RELEASE_TIMEOUT
            try:
                await self._backend.abandon_entity(item, int(backoff(attempt) * 1_000_000))
            except Exception:
                log.exception("entity %s: could not abandon its work item", item.instance_id,
                              extra=work_item("entity", item.instance_id))
