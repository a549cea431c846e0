"""OpenTelemetry spans and logs of the in-process engine, under MockClock: the exact span tree
(names, kinds, parentage, attributes, times from history) of each kind of orchestration."""

from __future__ import annotations

import io
import json
import logging
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest
import trio
from old_stores import to_version_6
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, StatusCode, TraceFlags

import dtrio
from dtrio import _pb as pb
from dtrio import history as h
from dtrio import logs
from dtrio.replay import OrchestrationRun
from dtrio.testing import history as hb
from dtrio.testing import open_test_engine
from dtrio.times import to_us

S = dtrio.OrchestrationStatus
registry = dtrio.Registry()
app_tracer = trace.get_tracer("test-app")
TASK_ID = "durabletask.task.task_id"


# -- orchestrations ---------------------------------------------------------------------------


@registry.activity
async def hello(ctx, name):
    return f"Hello, {name}!"


@registry.activity
async def fail(ctx, message):
    raise ValueError(message)


@registry.activity
async def nested(ctx, _):
    # The activity's own spans nest under its activity span.
    with app_tracer.start_as_current_span("inside the activity"):
        return "done"


@registry.orchestrator
async def sequence(ctx, _):
    return [await ctx.call_activity(hello, input=c) for c in ("Tokyo", "London", "Seattle")]


@registry.orchestrator
async def with_timer(ctx, _):
    first = await ctx.call_activity(hello, input="before")
    await ctx.create_timer(timedelta(seconds=2))
    return [first, await ctx.call_activity(hello, input="after")]


@registry.orchestrator
async def child(ctx, name):
    return await ctx.call_activity(hello, input=name)


@registry.orchestrator
async def parent(ctx, _):
    return [await ctx.call_sub_orchestrator(child, input="kid"), await ctx.call_activity(nested)]


@registry.orchestrator
async def failing(ctx, _):
    try:
        await ctx.call_activity(fail, input="activity went wrong")
    except dtrio.TaskFailedError:
        pass
    raise RuntimeError("orchestration went wrong")


@registry.orchestrator
async def looping(ctx, n):
    await ctx.call_activity(hello, input=str(n))
    if n < 2:
        ctx.continue_as_new(n + 1)
    return n


@registry.orchestrator
async def waits(ctx, _):
    first = await ctx.call_activity(hello, input="first")
    ctx.logger.info("waiting for go after %s", first)
    ctx.set_custom_status("waiting")
    await ctx.wait_for_external_event("go")
    return [first, await ctx.call_activity(hello, input="second")]


# -- helpers ----------------------------------------------------------------------------------


def ns(when) -> int:
    return to_us(when) * 1000


def children(all_spans, span):
    kids = [s for s in all_spans if s.parent and s.parent.span_id == span.context.span_id]
    return sorted(kids, key=lambda s: (s.start_time, s.name, s.attributes.get(TASK_ID, -1)))


def tree(all_spans, span):
    """(name, kind, [children]) all the way down, children in start order."""
    return (span.name, span.kind.name, [tree(all_spans, k) for k in children(all_spans, span)])


def only(all_spans, name):
    found = [s for s in all_spans if s.name == name]
    assert len(found) == 1, [s.name for s in all_spans]
    return found[0]


async def history(engine, iid) -> list[pb.HistoryEvent]:
    return [stored.event for stored in await engine.backend.load_history(iid)]


def started_of(events) -> pb.HistoryEvent:
    return next(e for e in events if e.execution_started is not None)


async def run_traced(engine, orchestrator, input=None, **kw):
    """Schedule under a caller span; returns (caller span, final state)."""
    with app_tracer.start_as_current_span("caller") as caller:
        iid = await engine.client.schedule_new_orchestration(orchestrator, input=input, **kw)
    state = await engine.client.wait_for_orchestration_completion(iid, timeout=timedelta(days=1))
    return caller, state


def orchestration_attributes(name, iid, status, **more):
    return {
        "durabletask.type": "orchestration",
        "durabletask.task.name": name,
        "durabletask.task.instance_id": iid,
        "durabletask.runtime_status": status,
        **more,
    }


# -- span trees -------------------------------------------------------------------------------


