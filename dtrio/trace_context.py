"""W3C trace context as the Durable Task protocol carries it (`pb.TraceContext`), kept pure.

The replay core and the state transitions pass trace context along without OpenTelemetry: an
instance is traced exactly when its executionStarted event carries a parent trace context and
an orchestration span ID, both decided when the instance is created and stored in its history.
Spans themselves are `dtrio.tracing`'s business.
"""

from __future__ import annotations

import random
from typing import NamedTuple

from . import _pb as pb

_SAMPLED = 0x01


class SpanRef(NamedTuple):
    trace_id: int
    span_id: int
    flags: int


def new_span_id() -> str:
    """16 hex digits, never all zero (an all-zero span ID is invalid in W3C trace context)."""
    return f"{random.getrandbits(64) or 1:016x}"


def traceparent(trace_id: int, span_id: int, flags: int) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"


def parse(context: pb.TraceContext | None) -> SpanRef | None:
    """The span a trace context names, or None if it is missing or malformed."""
    if context is None or not context.trace_parent:
        return None
    parts = context.trace_parent.split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        ref = SpanRef(int(parts[1], 16), int(parts[2], 16), int(parts[3], 16))
    except ValueError:
        return None
    return ref if ref.trace_id and ref.span_id else None


def make(trace_id: int, span_id: int, flags: int, state: str | None = None) -> pb.TraceContext:
    return pb.TraceContext(trace_parent=traceparent(trace_id, span_id, flags), trace_state=state)


def orchestration_context(started: pb.ExecutionStartedEvent | None) -> pb.TraceContext | None:
    """The context that names an execution's own orchestration span (its children's parent)."""
    if started is None or started.parent_trace_context is None or not started.orchestration_span_id:
        return None
    parent = parse(started.parent_trace_context)
    if parent is None:
        return None
    try:
        span_id = int(started.orchestration_span_id, 16)
    except ValueError:
        return None
    return make(parent.trace_id, span_id, parent.flags, started.parent_trace_context.trace_state)


def start_traced(event: pb.HistoryEvent, parent: pb.TraceContext | None) -> pb.HistoryEvent:
    """Give an executionStarted event its parent and a fresh orchestration span ID.

    An unsampled or missing parent propagates nothing, so the execution is not traced at all.
    """
    ref = parse(parent)
    if ref is not None and ref.flags & _SAMPLED and event.execution_started is not None:
        event.execution_started.parent_trace_context = parent
        event.execution_started.orchestration_span_id = new_span_id()
    return event
