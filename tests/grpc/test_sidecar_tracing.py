"""Tracing through the sidecar: the official SDK's client, worker and activities report spans
that join one trace, under the caller's span and the orchestration span dtrio chose."""

from __future__ import annotations

import sdk_app as app
from durabletask.client import OrchestrationStatus
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from sidecar_harness import Sidecar

from dtrio import _pb as pb


async def started_event(sidecar: Sidecar, iid: str) -> pb.HistoryEvent:
    history = await sidecar.engine.backend.load_history(iid)
    events = [stored.event for stored in history]
    return next(e for e in events if e.execution_started is not None)


async def test_sdk_worker_spans_share_the_callers_trace(spans, sidecar: Sidecar, worker) -> None:
    with trace.get_tracer("test-app").start_as_current_span("caller") as caller:
        iid = await sidecar.call(sidecar.client.schedule_new_orchestration, app.sequence)
    state = await sidecar.call(sidecar.client.wait_for_orchestration_completion, iid, timeout=20)
    assert state.runtime_status == OrchestrationStatus.COMPLETED

    trace_id = caller.get_span_context().trace_id
    by_name: dict[str, list] = {}
    for span in spans.get_finished_spans():
        by_name.setdefault(span.name, []).append(span)
    assert all(span.context.trace_id == trace_id for span in spans.get_finished_spans())

    # The SDK names its spans "<kind>:<name>".
    [create] = by_name["create_orchestration:sequence"]
    assert create.kind is SpanKind.PRODUCER  # the SDK's choice
    assert create.parent.span_id == caller.get_span_context().span_id

    # The worker reports the orchestration under the span ID dtrio stored at the start, from
    # the start's time, as the child of the client's span: every step named that one span.
    started = await started_event(sidecar, iid)
    [orchestration] = by_name["orchestration:sequence"]
    assert orchestration.kind is SpanKind.SERVER
    assert orchestration.context.span_id == int(started.execution_started.orchestration_span_id, 16)
    assert orchestration.parent.span_id == create.context.span_id
    start_ns = int(started.timestamp.timestamp() * 1_000_000) * 1000
    assert abs(orchestration.start_time - start_ns) < 1_000_000  # the SDK keeps microseconds

    # Each activity: the orchestration's CLIENT span for scheduling it, whose child is the
    # SERVER span of its run, which the worker parented on the context dtrio handed it.
    activities = by_name["activity:hello"]
    scheduled = [a for a in activities if a.kind is SpanKind.CLIENT]
    ran = [a for a in activities if a.kind is SpanKind.SERVER]
    assert len(scheduled) == len(ran) == 3
    assert {a.parent.span_id for a in scheduled} == {orchestration.context.span_id}
    assert {a.parent.span_id for a in ran} == {a.context.span_id for a in scheduled}
