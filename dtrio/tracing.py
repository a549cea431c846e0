"""OpenTelemetry spans for orchestrations, activities and timers, through the global TracerProvider.

The span tree of one traced instance:

    create_orchestration||<name>   CLIENT    the caller scheduling it (child of the caller's span)
    └── orchestration||<name>      SERVER    creation to completion, one per execution
        ├── activity||<name>       SERVER    each activity execution, live
        ├── timer                  INTERNAL  each durable timer, from creation to firing
        └── orchestration||<child> SERVER    sub-orchestrations, recursively

An orchestration runs as many steps, replays and engine restarts as it takes, so its span cannot
be open in memory: its span ID is chosen when the instance is created and stored in the
executionStarted event (`dtrio.trace_context`), its children name that ID as their parent, and
the span itself is built from the history and emitted once, after the step that ends the
execution is committed. Timers and the external, suspend and resume events recorded on the
orchestration span are read from the same history then.

Sampling is decided once, for `create_orchestration`: an instance whose parent is not sampled
carries no trace context, and then nothing here runs for it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from . import _pb as pb
from . import history as h
from . import trace_context as tc
from .times import to_us
from .wire import one_of

if TYPE_CHECKING:
    from .backend import ActivityWorkItem
    from .clock import Clock

TRACER_NAME = "dtrio"

ATTR_TYPE = "durabletask.type"
ATTR_NAME = "durabletask.task.name"
ATTR_INSTANCE_ID = "durabletask.task.instance_id"
ATTR_VERSION = "durabletask.task.version"
ATTR_TASK_ID = "durabletask.task.task_id"
ATTR_RUNTIME_STATUS = "durabletask.runtime_status"
ATTR_FIRE_AT = "durabletask.fire_at"
ATTR_EVENT_NAME = "durabletask.event.name"
ATTR_REASON = "durabletask.reason"

# A proxy until the application installs a provider, then that provider's tracer.
_tracer = trace.get_tracer(TRACER_NAME)


def _ns(when: datetime) -> int:
    return to_us(when) * 1000


def _now_ns(clock: Clock) -> int:
    return clock.now_us() * 1000


def _attributes(
    kind: str, name: str, instance_id: str, version: str | None
) -> dict[str, str | int]:
    attributes: dict[str, str | int] = {
        ATTR_TYPE: kind, ATTR_NAME: name, ATTR_INSTANCE_ID: instance_id,
    }
    if version:
        attributes[ATTR_VERSION] = version
    return attributes


def _parent(context: pb.TraceContext | None) -> otel_context.Context | None:
    """An OpenTelemetry context whose current span is the one `context` names."""
    ref = tc.parse(context)
    if ref is None:
        return None
    return trace.set_span_in_context(NonRecordingSpan(_span_context(ref, context, remote=True)))


def _span_context(ref: tc.SpanRef, context: pb.TraceContext | None, *, remote: bool) -> SpanContext:
    state = context.trace_state if context is not None else None
    return SpanContext(
        ref.trace_id, ref.span_id, is_remote=remote, trace_flags=TraceFlags(ref.flags),
        trace_state=TraceState.from_header([state]) if state else None,
    )


def _propagated(span: trace.Span) -> pb.TraceContext | None:
    """The context to hand on: only a span this process records and samples propagates."""
    if not span.is_recording():
        return None
    ctx = span.get_span_context()
    if not ctx.trace_flags.sampled:
        return None
    return tc.make(ctx.trace_id, ctx.span_id, ctx.trace_flags, ctx.trace_state.to_header() or None)


@contextmanager
def create_orchestration(
    name: str, instance_id: str, version: str | None, start: datetime, clock: Clock
) -> Iterator[pb.TraceContext | None]:
    """The CLIENT span of scheduling an instance, a child of the caller's current span.

    Yields the trace context for the instance's executionStarted event (None: not traced).
    Times come from the engine's clock, like the history's, so the tree lines up under a
    MockClock too.
    """
    span = _tracer.start_span(
        f"create_orchestration||{name}", kind=SpanKind.CLIENT,
        attributes=_attributes("orchestration", name, instance_id, version), start_time=_ns(start),
    )
    try:
        yield _propagated(span)
    except BaseException as exc:
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        span.end(end_time=_now_ns(clock))


def activity(item: ActivityWorkItem, clock: Clock) -> AbstractContextManager[trace.Span | None]:
    """The SERVER span of one activity execution, current while the activity runs so that the
    activity's own spans nest under it. Yields None (and costs nothing) when not traced."""
    parent = _parent(item.trace_context)
    return _NOT_TRACED if parent is None else _activity(item, clock, parent)


_NOT_TRACED: AbstractContextManager[None] = nullcontext()


