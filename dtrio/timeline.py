"""What operators read from a history (pure): one row per event, and the spans of its
activities, timers, sub-orchestrations and events for a timeline. The CLI's `history` and the
dashboard's instance page both draw from here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from . import _pb as pb
from .inspection import seconds
from .wire import one_of

# The event that settles a span, by kind: (the span's kind, its outcome).
_ENDS = {
    "task_completed": ("activity", "completed"),
    "task_failed": ("activity", "failed"),
    "sub_orchestration_instance_completed": ("sub-orchestration", "completed"),
    "sub_orchestration_instance_failed": ("sub-orchestration", "failed"),
    "timer_fired": ("timer", "fired"),
    "entity_operation_completed": ("entity call", "completed"),
    "entity_operation_failed": ("entity call", "failed"),
}
_STARTS = {
    "task_scheduled": "activity",
    "sub_orchestration_instance_created": "sub-orchestration",
    "timer_created": "timer",
    "entity_operation_called": "entity call",
}
# Events that happen at one moment: drawn as marks.
_POINTS = {
    "event_raised": "event", "event_sent": "event sent",
    "execution_suspended": "suspended", "execution_resumed": "resumed",
    "execution_terminated": "terminated", "execution_rewound": "rewound",
    "entity_operation_signaled": "signal", "continue_as_new": "continued as new",
}


def title(kind: str) -> str:
    """"task_scheduled" -> "TaskScheduled", as the Durable Task SDKs name the events."""
    return "".join(part.capitalize() for part in kind.split("_"))


@dataclass(frozen=True, slots=True)
class Row:
    """One event as a table shows it."""

    index: int
    event_id: int
    timestamp: datetime
    kind: str  # "TaskScheduled"
    name: str  # what it concerns: an activity's name, an event's name, a timer's fire time...
    elapsed: float  # seconds since the history began
    duration: float | None  # for an event settling a task: seconds since it was scheduled
    data: str | None  # its payload (input, result, reason), as stored


@dataclass(frozen=True, slots=True)
class Span:
    """A task of the orchestration over time: scheduled (start) until settled (end, None while
    it is open)."""

    kind: str  # "activity", "timer", "sub-orchestration", "entity call", "event", ...
    label: str
    start: datetime
    end: datetime | None
    outcome: str  # "completed", "failed", "fired", "open", or "point" for a mark
    instance_id: str | None = None  # a sub-orchestration's


def _name(kind: str, body: object) -> str:
    match kind:
        case "execution_started" | "task_scheduled" | "event_raised" | "event_sent":
            return getattr(body, "name", "") or ""
        case "sub_orchestration_instance_created":
            return f"{body.name} ({body.instance_id})"  # type: ignore[attr-defined]
        case "timer_created" | "timer_fired":
            fire_at = body.fire_at  # type: ignore[attr-defined]
            return f"fires at {fire_at:%Y-%m-%d %H:%M:%S}" if fire_at else ""
        case "entity_operation_called" | "entity_operation_signaled":
            return f"{body.operation} on {body.target_instance_id}"  # type: ignore[attr-defined]
        case "execution_completed":
            return pb.OrchestrationStatus(body.orchestration_status).name  # type: ignore
    return ""


def _label(kind: str, body: object, at: datetime) -> str:
    """A span's name on the timeline: a timer by how long it was set for."""
    if kind == "timer_created" and body.fire_at:  # type: ignore[attr-defined]
        return f"timer {seconds((body.fire_at - at).total_seconds())}"  # type: ignore
    return _name(kind, body) or title(kind)


def _data(body: object) -> str | None:
    for field in ("input", "result", "output", "reason"):
        value = getattr(body, field, None)
        if isinstance(value, str) and value:
            return value
    failure = getattr(body, "failure_details", None)
    if failure is not None:
        return f"{failure.error_type}: {failure.error_message}"
    return None


def _settles(kind: str, body: object) -> tuple[str, int]:
    """The (span kind, scheduling event ID) an event settles."""
    if kind == "timer_fired":
        return "timer", body.timer_id  # type: ignore[attr-defined]
    if kind.startswith("entity_operation"):
        return "entity call", body.request_id  # type: ignore[attr-defined,return-value]
    return _ENDS[kind][0], body.task_scheduled_id  # type: ignore[attr-defined]


def read(events: list[pb.HistoryEvent]) -> tuple[list[Row], list[Span]]:
    """The rows and spans of a history, oldest first."""
    rows: list[Row] = []
    spans: list[Span] = []
    open_spans: dict[tuple[str, object], int] = {}  # (kind, scheduling ID) -> index in spans
    # Each step opens with an orchestratorStarted stamped after the events it delivers.
    begun = min((e.timestamp for e in events), default=None)
    for index, event in enumerate(events):
        kind, body = one_of(event, "eventType")
        at = event.timestamp
        duration = None
        if kind in _STARTS:
            key = (_STARTS[kind], body.request_id if kind == "entity_operation_called"
                   else event.event_id)
            open_spans[key] = len(spans)
            spans.append(Span(_STARTS[kind], _label(kind, body, at), at, None, "open",
                              getattr(body, "instance_id", None) or None))
        elif kind in _ENDS:
            at_index = open_spans.pop(_settles(kind, body), None)
            if at_index is not None:
                span = spans[at_index]
                spans[at_index] = Span(span.kind, span.label, span.start, at, _ENDS[kind][1],
                                       span.instance_id)
                duration = (at - span.start).total_seconds()
        elif kind in _POINTS:
            spans.append(Span(_POINTS[kind], _name(kind, body) or title(kind), at, at, "point"))
        rows.append(Row(index, event.event_id, at, title(kind), _name(kind, body),
                        (at - begun).total_seconds() if begun else 0.0, duration,
                        _data(body)))
    return rows, spans

