"""Runners for work done in this process: orchestrators replayed from the registry, activities
called, entity batches run. The lifecycle leases, settles and gives back; these only run."""

from __future__ import annotations

import inspect
import logging
from collections import OrderedDict
from datetime import datetime
from typing import Any

import trio

from .. import _pb as pb
from .. import history as h
from .. import payloads, tracing
from ..activity import ActivityContext
from ..backend import ActivityWorkItem, EntityWorkItem, OrchestrationWorkItem
from ..clock import Clock
from ..entities.context import run_batch
from ..logs import work_item
from ..registry import Registry
from ..replay import OrchestrationRun
from ..state import OrchestrationStep
from .kinds import ActivityResult, EntityWork, Orchestrations, StepResult, StepWork
from .lifecycle import Runner, unlimited

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

    def peek(self, instance_id: str) -> tuple[int, OrchestrationRun] | None:
        """The run kept for `instance_id` and the step it is current for, left in place."""
        return self._runs.get(instance_id)

    def put(self, instance_id: str, step: int, run: OrchestrationRun) -> None:
        if self._size == 0:
            return
        self._runs[instance_id] = (step, run)
        if len(self._runs) > self._size:
            self._runs.popitem(last=False)

    def __len__(self) -> int:
        return len(self._runs)


class LocalOrchestrations:
    def __init__(self, registry: Registry, clock: Clock, cache_size: int) -> None:
        self._registry = registry
        self._clock = clock
        self.cache = RunCache(cache_size)
        # Per step being settled: its run, and the execution's whole history when its spans
        # are to be emitted once it ends.
        self._running: dict[str, tuple[OrchestrationRun, list[pb.HistoryEvent] | None]] = {}

    def rooms(self) -> list[tuple[Any, float]]:
        return unlimited()

    async def run(self, item: OrchestrationWorkItem, work: StepWork, names: Any) -> StepResult:
        run = self.cache.take(item.instance_id, item.step)
        past: list[pb.HistoryEvent] | None = None
        if run is None:
            run = OrchestrationRun(self._registry.orchestrators, item.instance_id)
            past = [stored.event for stored in await work.past()]
        events = work.events
        actions = run.feed(past or [], events)
        work.started = run.started
        execution = None
        if run.started is not None and run.started.orchestration_span_id and any(
                action.complete_orchestration is not None for action in actions):
            # Read before committing: continuing as new replaces the history it is read from.
            if past is None:
                past = [stored.event for stored in await work.past()]
            execution = past + events
        self._running[item.lock_token] = (run, execution)
        return StepResult(actions, run.custom_status)

    def settled(
        self, item: OrchestrationWorkItem, work: StepWork, result: StepResult,
        step: OrchestrationStep,
    ) -> None:
        run, execution = self._running.pop(item.lock_token)
        self.keep(item, step, run)
        if execution is not None:
            self._emit_spans(item, execution, work.now, step)

    def keep(self, item: OrchestrationWorkItem, step: OrchestrationStep,
             run: OrchestrationRun) -> None:
        """Keep `run` for the instance's next step, once `step` is committed."""
        if not step.completed and not step.reset_history:
            self.cache.put(item.instance_id, item.step + 1, run)

    def failed(self, item: OrchestrationWorkItem, error: BaseException) -> None:
        self._running.pop(item.lock_token, None)

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


# -- an orchestration's next step, run in its activity's commit ------------------------------
#
# When an activity's orchestration is cached here, the step its result wakes runs in the
# activity's task and commit (`Backend.complete_activity` with a `NextStep`): no inbox row,
# wake-up, lease transaction or worker task in between. Nothing is lost if the process dies
# before that commit: the activity is still leased (it runs again once its lease lapses) and
# the instance is untouched. The store declines unless the instance is idle at the cached step,
# and runs whose spans are emitted are not offered (their whole history is read when they
# end); the result is then delivered as usual, and the step runs in the orchestration
# lifecycle.