async def test_sequence(autojump_clock, spans):
    async with open_test_engine(registry) as engine:
        caller, state = await run_traced(engine, sequence, instance_id="seq")
        events = await history(engine, "seq")
    assert state.runtime_status == S.COMPLETED
    finished = spans.get_finished_spans()
    root = only(finished, "caller")
    assert tree(finished, root) == ("caller", "INTERNAL", [
        ("create_orchestration||sequence", "CLIENT", [
            ("orchestration||sequence", "SERVER", [
                ("activity||hello", "SERVER", []),
                ("activity||hello", "SERVER", []),
                ("activity||hello", "SERVER", []),
            ]),
        ]),
    ])
    assert {s.context.trace_id for s in finished} == {caller.get_span_context().trace_id}

    create = only(finished, "create_orchestration||sequence")
    assert dict(create.attributes) == {
        "durabletask.type": "orchestration", "durabletask.task.name": "sequence",
        "durabletask.task.instance_id": "seq",
    }
    orch = only(finished, "orchestration||sequence")
    assert dict(orch.attributes) == orchestration_attributes("sequence", "seq", "COMPLETED")
    assert orch.status.status_code == StatusCode.UNSET
    # The span ID was chosen at creation and kept in history; times come from history.
    started = started_of(events)
    assert f"{orch.context.span_id:016x}" == started.execution_started.orchestration_span_id
    assert orch.start_time == ns(started.timestamp) == create.start_time
    last_step = [e for e in events if e.orchestrator_started is not None][-1]
    assert orch.end_time == ns(last_step.timestamp)

    activities = children(finished, orch)
    assert [dict(a.attributes) for a in activities] == [
        {"durabletask.type": "activity", "durabletask.task.name": "hello",
         "durabletask.task.instance_id": "seq", "durabletask.task.task_id": n}
        for n in range(3)
    ]
    scheduled = [e for e in events if e.task_scheduled is not None]
    for activity, event in zip(activities, scheduled, strict=True):
        assert ns(event.timestamp) <= activity.start_time <= activity.end_time <= orch.end_time


async def test_timer(autojump_clock, spans):
    async with open_test_engine(registry) as engine:
        _, state = await run_traced(engine, with_timer, instance_id="tm")
        events = await history(engine, "tm")
    assert state.output == ["Hello, before!", "Hello, after!"]
    finished = spans.get_finished_spans()
    orch = only(finished, "orchestration||with_timer")
    assert tree(finished, orch) == ("orchestration||with_timer", "SERVER", [
        ("activity||hello", "SERVER", []),
        ("timer", "INTERNAL", []),
        ("activity||hello", "SERVER", []),
    ])
    timer = only(finished, "timer")
    created = next(e for e in events if e.timer_created is not None)
    fire_at = created.timer_created.fire_at
    assert dict(timer.attributes) == {
        "durabletask.type": "timer", "durabletask.task.name": "with_timer",
        "durabletask.task.instance_id": "tm", "durabletask.task.task_id": 1,
        "durabletask.fire_at": fire_at.isoformat(),
    }
    assert (timer.start_time, timer.end_time) == (ns(created.timestamp), ns(fire_at))
    assert timer.end_time - timer.start_time == 2 * 10**9


async def test_sub_orchestration_nests_under_its_parent(autojump_clock, spans):
    async with open_test_engine(registry) as engine:
        _, state = await run_traced(engine, parent, instance_id="p", version="2")
        child_events = await history(engine, "p:0000")
    assert state.output == ["Hello, kid!", "done"]
    finished = spans.get_finished_spans()
    orch = only(finished, "orchestration||parent")
    # (The mock clock does not move here, so children come in name order.)
    assert tree(finished, orch) == ("orchestration||parent", "SERVER", [
        ("activity||nested", "SERVER", [("inside the activity", "INTERNAL", [])]),
        ("orchestration||child", "SERVER", [("activity||hello", "SERVER", [])]),
    ])
    assert dict(orch.attributes) == orchestration_attributes(
        "parent", "p", "COMPLETED", **{"durabletask.task.version": "2"}
    )
    sub = only(finished, "orchestration||child")  # a sub-orchestration inherits the version
    assert dict(sub.attributes) == orchestration_attributes(
        "child", "p:0000", "COMPLETED", **{"durabletask.task.version": "2"}
    )
    started = started_of(child_events)
    assert f"{sub.context.span_id:016x}" == started.execution_started.orchestration_span_id
    assert sub.start_time == ns(started.timestamp)


