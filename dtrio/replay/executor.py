"""Drives an `async def` orchestrator over history by hand: events in, actions out.

No event loop, no I/O, no clock. A run can be fed once with a whole history (replay after a
restart) or kept in memory and fed each step's new events only; both give the same actions.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .. import _pb as pb
from .. import payloads
from ..errors import FailureDetails, NonDeterminismError, TaskFailedError
from ..history import failure_from_exception, failure_from_pb, failure_to_pb
from ..wire import one_of
from .awaited import await_error, no_event_loop_error
from .context import DurableTask, OrchestrationContext
from .rewind import is_rewind_request, rewind_action
from .tasks import Task

_S = pb.OrchestrationStatus

# Which action each "scheduled" history event must match, and how to name what it did.
_SCHEDULING_EVENTS = {
    "task_scheduled": "schedule_task",
    "timer_created": "create_timer",
    "sub_orchestration_instance_created": "create_sub_orchestration",
    "event_sent": "send_event",
    "entity_operation_called": "send_entity_message",
    "entity_operation_signaled": "send_entity_message",
    "entity_lock_requested": "send_entity_message",
    "entity_unlock_sent": "send_entity_message",
}

# Actions whose task a later history event completes, by the ID the action got.
_AWAITED_ACTIONS = frozenset({"schedule_task", "create_timer", "create_sub_orchestration"})

# What each completion answers: the kind of action, and the field of the event naming its ID.
_COMPLETIONS = {
    "task_completed": ("schedule_task", "task_scheduled_id"),
    "task_failed": ("schedule_task", "task_scheduled_id"),
    "timer_fired": ("create_timer", "timer_id"),
    "sub_orchestration_instance_completed": ("create_sub_orchestration", "task_scheduled_id"),
    "sub_orchestration_instance_failed": ("create_sub_orchestration", "task_scheduled_id"),
}

_ORPHAN_CAUSE = (
    "Each completion answers an action scheduled earlier in the same execution, so this history "
    "does not belong to this execution: the event was probably delivered to the wrong instance "
    "or execution, or the history was changed outside the engine."
)


def describe_action(action: pb.OrchestratorAction | None) -> str:
    if action is None:
        return "nothing"
    kind, body = one_of(action, "orchestratorActionType")
    name = getattr(body, "name", None)
    return f"{kind}(id={action.id}{f', name={name!r}' if name else ''})"


def _describe_event(event: pb.HistoryEvent) -> str:
    kind, body = one_of(event, "eventType")
    name = getattr(body, "name", None)
    return f"{kind}(id={event.event_id}{f', name={name!r}' if name else ''})"


class OrchestrationRun:
    """One execution of one orchestration instance, replayable and resumable."""

    # Kept in memory for every instance waiting between steps: slots, and the rarely used
    # collections (events held while suspended, entity calls and locks) made on first use.
    __slots__ = (
        "_blocked_on", "_carryover", "_continue_as_new", "_coro", "_entity_requests",
        "_entity_sections", "_held", "_history_index", "_orchestrators", "_pending_actions",
        "_scheduled", "_suspended", "_tasks", "buffered_events", "ctx", "custom_status",
        "event_waiters", "is_done", "next_id", "started",
    )

    def __init__(self, orchestrators: Mapping[str, Callable[..., Any]], instance_id: str) -> None:
        self._orchestrators = orchestrators
        self.ctx = OrchestrationContext(self, instance_id)
        self.next_id = 0
        self.started: pb.ExecutionStartedEvent | None = None
        self.custom_status: str | None = None
        # By lowercased name, oldest first. Lists, not deques: a deque costs some 600 bytes
        # however short, which a parked run would hold while it waits for one event.
        self.buffered_events: dict[str, list[str | None]] = {}
        self.event_waiters: dict[str, list[Any]] = {}
        self.is_done = False
        self._pending_actions: dict[int, pb.OrchestratorAction] = {}
        self._tasks: dict[int, Task[Any]] = {}
        self._coro: Any = None
        self._blocked_on: Task[Any] | None = None
        self._continue_as_new: tuple[str | None, bool] | None = None
        self._suspended = False
        self._held: list[pb.HistoryEvent] | None = None
        self._carryover: list[pb.HistoryEvent] | None = None
        self._history_index = 0
        # What this execution scheduled that a completion may answer (kept after it is answered:
        # a task that is settled or no longer awaited may still get its completion). Actions by
        # ID and kind; entity calls and lock requests by the request and section IDs the replies
        # name, to action IDs. Noted when history replays the action or when `feed` hands it out.
        self._scheduled: dict[int, str] = {}
        self._entity_requests: dict[str, int] | None = None
        self._entity_sections: dict[str, int] | None = None

    @property
    def is_suspended(self) -> bool:
        return self._suspended

    # -- feeding history ---------------------------------------------------------------

    def feed(
        self, past: Iterable[pb.HistoryEvent], new: Iterable[pb.HistoryEvent]
    ) -> list[pb.OrchestratorAction]:
        """Process events; return the actions the orchestrator produced that history lacks."""
        past, new = list(past), list(new)
        if self.started is None and is_rewind_request(past, new):
            self.is_done = True
            return [rewind_action(past, new)]
        self.ctx.is_replaying = True
        for event in past:
            self._history_index += 1
            self._process(event)
        self.ctx.is_replaying = False
        for event in new:
            self._history_index += 1
            self._process(event)
        actions = list(self._pending_actions.values())
        self._pending_actions.clear()
        for action in actions:
            kind, body = one_of(action, "orchestratorActionType")
            if kind == "send_entity_message":
                kind, body = one_of(body, "EntityMessageType")
            self._note_scheduled(action.id, kind, body)
        return actions

    def _process(self, event: pb.HistoryEvent) -> None:
        kind, body = one_of(event, "eventType")
        if self.is_done:
            # Events that arrive in the same batch after continue_as_new(save_events=True)
            # belong to the next execution too.
            if self._carryover is not None and kind == "event_raised":
                self._carryover.append(event)
            return
        # A second suspension of a suspended run changes nothing; were it held, the resume would
        # replay it and suspend the run again behind a status that says RUNNING.
        if self._suspended and kind not in _WHILE_SUSPENDED:
            if self._held is None:
                self._held = []
            self._held.append(event)
            return
        handler = _HANDLERS.get(kind)
        if handler is None:
            self._fail_run(
                FailureDetails(
                    "UnsupportedHistoryEvent",
                    f"history event #{self._history_index} of kind {kind or 'unknown'!r} "
                    "is not supported by this engine",
                )
            )
            return
        try:
            handler(self, event, body)
        except NonDeterminismError as exc:
            self._pending_actions.clear()
            self._fail_run(failure_from_exception(exc))
            return
        blocked = self._blocked_on
        if blocked is not None and blocked.is_complete:
            self._blocked_on = None
            self._resume()

    # -- actions -------------------------------------------------------------------------

    def emit(self, action: pb.OrchestratorAction, task: Task[Any] | None) -> None:
        """Record an action from ctx; `task` completes when history answers it."""
        if self.is_done:
            return
        action.id = self.next_id
        self.next_id += 1
        self._pending_actions[action.id] = action
        if task is not None:
            self._tasks[action.id] = task

    def request_continue_as_new(self, new_input: str | None, save_events: bool) -> None:
        self._continue_as_new = (new_input, save_events)

    def _match_scheduled(self, event: pb.HistoryEvent, kind: str) -> None:
        action = self._pending_actions.pop(event.event_id, None)
        expected = _SCHEDULING_EVENTS[kind]
        actual_kind = (
            one_of(action, "orchestratorActionType")[0] if action else None
        )
        recorded_name = getattr(one_of(event, "eventType")[1], "name", None)
        actual_name = (
            getattr(one_of(action, "orchestratorActionType")[1], "name", None)
            if action
            else None
        )
        if actual_kind == "send_entity_message":
            # Signals, calls, lock requests and unlocks share one action kind.
            inner = one_of(one_of(action, "orchestratorActionType")[1], "EntityMessageType")[0]
            if inner != kind:
                actual_kind = f"send_entity_message({inner})"
        if actual_kind == expected and (not recorded_name or actual_name == recorded_name):
            self._note_scheduled(event.event_id, kind if kind.startswith("entity_") else expected,
                                 one_of(event, "eventType")[1])
        else:
            raise NonDeterminismError(
                f"non-deterministic orchestrator {self.ctx.name!r}: history event "
                f"#{self._history_index} {_describe_event(event)} expects the orchestrator to "
                f"produce {expected}(id={event.event_id}"
                f"{f', name={recorded_name!r}' if recorded_name else ''}), but it produced "
                f"{describe_action(action)} at that point. The orchestrator code probably "
                "changed while this instance was running; ship such changes under a new "
                "orchestrator name or version."
            )

    # -- driving the coroutine -----------------------------------------------------------

    def _start(self, started: pb.ExecutionStartedEvent) -> None:
        self.started = started
        self.ctx.name = started.name
        self.ctx.version = started.version
        fn = self._orchestrators.get(started.name)
        if fn is None:
            self._fail_run(
                FailureDetails(
                    "OrchestratorNotRegistered",
                    f"orchestrator {started.name!r} is not registered with this worker",
                    is_non_retriable=True,
                )
            )
            return
        try:
            value = payloads.decode(started.input, f"input of orchestrator {started.name!r}")
            coro = fn(self.ctx, value)
        except Exception as exc:
            self._fail_run(failure_from_exception(exc))
            return
        if not inspect.iscoroutine(coro):
            self._fail_run(
                FailureDetails(
                    "TypeError", f"orchestrator {started.name!r} must be an async def function"
                )
            )
            return
        self._coro = coro
        self._resume()

    def _resume(self) -> None:
        while not self.is_done:
            try:
                awaited = self._coro.send(None)
            except StopIteration as stop:
                self._finish(stop.value)
                return
            except Exception as exc:
                refused = no_event_loop_error(self.ctx.name, self._coro, exc)
                self._fail_run(failure_from_exception(refused or exc))
                return
            if self._continue_as_new is not None:
                self._coro.close()
                self._finish(None)
                return
            if isinstance(awaited, Task):
                if not awaited.is_complete:
                    self._blocked_on = awaited
                    return
                continue
            error = await_error(self.ctx.name, self._coro, awaited)  # before the frames go
            self._close_coroutine()
            self._fail_run(failure_from_exception(error))
            return

    def _close_coroutine(self) -> None:
        try:
            self._coro.close()
        except Exception:  # noqa: BLE001 - the foreign awaitable's cleanup is not our failure
            pass

    def _finish(self, value: Any) -> None:
        if self._continue_as_new is not None:
            new_input, save_events = self._continue_as_new
            carry = []
            if save_events:
                for name, queue in self.buffered_events.items():
                    carry += [
                        pb.HistoryEvent(
                            event_id=-1, event_raised=pb.EventRaisedEvent(name=name, input=data)
                        )
                        for data in queue
                    ]
            self._complete(_S.CONTINUED_AS_NEW, result=new_input, carryover_events=carry)
            if save_events:
                self._carryover = carry
            return
        try:
            result = payloads.encode(value, f"output of orchestrator {self.ctx.name!r}")
        except Exception as exc:
            self._fail_run(failure_from_exception(exc))
            return
        self._complete(_S.COMPLETED, result=result)

    def _fail_run(self, details: FailureDetails) -> None:
        self._complete(_S.FAILED, failure_details=failure_to_pb(details))

    def _complete(self, status: pb.OrchestrationStatus, **fields: Any) -> None:
        if self.is_done:
            return
        self._blocked_on = None
        action = pb.CompleteOrchestrationAction(orchestration_status=status, **fields)
        self.emit(pb.OrchestratorAction(complete_orchestration=action), None)
        self.is_done = True

    def _note_scheduled(self, action_id: int, kind: str, body: Any) -> None:
        """History holds action `action_id`, or will once this step commits: completions may
        now name it. `kind` is the action's kind, or an entity message's (`body` its event)."""
        if kind in _AWAITED_ACTIONS:
            self._scheduled[action_id] = kind
        elif kind == "entity_operation_called":
            if self._entity_requests is None:
                self._entity_requests = {}
            self._entity_requests[body.request_id] = action_id
        elif kind == "entity_lock_requested":
            if self._entity_sections is None:
                self._entity_sections = {}
            self._entity_sections[body.critical_section_id] = action_id

    def _answered(self, event: pb.HistoryEvent) -> Task[Any] | None:
        """The task a completion event settles: None if it is settled already or no longer
        awaited (a timeout's timer after its event came, a loser of when_any). A completion of
        something this execution never scheduled raises `NonDeterminismError`."""
        kind, body = one_of(event, "eventType")
        expected, field = _COMPLETIONS[kind]
        action_id = getattr(body, field)
        scheduled = self._scheduled.get(action_id)
        if scheduled != expected:
            found = (
                f"action {action_id} of this execution is {scheduled}, not {expected}"
                if scheduled else f"this execution scheduled no {expected} with ID {action_id}"
            )
            raise NonDeterminismError(
                f"orchestrator {self.ctx.name!r} got a completion for nothing it scheduled: "
                f"history event {kind}({field}={action_id}) answers {expected}, but {found}. "
                f"{_ORPHAN_CAUSE}"
            )
        return self._tasks.pop(action_id, None)

    def _answered_entity(self, event: pb.HistoryEvent) -> Task[Any] | None:
        """Like `_answered`, for the reply to an entity call (named by its request ID)."""
        kind, body = one_of(event, "eventType")
        requests = self._entity_requests
        action_id = requests.get(body.request_id) if requests is not None else None
        if action_id is None:
            raise NonDeterminismError(
                f"orchestrator {self.ctx.name!r} got a completion for nothing it scheduled: "
                f"history event {kind}(request_id={body.request_id!r}) answers an entity call, "
                f"but this execution made no call with that request ID. {_ORPHAN_CAUSE}"
            )
        return self._tasks.pop(action_id, None)


# -- history event handlers (dispatched on the event's oneof name) ---------------------------


def _on_orchestrator_started(run: OrchestrationRun, event: pb.HistoryEvent, _body: Any) -> None:
    if event.timestamp is not None:
        run.ctx.now = event.timestamp


def _on_execution_started(
    run: OrchestrationRun, event: pb.HistoryEvent, body: pb.ExecutionStartedEvent
) -> None:
    if run.started is None:
        if run.ctx.now.year == 1970 and event.timestamp is not None:
            run.ctx.now = event.timestamp
        run._start(body)


def _on_scheduled(run: OrchestrationRun, event: pb.HistoryEvent, _body: Any) -> None:
    run._match_scheduled(event, one_of(event, "eventType")[0])


def _on_task_completed(run: OrchestrationRun, event: pb.HistoryEvent, body: Any) -> None:
    task = run._answered(event)
    if task is not None:
        what = task.description if isinstance(task, DurableTask) else "task"
        task._complete(payloads.decode(body.result, f"result of {what}"))


def _on_task_failed(run: OrchestrationRun, event: pb.HistoryEvent, body: Any) -> None:
    task = run._answered(event)
    if task is not None:
        details = failure_from_pb(body.failure_details)
        what = task.description if isinstance(task, DurableTask) else "task"
        task._fail(
            TaskFailedError(f"{what} failed: {details.error_type}: {details.message}", details)
        )


def _on_timer_fired(run: OrchestrationRun, event: pb.HistoryEvent, _body: Any) -> None:
    task = run._answered(event)
    if task is not None:
        task._complete(None)


def _on_event_raised(
    run: OrchestrationRun, _event: pb.HistoryEvent, body: pb.EventRaisedEvent
) -> None:
    key = body.name.lower()
    waiters = run.event_waiters.get(key)
    while waiters:
        wait = waiters.pop(0)
        if not wait.is_complete:
            wait._complete(payloads.decode(body.input, f"data of event {body.name!r}"))
            return
    run.buffered_events.setdefault(key, []).append(body.input)


def _on_entity_completed(run: OrchestrationRun, event: pb.HistoryEvent, body: Any) -> None:
    task = run._answered_entity(event)
    if task is not None:
        what = task.description if isinstance(task, DurableTask) else "entity operation"
        task._complete(payloads.decode(body.output, f"result of {what}"))


def _on_entity_failed(run: OrchestrationRun, event: pb.HistoryEvent, body: Any) -> None:
    task = run._answered_entity(event)
    if task is not None:
        details = failure_from_pb(body.failure_details)
        what = task.description if isinstance(task, DurableTask) else "entity operation"
        message = f"{what} failed: {details.error_type}: {details.message}"
        task._fail(TaskFailedError(message, details))


def _on_entity_lock_granted(run: OrchestrationRun, _event: pb.HistoryEvent, body: Any) -> None:
    # A grant names no execution (the protocol's lock request carries none), so one for a section
    # this execution never requested is not proof of a wrong history: a section requested before
    # continue_as_new can be granted after it. It is ignored, as a stale grant.
    sections = run._entity_sections
    action_id = sections.get(body.critical_section_id) if sections is not None else None
    task = run._tasks.pop(action_id, None) if action_id is not None else None
    if task is not None:
        task._complete(None)


def _on_execution_terminated(run: OrchestrationRun, _event: pb.HistoryEvent, body: Any) -> None:
    run._suspended = False
    run._pending_actions.clear()
    run._complete(_S.TERMINATED, result=body.input)


_WHILE_SUSPENDED = frozenset(("execution_suspended", "execution_resumed", "execution_terminated"))


def _on_execution_suspended(run: OrchestrationRun, _event: pb.HistoryEvent, _body: Any) -> None:
    run._suspended = True


def _on_execution_resumed(run: OrchestrationRun, _event: pb.HistoryEvent, _body: Any) -> None:
    run._suspended = False
    held, run._held = run._held, None
    for event in held or ():
        run._process(event)


def _ignore(_run: OrchestrationRun, _event: pb.HistoryEvent, _body: Any) -> None:
    pass


_HANDLERS: dict[str, Callable[[OrchestrationRun, pb.HistoryEvent, Any], None]] = {
    "orchestrator_started": _on_orchestrator_started,
    "orchestrator_completed": _ignore,
    "execution_started": _on_execution_started,
    "execution_completed": _ignore,
    "execution_terminated": _on_execution_terminated,
    "execution_suspended": _on_execution_suspended,
    "execution_resumed": _on_execution_resumed,
    "task_scheduled": _on_scheduled,
    "task_completed": _on_task_completed,
    "task_failed": _on_task_failed,
    "timer_created": _on_scheduled,
    "timer_fired": _on_timer_fired,
    "sub_orchestration_instance_created": _on_scheduled,
    "sub_orchestration_instance_completed": _on_task_completed,
    "sub_orchestration_instance_failed": _on_task_failed,
    "event_sent": _on_scheduled,
    "entity_operation_called": _on_scheduled,
    "entity_operation_signaled": _on_scheduled,
    "entity_lock_requested": _on_scheduled,
    "entity_unlock_sent": _on_scheduled,
    "entity_operation_completed": _on_entity_completed,
    "entity_operation_failed": _on_entity_failed,
    "entity_lock_granted": _on_entity_lock_granted,
    "event_raised": _on_event_raised,
    "continue_as_new": _ignore,
    "execution_rewound": _ignore,
    "generic_event": _ignore,
    "history_state": _ignore,
}