class NextSteps:
    def __init__(self, kind: Orchestrations, runner: LocalOrchestrations, owner: str) -> None:
        self.kind = kind
        self.runner = runner
        self.owner = owner

    def offer(self, instance_id: str) -> CachedStep | None:
        """The next step of `instance_id`, if its run is cached here."""
        cached = self.runner.cache.peek(instance_id)
        if cached is None:
            return None
        step, run = cached
        started = run.started
        if started is None or started.orchestration_span_id:
            return None
        return CachedStep(self, step)


class CachedStep:
    """One offered step: planned inside the store's transaction, kept once committed."""

    __slots__ = ("_planned", "_steps", "owner", "step")

    def __init__(self, steps: NextSteps, step: int) -> None:
        self._steps = steps
        self.owner = steps.owner
        self.step = step
        self._planned: tuple[OrchestrationWorkItem, StepWork, StepResult, OrchestrationStep,
                             OrchestrationRun] | None = None

    def plan(self, item: OrchestrationWorkItem) -> OrchestrationStep | None:
        steps = self._steps
        work = steps.kind.open(item)
        # Taken out of the cache: whatever happens from here, a run fed these events is not
        # current for the stored step until the commit says so.
        run = steps.runner.cache.take(item.instance_id, self.step)
        if work is None or run is None:
            return None
        try:
            actions = run.feed((), work.events)
            work.started = run.started
            result = StepResult(actions, run.custom_status)
            step = steps.kind.plan(item, work, result)
        except Exception:
            # Declined: the lifecycle runs the step again from the store, and reports it there.
            log.debug("orchestration %s: its step runs apart", item.instance_id, exc_info=True)
            return None
        self._planned = (item, work, result, step, run)
        return step

    def committed(self) -> None:
        """Told once the planned step is committed."""
        assert self._planned is not None
        item, work, result, step, run = self._planned
        self._steps.runner.keep(item, step, run)
        self._steps.kind.committed(item, work, result, step)


class LocalActivities(Runner[ActivityWorkItem, ActivityWorkItem, ActivityResult]):
    def __init__(self, registry: Registry, clock: Clock,
                 next_steps: NextSteps | None = None) -> None:
        self._registry = registry
        self._clock = clock
        # Offers the step each result wakes, to run in the same commit (None: never).
        self._next_steps = next_steps

    def rooms(self) -> list[tuple[Any, float]]:
        return unlimited()

    async def run(
        self, item: ActivityWorkItem, work: ActivityWorkItem, names: Any
    ) -> ActivityResult:
        with tracing.activity(item, self._clock) as span:
            result = await self._invoke(item)
            if result.failure is not None:
                tracing.fail(span, result.failure.error_message)
        if self._next_steps is not None:
            result.next_step = self._next_steps.offer(item.instance_id)
        return result

    async def _invoke(self, item: ActivityWorkItem) -> ActivityResult:
        fn = self._registry.activities.get(item.name)
        if fn is None:
            return ActivityResult(failure=pb.TaskFailureDetails(
                error_type="ActivityNotRegistered",
                error_message=f"activity {item.name!r} is not registered with this worker",
                is_non_retriable=True,
            ))
        ctx = ActivityContext(item.instance_id, item.task_id, item.name, item.attempt,
                              item.call_id)
        try:
            value = payloads.decode(item.input, f"input of activity {item.name!r}")
            if inspect.iscoroutinefunction(fn):
                output = await fn(ctx, value)
            else:
                output = await trio.to_thread.run_sync(fn, ctx, value, abandon_on_cancel=True)
            data = payloads.encode(output, f"output of activity {item.name!r}")
        except Exception as exc:
            return ActivityResult(failure=h.failure_to_pb(h.failure_from_exception(exc)))
        return ActivityResult(data)

    def settled(
        self, item: ActivityWorkItem, work: Any, result: ActivityResult, stepped: bool
    ) -> None:
        if stepped:
            assert isinstance(result.next_step, CachedStep)
            result.next_step.committed()


class LocalEntities(Runner[EntityWorkItem, EntityWork, pb.EntityBatchResult]):
    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def rooms(self) -> list[tuple[Any, float]]:
        return unlimited()

    async def run(
        self, item: EntityWorkItem, work: EntityWork, names: Any
    ) -> pb.EntityBatchResult:
        return await run_batch(self._registry.entities, work.batch, work.now)
