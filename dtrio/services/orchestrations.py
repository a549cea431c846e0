"""The orchestration dispatcher: replays orchestrators over their history and commits steps."""

from __future__ import annotations

import logging
from collections import OrderedDict
from datetime import datetime

import trio

from .. import _pb as pb
from .. import history as h
from .. import tracing
from ..backend import Backend, OrchestrationWorkItem
from ..clock import Clock
from ..errors import LeaseLost
from ..logs import work_item
from ..registry import Registry
from ..replay import OrchestrationRun, describe_action
from ..state import TERMINAL, OrchestrationStep, apply_step
from ..wire import decode
from .dispatch import RELEASE_TIMEOUT, Dispatcher, backoff
from .options import EngineOptions

log = logging.getLogger("dtrio.engine")
_S = pb.OrchestrationStatus


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
    def __init__(
        self, backend: Backend, clock: Clock, registry: Registry, options: EngineOptions, owner: str
    ) -> None:
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
            past: list[pb.HistoryEvent] | None = None
            if run is None:
                run = OrchestrationRun(self._registry.orchestrators, item.instance_id)
                past = await self._load_history(item)
            now = self._clock.now_dt()
            new: list[tuple[pb.HistoryEvent, bytes | None]] = [h.step_opener(now)]
            cached = item.decoded
            for inbox_id, data in item.events:
                event = cached.get(inbox_id)
                new.append((decode(pb.HistoryEvent, data) if event is None else event, data))
            events = [event for event, _ in new]
            actions = run.feed(past or [], events)
            step = apply_step(
                item.instance_id, item.execution_id, run.started, new, actions, now,
                custom_status=run.custom_status, suspended=run.is_suspended,
            )
            ended = step.completed or step.continued_as_new
            execution: list[pb.HistoryEvent] | None = None
            if ended and run.started is not None and run.started.orchestration_span_id:
                # Read before committing: continuing as new replaces the history it is read from.
                execution = (past if past is not None else await self._load_history(item)) + events
            await self._backend.complete_orchestration(item, step)
            settled = True
            self._failures.pop(item.instance_id, None)
            if not step.completed and not step.reset_history:
                self.cache.put(item.instance_id, item.step + 1, run)
            self._log_step(item, events, actions, step)
            if execution is not None:
                self._emit_spans(item, execution, now, step)
        except LeaseLost as exc:
            settled = True
            log.warning("orchestration %s: %s", item.instance_id, exc,
                        extra=work_item("orchestration", item.instance_id))
        finally:
            if not settled:
                await self._abandon(item)

    async def _load_history(self, item: OrchestrationWorkItem) -> list[pb.HistoryEvent]:
        stored = await self._backend.load_history(item.instance_id)
        return [decode(pb.HistoryEvent, data) for data in stored]

    def _emit_spans(
        self, item: OrchestrationWorkItem, execution: list[pb.HistoryEvent], now: datetime,
        step: OrchestrationStep,
    ) -> None:
        status = int(_S.CONTINUED_AS_NEW) if step.continued_as_new else step.status
        failure = pb.TaskFailureDetails.parse(step.failure) if step.failure else None
        try:
            tracing.emit_execution(item.instance_id, execution, now, status, failure)
        except Exception:
            # The step is committed; a failing exporter must not make the engine redo it.
            log.exception("orchestration %s: could not emit its spans", item.instance_id,
                          extra=work_item("orchestration", item.instance_id))

    def _log_step(
        self, item: OrchestrationWorkItem, events: list[pb.HistoryEvent],
        actions: list[pb.OrchestratorAction], step: OrchestrationStep,
    ) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        iid, name = item.instance_id, item.name
        extra = work_item("orchestration", iid)
        if item.step == 0:
            log.info("orchestration %s (%s) started", iid, name, extra=extra)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "orchestration %s (%s) step %d: events [%s] -> actions [%s]", iid, name, item.step,
                ", ".join(h.kind(e) for e in events),
                ", ".join(describe_action(a) for a in actions),
                extra=extra,
            )
        if step.continued_as_new:
            log.info("orchestration %s (%s) continued as new", iid, name, extra=extra)
        elif step.completed:
            status = _S(step.status).name
            failure = pb.TaskFailureDetails.parse(step.failure) if step.failure else None
            if failure is not None:
                log.info("orchestration %s (%s) finished: %s: %s: %s", iid, name, status,
                         failure.error_type, failure.error_message, extra=extra)
            else:
                log.info("orchestration %s (%s) finished: %s", iid, name, status, extra=extra)

    async def _abandon(self, item: OrchestrationWorkItem) -> None:
        attempt = self._failures[item.instance_id] = self._failures.get(item.instance_id, 0) + 1
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + RELEASE_TIMEOUT
            try:
                await self._backend.abandon_orchestration(item, int(backoff(attempt) * 1_000_000))
            except Exception:
                log.exception("orchestration %s: could not abandon its work item", item.instance_id,
                              extra=work_item("orchestration", item.instance_id))
