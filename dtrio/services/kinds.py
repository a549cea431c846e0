"""The three kinds of work item, each over the storage contract: how it is leased, what a
runner is given, and how a runner's result is settled. Settling is the same whoever ran the item:
the step is planned by the pure core (`apply_step`, `finish_batch`) and committed with a check
of the lease."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .. import _pb as pb
from .. import history as h
from ..backend import (
    ActivityWorkItem,
    Backend,
    EntityWorkItem,
    NextStep,
    OrchestrationWorkItem,
)
from ..clock import Clock
from ..entities.batch import EntityBatch, EntityStep, finish_batch, plan_batch
from ..errors import FailureDetails
from ..events import StoredEvent
from ..logs import work_item
from ..replay import describe_action
from ..state import TERMINAL, OrchestrationStep, apply_step

log = logging.getLogger("dtrio.engine")
_S = pb.OrchestrationStatus
_SUSPENDED = int(_S.SUSPENDED)


class _Leased:
    """What every kind does alike: its items' lease token, and their lease verbs in the store."""

    name: str

    def __init__(
        self, clock: Clock, lease_s: float, lease: Callable[..., Awaitable[list[Any]]],
        renew: Callable[[Any, int], Awaitable[None]],
        give_back: Callable[[Any, int], Awaitable[None]],
    ) -> None:
        self._clock = clock
        self.lease_s = lease_s
        self._lease, self._renew, self._give_back = lease, renew, give_back

    def token(self, item: Any) -> str:
        return item.lock_token  # type: ignore[no-any-return]

    def key(self, item: Any) -> str:
        return item.instance_id  # type: ignore[no-any-return]

    async def lease(self, owner: str, limit: int, lease_us: int, names: Any) -> list[Any]:
        return await self._lease(owner, limit, lease_us, names)

    async def renew(self, item: Any, lease_us: int) -> None:
        await self._renew(item, lease_us)

    async def give_back(self, item: Any, delay_us: int) -> None:
        await self._give_back(item, delay_us)


# -- orchestration steps --------------------------------------------------------------------


@dataclass(slots=True)
class StepWork:
    """An orchestration step to run: the events it consumes, opened by orchestratorStarted."""

    item: OrchestrationWorkItem
    now: datetime
    new: list[StoredEvent]
    events: list[pb.HistoryEvent]  # the new events, parsed
    suspended: bool  # after the new events
    _load: Callable[[str], Awaitable[list[StoredEvent]]]
    # The execution's start, when a runner knows it (else it is read from the history).
    started: pb.ExecutionStartedEvent | None = None
    _past: list[StoredEvent] | None = None

    async def past(self) -> list[StoredEvent]:
        """The history so far, as stored."""
        if self._past is None:
            self._past = await self._load(self.item.instance_id)
        return self._past

    async def started_event(self) -> pb.HistoryEvent | None:
        """The executionStarted event of this execution (the second event of a history, so
        this parses two events, not all)."""
        for stored in (*self.new, *await self.past()):
            if stored.event.execution_started is not None:
                return stored.event
        return None


@dataclass(slots=True)
class StepResult:
    """What an orchestrator did in one step."""

    actions: Sequence[pb.OrchestratorAction]
    custom_status: str | None = None


def _fail_action(details: FailureDetails) -> pb.OrchestratorAction:
    return pb.OrchestratorAction(id=-1, complete_orchestration=pb.CompleteOrchestrationAction(
        orchestration_status=_S.FAILED, failure_details=h.failure_to_pb(details),
    ))


class Orchestrations(_Leased):
    name = "orchestration"

    def __init__(self, backend: Backend, clock: Clock, lease_s: float) -> None:
        super().__init__(clock, lease_s, backend.lease_orchestrations,
                         backend.renew_orchestration, backend.abandon_orchestration)
        self._backend = backend

    def describe(self, item: OrchestrationWorkItem) -> str:
        return f"orchestration {item.instance_id!r}"

    def open(self, item: OrchestrationWorkItem) -> StepWork | None:
        if not item.events or item.status in TERMINAL:
            return None
        now = self._clock.now_dt()
        opener = h.step_opener(now)
        new, events = [opener], [opener.event]
        suspended = item.status == _SUSPENDED
        for _, stored in item.events:
            new.append(stored)
            event = stored.event
            events.append(event)
            if event.execution_suspended is not None:
                suspended = True
            elif event.execution_resumed is not None:
                suspended = False
        return StepWork(item, now, new, events, suspended, self._backend.load_history)

    async def skip(self, item: OrchestrationWorkItem) -> None:
        """A lease that turned out to have nothing to do (its events were taken by a step
        that ended the instance) is given back."""
        await self._backend.release_orchestration(item)

    def failure(
        self, item: OrchestrationWorkItem, work: StepWork, details: FailureDetails
    ) -> StepResult:
        return StepResult([_fail_action(details)])

    async def settle(
        self, item: OrchestrationWorkItem, work: StepWork, result: StepResult
    ) -> OrchestrationStep:
        if work.started is None:
            event = await work.started_event()
            work.started = event.execution_started if event is not None else None
        step = self.plan(item, work, result)
        await self._backend.complete_orchestration(item, step)
        self.committed(item, work, result, step)
        return step

    def plan(
        self, item: OrchestrationWorkItem, work: StepWork, result: StepResult
    ) -> OrchestrationStep:
        """What committing `result` changes (`work.started` known)."""
        return apply_step(
            item.instance_id, item.execution_id, work.started, work.new, result.actions, work.now,
            custom_status=result.custom_status, suspended=work.suspended,
        )

    def committed(
        self, item: OrchestrationWorkItem, work: StepWork, result: StepResult,
        step: OrchestrationStep,
    ) -> None:
        if log.isEnabledFor(logging.INFO):
            _log_step(item, work.events, result.actions, step)