async def test_failure(autojump_clock, spans):
    async with open_test_engine(registry) as engine:
        _, state = await run_traced(engine, failing, instance_id="f")
    assert state.runtime_status == S.FAILED
    finished = spans.get_finished_spans()
    orch = only(finished, "orchestration||failing")
    assert tree(finished, orch) == ("orchestration||failing", "SERVER", [
        ("activity||fail", "SERVER", []),
    ])
    assert dict(orch.attributes) == orchestration_attributes("failing", "f", "FAILED")
    assert orch.status.status_code == StatusCode.ERROR
    assert orch.status.description == "orchestration went wrong"
    activity = only(finished, "activity||fail")
    assert activity.status.status_code == StatusCode.ERROR
    assert activity.status.description == "activity went wrong"


async def test_continue_as_new_reports_each_execution(autojump_clock, spans):
    async with open_test_engine(registry) as engine:
        _, state = await run_traced(engine, looping, 0, instance_id="loop")
    assert state.output == 2
    finished = spans.get_finished_spans()
    create = only(finished, "create_orchestration||looping")
    # Each execution is its own span under the same parent; each activity under its execution.
    assert tree(finished, create) == ("create_orchestration||looping", "CLIENT", [
        ("orchestration||looping", "SERVER", [("activity||hello", "SERVER", [])]),
        ("orchestration||looping", "SERVER", [("activity||hello", "SERVER", [])]),
        ("orchestration||looping", "SERVER", [("activity||hello", "SERVER", [])]),
    ])
    executions = children(finished, create)
    assert [dict(e.attributes)["durabletask.runtime_status"] for e in executions] == [
        "CONTINUED_AS_NEW", "CONTINUED_AS_NEW", "COMPLETED",
    ]
    assert len({e.context.span_id for e in executions}) == 3
    # The next execution starts when the previous one ended.
    assert executions[0].end_time == executions[1].start_time
    assert executions[1].end_time == executions[2].start_time


async def test_engine_restart_reports_one_orchestration_span(
    autojump_clock, spans, tmp_path, caplog
):
    db = tmp_path / "restart.sqlite3"
    options = dict(db=db, max_poll_interval=None, shutdown_grace=0)
    caplog.set_level(logging.INFO, logger="dtrio.orchestrator.waits")
    async with dtrio.open_engine(registry, **options) as engine:
        with app_tracer.start_as_current_span("caller"):
            await engine.client.schedule_new_orchestration(waits, instance_id="w")
        while (await engine.client.get_orchestration_state("w")).custom_status != "waiting":
            await trio.sleep(0.01)
    assert [s.name for s in spans.get_finished_spans()] == [
        "create_orchestration||waits", "caller", "activity||hello",
    ]
    async with dtrio.open_engine(registry, **options) as engine:
        await engine.client.raise_orchestration_event("w", "go")
        state = await engine.client.wait_for_orchestration_completion("w", timeout=60)
        events = await history(engine, "w")
    assert state.output == ["Hello, first!", "Hello, second!"]
    finished = spans.get_finished_spans()
    orch = only(finished, "orchestration||waits")
    started = started_of(events).execution_started
    assert f"{orch.context.span_id:016x}" == started.orchestration_span_id
    assert tree(finished, orch) == ("orchestration||waits", "SERVER", [
        ("activity||hello", "SERVER", []),
        ("activity||hello", "SERVER", []),
    ])
    assert [(e.name, dict(e.attributes)) for e in orch.events] == [
        ("external_event", {"durabletask.event.name": "go"}),
    ]
    # The second engine replayed the first part without logging its line again.
    lines = [r for r in caplog.records if r.name == "dtrio.orchestrator.waits"]
    assert [r.getMessage() for r in lines] == ["waiting for go after Hello, first!"]
    line = lines[0]
    assert (line.instance_id, line.work_item, line.orchestration) == ("w", "orchestration", "waits")


