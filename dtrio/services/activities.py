"""The activity dispatcher: runs activities (async on Trio, plain functions in a thread) and
records their results in the orchestration's inbox."""

from __future__ import annotations

import inspect
import logging

import trio

from .. import _pb as pb
from .. import history as h
from .. import payloads, tracing
from ..activity import ActivityContext
from ..backend import ActivityWorkItem, Backend
from ..clock import Clock
from ..errors import FailureDetails, LeaseLost
from ..logs import work_item
from ..registry import Registry
from ..signals import Wakeup
from ..wire import encode
from .dispatch import RELEASE_TIMEOUT, Dispatcher, backoff
from .options import EngineOptions

log = logging.getLogger("dtrio.engine")


def _extra(item: ActivityWorkItem) -> dict[str, object]:
    return work_item("activity", item.instance_id, task_id=item.task_id)


class ActivityDispatcher:
    def __init__(
        self, backend: Backend, clock: Clock, registry: Registry, options: EngineOptions, owner: str
    ) -> None:
        self._backend = backend
        self._clock = clock
        self._registry = registry
        self._owner = owner
        self._lease_s = options.activity_lease
        self._lease_us = int(options.activity_lease * 1_000_000)
        self._running: dict[int, ActivityWorkItem] = {}
        self._started = Wakeup()
        self.dispatcher: Dispatcher[ActivityWorkItem] = Dispatcher(
            "activity",
            options.max_concurrent_activities,
            backend.activities_ready,
            self._lease,
            self._execute,
            log,
        )

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._renew_leases)
            await self.dispatcher.serve(task_status=task_status)
            nursery.cancel_scope.cancel()

    async def _lease(self, limit: int) -> list[ActivityWorkItem]:
        return await self._backend.lease_activities(self._owner, limit, self._lease_us)

    async def _renew_leases(self) -> None:
        """Keep the leases of long-running activities alive; only a dead process loses them."""
        while True:
            if not self._running:
                # Sleep without a deadline while idle, so a MockClock can jump straight to timers.
                await self._started.wait()
            await trio.sleep(self._lease_s / 3)
            for item in list(self._running.values()):
                try:
                    await self._backend.renew_activity(item, self._lease_us)
                except LeaseLost as exc:
                    log.warning("%s", exc, extra=_extra(item))

    async def _execute(self, item: ActivityWorkItem) -> None:
        settled = False
        self._running[item.id] = item
        self._started.set()
        try:
            with tracing.activity(item, self._clock) as span:
                event = await self._invoke(item)
                if event.task_failed is not None:
                    tracing.fail(span, event.task_failed.failure_details.error_message)
            await self._backend.complete_activity(item, encode(event), decoded=event)
            settled = True
            if log.isEnabledFor(logging.DEBUG):
                self._log_result(item, event)
        except LeaseLost as exc:
            settled = True
            log.warning("%s", exc, extra=_extra(item))
        finally:
            self._running.pop(item.id, None)
            if not settled:
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + RELEASE_TIMEOUT
                    try:
                        await self._backend.abandon_activity(
                            item, int(backoff(item.attempt) * 1_000_000)
                        )
                    except Exception:
                        log.exception("activity %s#%d of %s: could not abandon it", item.name,
                                      item.task_id, item.instance_id, extra=_extra(item))

    def _log_result(self, item: ActivityWorkItem, event: pb.HistoryEvent) -> None:
        failed = event.task_failed
        outcome = (
            f"failed: {failed.failure_details.error_type}: {failed.failure_details.error_message}"
            if failed is not None and failed.failure_details is not None else "completed"
        )
        log.debug("activity %s#%d of %s (attempt %d) %s", item.name, item.task_id, item.instance_id,
                  item.attempt, outcome, extra=_extra(item))

    async def _invoke(self, item: ActivityWorkItem):  # type: ignore[no-untyped-def]
        fn = self._registry.activities.get(item.name)
        if fn is None:
            return h.task_failed(self._clock.now_dt(), item.task_id, FailureDetails(
                "ActivityNotRegistered",
                f"activity {item.name!r} is not registered with this worker",
                is_non_retriable=True,
            ))
        ctx = ActivityContext(item.instance_id, item.task_id, item.name, item.attempt)
        try:
            value = payloads.decode(item.input, f"input of activity {item.name!r}")
            if inspect.iscoroutinefunction(fn):
                result = await fn(ctx, value)
            else:
                result = await trio.to_thread.run_sync(fn, ctx, value, abandon_on_cancel=True)
            data = payloads.encode(result, f"output of activity {item.name!r}")
        except Exception as exc:
            return h.task_failed(self._clock.now_dt(), item.task_id, h.failure_from_exception(exc))
        return h.task_completed(self._clock.now_dt(), item.task_id, data)