@contextmanager
def _activity(
    item: ActivityWorkItem, clock: Clock, parent: otel_context.Context
) -> Iterator[trace.Span]:
    attributes = _attributes("activity", item.name, item.instance_id, item.version)
    attributes[ATTR_TASK_ID] = item.task_id
    span = _tracer.start_span(
        f"activity||{item.name}", context=parent, kind=SpanKind.SERVER, attributes=attributes,
        start_time=_now_ns(clock),
    )
    try:
        with trace.use_span(span, record_exception=False, set_status_on_exception=False):
            yield span
    except BaseException as exc:
        # Activity failures are results; what escapes is cancellation (shutdown, a lost lease).
        span.set_status(Status(StatusCode.ERROR, f"interrupted: {type(exc).__name__}"))
        raise
    finally:
        span.end(end_time=_now_ns(clock))


def fail(span: trace.Span | None, message: str) -> None:
    if span is not None:
        span.set_status(Status(StatusCode.ERROR, message))


def emit_execution(
    instance_id: str,
    history: Sequence[pb.HistoryEvent],
    end: datetime,
    status: int,
    failure: pb.TaskFailureDetails | None,
) -> None:
    """Emit an ended execution's orchestration span and its timer spans, read from its history.

    Call it once, after the step that ended the execution committed: a step that fails to
    commit runs again, and would otherwise report the execution twice.
    """
    started_event = next((e for e in history if e.execution_started is not None), None)
    if started_event is None:
        return
    started = started_event.execution_started
    own = tc.orchestration_context(started)
    own_ref, parent_ref = tc.parse(own), tc.parse(started.parent_trace_context)
    if own_ref is None or parent_ref is None:
        return
    # Only the SDK's processors accept a span whose ID was chosen in advance; another provider
    # gets neither the orchestration span nor the timers that would hang from it.
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.sdk.trace import Tracer as SdkTracer
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    tracer = trace.get_tracer_provider().get_tracer(TRACER_NAME)
    if not isinstance(tracer, SdkTracer):
        return
    _emit_timers(instance_id, started.name, history, _parent(own))
    attributes = _attributes("orchestration", started.name, instance_id, started.version)
    attributes[ATTR_RUNTIME_STATUS] = pb.OrchestrationStatus(status).name
    span_status = Status(StatusCode.UNSET)
    if status == int(pb.OrchestrationStatus.FAILED):
        message = failure.error_message if failure is not None else None
        span_status = Status(StatusCode.ERROR, message or "failed")
    span = ReadableSpan(
        name=f"orchestration||{started.name}",
        context=_span_context(own_ref, own, remote=False),
        parent=_span_context(parent_ref, started.parent_trace_context, remote=True),
        resource=tracer.resource,
        attributes=attributes,
        events=[Event(*_span_event(e), _ns(e.timestamp)) for e in _span_events(history)],
        kind=SpanKind.SERVER,
        status=span_status,
        start_time=_ns(started_event.timestamp),
        end_time=_ns(end),
        instrumentation_scope=InstrumentationScope(TRACER_NAME),
    )
    # Ended spans go straight to the processors (and on to the exporters), as the SDK does
    # for the spans it ends itself. The parent's sampling decision, carried in the trace
    # flags, was already taken when the instance was created.
    tracer.span_processor.on_end(span)


# History events that become events on the orchestration span, and their names there.
_SPAN_EVENTS = {
    "event_raised": "external_event",
    "execution_suspended": "suspended",
    "execution_resumed": "resumed",
}


def _span_events(history: Sequence[pb.HistoryEvent]) -> list[pb.HistoryEvent]:
    return [e for e in history if h.kind(e) in _SPAN_EVENTS]


def _span_event(event: pb.HistoryEvent) -> tuple[str, dict[str, str]]:
    kind, body = one_of(event, "eventType")
    if kind == "event_raised":
        return _SPAN_EVENTS[kind], {ATTR_EVENT_NAME: body.name}
    return _SPAN_EVENTS[kind], {ATTR_REASON: body.input} if body.input else {}


def _emit_timers(
    instance_id: str,
    name: str,
    history: Sequence[pb.HistoryEvent],
    parent: otel_context.Context | None,
) -> None:
    created = {e.event_id: e for e in history if e.timer_created is not None}
    for event in history:
        fired = event.timer_fired
        if fired is None or fired.timer_id not in created:
            continue
        attributes = _attributes("timer", name, instance_id, None)
        attributes[ATTR_TASK_ID] = fired.timer_id
        attributes[ATTR_FIRE_AT] = fired.fire_at.isoformat() if fired.fire_at else ""
        span = _tracer.start_span(
            "timer", context=parent, kind=SpanKind.INTERNAL, attributes=attributes,
            start_time=_ns(created[fired.timer_id].timestamp),
        )
        # A timer's firing event is stamped with its due time.
        span.end(end_time=_ns(event.timestamp))