async def test_external_events_suspend_and_resume_are_events_on_the_span(autojump_clock, spans):
    async with open_test_engine(registry) as engine:
        with app_tracer.start_as_current_span("caller"):
            await engine.client.schedule_new_orchestration(waits, instance_id="e")
        while (await engine.client.get_orchestration_state("e")).custom_status != "waiting":
            await trio.sleep(0.01)
        await engine.client.suspend_orchestration("e", "maintenance")
        await trio.sleep(60)
        await engine.client.raise_orchestration_event("e", "Go")
        await engine.client.resume_orchestration("e")
        await engine.client.wait_for_orchestration_completion("e", timeout=60)
        events = await history(engine, "e")
    orch = only(spans.get_finished_spans(), "orchestration||waits")
    assert [(e.name, dict(e.attributes)) for e in orch.events] == [
        ("suspended", {"durabletask.reason": "maintenance"}),
        ("external_event", {"durabletask.event.name": "Go"}),
        ("resumed", {}),
    ]
    kinds = ("execution_suspended", "event_raised", "execution_resumed")
    recorded = [e for e in events if h.kind(e) in kinds]
    assert [e.timestamp for e in orch.events] == [ns(e.timestamp) for e in recorded]


async def test_rewound_run_is_a_new_span(autojump_clock, spans):
    async with open_test_engine(registry) as engine:
        _, state = await run_traced(engine, failing, instance_id="rw")
        await engine.client.rewind_orchestration("rw", "try again")
        await engine.client.wait_for_orchestration_completion("rw", timeout=60)
    runs = [s for s in spans.get_finished_spans() if s.name == "orchestration||failing"]
    assert [dict(s.attributes)["durabletask.runtime_status"] for s in runs] == ["FAILED", "FAILED"]
    assert runs[0].context.span_id != runs[1].context.span_id
    assert runs[0].parent.span_id == runs[1].parent.span_id


async def test_unsampled_parent_propagates_nothing(autojump_clock, spans):
    unsampled = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(0))
    token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(unsampled)))
    try:
        async with open_test_engine(registry) as engine:
            iid = await engine.client.schedule_new_orchestration(with_timer)
            await engine.client.wait_for_orchestration_completion(iid, timeout=60)
            events = await history(engine, iid)
    finally:
        otel_context.detach(token)
    assert spans.get_finished_spans() == ()
    assert started_of(events).execution_started.parent_trace_context is None
    scheduled = [e.task_scheduled for e in events if h.kind(e) == "task_scheduled"]
    assert scheduled and all(s.parent_trace_context is None for s in scheduled)


