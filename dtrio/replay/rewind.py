"""Rewind: the history a failed orchestration resumes from.

The protocol's rewind works in two steps: the backend queues an `executionRewound` event on the
failed instance, and the orchestrator's executor answers with a `RewindOrchestrationAction`
carrying a cleaned history. Failed activity results are removed together with their
`taskScheduled` events, so replay schedules those activities again; failed sub-orchestration
results are removed (their `subOrchestrationInstanceCreated` events stay, so the backend knows
which children to rewind); the `executionCompleted` event goes. What succeeded stays, so it is
not run again. This is the same rewrite the official SDK workers make, so in-process and remote
orchestrations rewind alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import chain

from .. import _pb as pb
from ..wire import one_of


def is_rewind_request(past: Sequence[pb.HistoryEvent], new: Sequence[pb.HistoryEvent]) -> bool:
    return any(one_of(e, "eventType")[0] == "execution_rewound" for e in new) and any(
        one_of(e, "eventType")[0] == "execution_completed" for e in past
    )


def rewound_history(
    past: Iterable[pb.HistoryEvent], new: Iterable[pb.HistoryEvent]
) -> list[pb.HistoryEvent]:
    events = list(chain(past, new))
    failed_tasks = {e.task_failed.task_scheduled_id for e in events if e.task_failed is not None}
    clean = []
    for event in events:
        kind = one_of(event, "eventType")[0]
        if kind in ("task_failed", "sub_orchestration_instance_failed", "execution_completed"):
            continue
        if kind == "task_scheduled" and event.event_id in failed_tasks:
            continue
        clean.append(event)
    return clean


def sections_open_at_failure(events: Sequence[pb.HistoryEvent]) -> list[str]:
    """Entity critical sections an execution had not closed before the step it failed in.

    Such an execution cannot be rewound: its locks were released when it failed, while a replay
    of the cleaned history would find them granted and run the rest of the section without
    them."""
    last_step = max(
        (i for i, e in enumerate(events) if e.orchestrator_started is not None), default=0
    )
    requested = {
        e.entity_lock_requested.critical_section_id
        for e in events if e.entity_lock_requested is not None
    }
    closed = {
        e.entity_unlock_sent.critical_section_id
        for e in events[:last_step] if e.entity_unlock_sent is not None
    }
    return sorted(requested - closed)


def rewind_action(
    past: Iterable[pb.HistoryEvent], new: Iterable[pb.HistoryEvent]
) -> pb.OrchestratorAction:
    return pb.OrchestratorAction(
        id=-1,
        rewind_orchestration=pb.RewindOrchestrationAction(new_history=rewound_history(past, new)),
    )