def _log_step(
    item: OrchestrationWorkItem, events: list[pb.HistoryEvent],
    actions: Sequence[pb.OrchestratorAction], step: OrchestrationStep,
) -> None:
    iid, name = item.instance_id, item.name
    extra = work_item("orchestration", iid)
    if item.step == 0:
        log.info("orchestration %s (%s) started", iid, name, extra=extra)
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "orchestration %s (%s) step %d: events [%s] -> actions [%s]", iid, name, item.step,
            ", ".join(h.kind(e) for e in events), ", ".join(describe_action(a) for a in actions),
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


# -- activities -----------------------------------------------------------------------------


@dataclass(slots=True)
class ActivityResult:
    """An activity's output, or how it failed (details kept exactly as given), and the step of
    its orchestration to run in the same commit, if its runner can."""

    output: str | None = None
    failure: pb.TaskFailureDetails | None = None
    next_step: NextStep | None = None


class Activities(_Leased):
    name = "activity"

    def __init__(self, backend: Backend, clock: Clock, lease_s: float) -> None:
        super().__init__(clock, lease_s, backend.lease_activities, backend.renew_activity,
                         backend.abandon_activity)
        self._backend = backend

    def key(self, item: ActivityWorkItem) -> str:
        return f"{item.instance_id}#{item.task_id}"

    def describe(self, item: ActivityWorkItem) -> str:
        return f"activity {item.name!r} (#{item.task_id}) of {item.instance_id!r}"

    def open(self, item: ActivityWorkItem) -> ActivityWorkItem:
        return item

    async def skip(self, item: ActivityWorkItem) -> None:
        raise AssertionError("every activity has something to run")

    def failure(
        self, item: ActivityWorkItem, work: ActivityWorkItem, details: FailureDetails
    ) -> ActivityResult:
        return ActivityResult(failure=h.failure_to_pb(details))

    async def settle(
        self, item: ActivityWorkItem, work: ActivityWorkItem, result: ActivityResult
    ) -> bool:
        """Whether the orchestration's next step was committed with the result."""
        now = self._clock.now_dt()
        if result.failure is not None:
            event = h.made(now, "task_failed", pb.TaskFailedEvent(
                task_scheduled_id=item.task_id, failure_details=result.failure))
        else:
            event = h.made(now, "task_completed", pb.TaskCompletedEvent(
                task_scheduled_id=item.task_id, result=result.output))
        stepped = await self._backend.complete_activity(item, event, result.next_step)
        if log.isEnabledFor(logging.DEBUG):
            failed = result.failure
            outcome = (f"failed: {failed.error_type}: {failed.error_message}"
                       if failed is not None else "completed")
            log.debug("activity %s#%d of %s (attempt %d) %s", item.name, item.task_id,
                      item.instance_id, item.attempt, outcome,
                      extra=work_item("activity", item.instance_id, task_id=item.task_id))
        return stepped


# -- entity batches -------------------------------------------------------------------------


@dataclass(slots=True)
class EntityWork:
    batch: EntityBatch
    now: datetime


class Entities(_Leased):
    name = "entity"

    def __init__(self, backend: Backend, clock: Clock, lease_s: float, batch_size: int) -> None:
        async def lease(owner: str, limit: int, lease_us: int, names: Any) -> list[Any]:
            return await backend.lease_entities(owner, limit, lease_us, batch_size, names)

        super().__init__(clock, lease_s, lease, backend.renew_entity, backend.abandon_entity)
        self._backend = backend

    def describe(self, item: EntityWorkItem) -> str:
        return f"entity {item.instance_id}"

    def open(self, item: EntityWorkItem) -> EntityWork | None:
        work = self._plan(item)
        return work if work.batch.operations else None

    async def skip(self, item: EntityWorkItem) -> None:
        """Only lock messages (or nothing): no entity code to run, so no runner is needed."""
        work = self._plan(item)
        await self._commit(item, finish_batch(
            work.batch, pb.EntityBatchResult(entity_state=work.batch.state), work.now))

    def _plan(self, item: EntityWorkItem) -> EntityWork:
        now = self._clock.now_dt()
        messages = [(inbox_id, stored.event) for inbox_id, stored in item.messages]
        return EntityWork(plan_batch(
            item.instance_id, item.state, item.locked_by, item.lock_section, messages, now), now)

    def failure(
        self, item: EntityWorkItem, work: EntityWork, details: FailureDetails
    ) -> pb.EntityBatchResult:
        """Every operation fails with `details`; the state stays as it was."""
        failure = pb.OperationResult(failure=pb.OperationResultFailure(
            failure_details=h.failure_to_pb(details)))
        return pb.EntityBatchResult(
            results=[failure] * len(work.batch.operations), entity_state=work.batch.state)

    async def settle(
        self, item: EntityWorkItem, work: EntityWork, result: pb.EntityBatchResult
    ) -> EntityStep:
        step = finish_batch(work.batch, result, self._clock.now_dt())
        await self._commit(item, step)
        if log.isEnabledFor(logging.DEBUG):
            failed = sum(r.failure is not None for r in result.results)
            log.debug("entity %s ran %d operations (%d failed) of %d messages",
                      item.instance_id, len(work.batch.operations), failed, len(item.messages),
                      extra=work_item("entity", item.instance_id))
        return step

    async def _commit(self, item: EntityWorkItem, step: EntityStep) -> None:
        for why in step.rejected:
            log.warning("dropped %s", why, extra=work_item("entity", item.instance_id))
        await self._backend.complete_entity(item, step)