async def test_a_store_from_before_tracing_is_upgraded(tmp_path):
    db = tmp_path / "v1.sqlite3"
    async with dtrio.open_engine(registry, db=db, max_poll_interval=None):
        pass
    conn = sqlite3.connect(db)
    to_version_6(conn)
    conn.execute("ALTER TABLE activities DROP COLUMN trace_context")
    conn.execute("DROP TABLE entities")  # added by schema version 4
    conn.execute("DROP TABLE entity_inbox")
    conn.execute("DROP TABLE activity_calls")  # added by schema version 6
    conn.execute("ALTER TABLE activities DROP COLUMN call_id")
    conn.execute("UPDATE dtrio_meta SET value = '1' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    async with dtrio.open_engine(registry, db=db, max_poll_interval=None) as engine:
        iid = await engine.client.schedule_new_orchestration(sequence)
        state = await engine.client.wait_for_orchestration_completion(iid, timeout=60)
    assert state.runtime_status == S.COMPLETED


# -- logs -------------------------------------------------------------------------------------


async def test_lifecycle_lines_name_the_instance_and_the_work_item(autojump_clock, caplog):
    caplog.set_level(logging.DEBUG, logger="dtrio")
    async with open_test_engine(registry) as engine:
        for iid, orchestrator in (("ok", sequence), ("bad", failing)):
            await engine.client.schedule_new_orchestration(orchestrator, instance_id=iid)
            await engine.client.wait_for_orchestration_completion(iid, timeout=60)
    engine_lines = [r for r in caplog.records if r.name == "dtrio.engine"]
    info = [r.getMessage() for r in engine_lines if r.levelno == logging.INFO]
    assert "orchestration ok (sequence) started" in info
    assert "orchestration ok (sequence) finished: COMPLETED" in info
    assert ("orchestration bad (failing) finished: FAILED: RuntimeError: "
            "orchestration went wrong") in info
    about_items = [r for r in caplog.records if getattr(r, "work_item", None)]
    assert {r.work_item for r in about_items} == {"orchestration", "activity"}
    for record in about_items:
        assert record.instance_id in record.getMessage()
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert "activity fail#0 of bad (attempt 1) failed: ValueError: activity went wrong" in debug
    assert ("orchestration ok (sequence) step 0: events [orchestrator_started, execution_started] "
            "-> actions [schedule_task(id=0, name='hello')]") in debug


def test_replay_safe_logger_is_silent_while_replaying(caplog):
    caplog.set_level(logging.INFO, logger="dtrio.orchestrator.waits")
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    history_ = [hb.orchestrator_started(t0), hb.execution_started(t0, "waits", "r", "x"),
                hb.task_scheduled(t0, 0, "hello", '"first"'), hb.orchestrator_completed(t0)]
    result = [hb.orchestrator_started(t0), hb.task_completed(t0, 0, '"Hello, first!"')]
    live = OrchestrationRun(registry.orchestrators, "r")
    live.feed([], history_)
    live.feed([], result)
    assert [r.getMessage() for r in caplog.records] == ["waiting for go after Hello, first!"]
    caplog.clear()
    OrchestrationRun(registry.orchestrators, "r").feed(history_ + result, [])  # a restart's replay
    assert caplog.records == []


@pytest.fixture
def root_logger():
    """configure_logging changes the root logger: put it back as it was."""
    root, own = logging.getLogger(), logging.getLogger("dtrio")
    level, own_level, handlers = root.level, own.level, list(root.handlers)
    yield root
    root.setLevel(level)
    own.setLevel(own_level)
    root.handlers[:] = handlers


def test_json_lines_carry_the_work_item_fields_and_the_current_span(spans, root_logger):
    stream = io.StringIO()
    handler = logs.configure_logging("DEBUG", "json", stream)
    again = logs.configure_logging("INFO", "json", stream)
    assert handler not in root_logger.handlers and again in root_logger.handlers
    engine_log = logging.getLogger("dtrio.engine")
    engine_log.info("orchestration %s finished", "i1", extra=logs.work_item("orchestration", "i1"))
    engine_log.debug("filtered out at INFO")
    with app_tracer.start_as_current_span("inside") as span:
        engine_log.warning("in a span")
    first, second = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert {k: first[k] for k in ("level", "logger", "message", "work_item", "instance_id")} == {
        "level": "INFO", "logger": "dtrio.engine", "message": "orchestration i1 finished",
        "work_item": "orchestration", "instance_id": "i1",
    }
    assert "trace_id" not in first
    ctx = span.get_span_context()
    assert second["trace_id"] == f"{ctx.trace_id:032x}"
    assert second["span_id"] == f"{ctx.span_id:016x}"


def test_text_lines(root_logger):
    stream = io.StringIO()
    logs.configure_logging(logging.INFO, "text", stream)
    logging.getLogger("dtrio.backend").info("created store %s", "x.sqlite3")
    assert stream.getvalue().rstrip().endswith("INFO    dtrio.backend: created store x.sqlite3")
    with pytest.raises(ValueError, match="text, json"):
        logs.configure_logging("INFO", "xml")


def test_the_libraries_log_at_warning_unless_asked(root_logger):
    def written(level, **others):
        stream = io.StringIO()
        logs.configure_logging(level, "text", stream, **others)
        logging.getLogger("dtrio.grpc").debug("dtrio debug")
        logging.getLogger("dtrio.orchestrator.greet").info("orchestrator info")
        logging.getLogger("hpack.hpack").debug("library debug")
        logging.getLogger("grpclib.server").info("library info")
        logging.getLogger("grpclib.server").warning("library warning")
        logging.getLogger("dtrio.engine").error("dtrio error")
        return [line.split(": ", 1)[1] for line in stream.getvalue().splitlines()]

    assert written("DEBUG") == [
        "dtrio debug", "orchestrator info", "library warning", "dtrio error"]
    assert written("info", others="debug") == [
        "orchestrator info", "library debug", "library info", "library warning", "dtrio error"]
    assert written(logging.ERROR) == ["dtrio error"]  # a higher level counts for both
    with pytest.raises(ValueError, match="not a log level: 'loud'"):
        logs.configure_logging("loud")
