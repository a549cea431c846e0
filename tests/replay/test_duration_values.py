"""Durations, taken the same way everywhere: a timedelta or seconds (int or float), anything
else refused at the call with `InvalidInput` naming the parameter and what it received."""

import json
import math
from datetime import UTC, datetime, timedelta, timezone

import pytest

import dtrio
from dtrio import history as h
from dtrio.durations import fire_time, to_seconds, to_timedelta
from dtrio.replay import OrchestrationRun

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def start(name):
    return [h.orchestrator_started(T0), h.execution_started(T0, name, "i1", "e1", None)]


def completion(actions):
    (action,) = [a for a in actions if a.complete_orchestration is not None]
    return action.complete_orchestration


@pytest.mark.parametrize("value, expected", [
    (timedelta(minutes=2), timedelta(minutes=2)),
    (90, timedelta(seconds=90)),
    (0.25, timedelta(milliseconds=250)),
    (0, timedelta(0)),
])
def test_a_duration_is_a_timedelta_or_seconds(value, expected):
    assert to_timedelta(value, "f(d=...)") == expected
    assert to_seconds(value, "f(d=...)") == expected.total_seconds()


@pytest.mark.parametrize("value, received", [
    (True, "bool True"),
    ("5", "str '5'"),
    (None, "NoneType None"),
    ([1], "list [1]"),
    ("x" * 60, "str '" + "x" * 36 + "..."),  # long values are cut short
])
def test_other_types_are_refused_naming_the_parameter_and_the_type(value, received):
    with pytest.raises(dtrio.InvalidInput) as raised:
        to_timedelta(value, "f(timeout=...)")
    assert str(raised.value) == (
        f"f(timeout=...) takes a timedelta or seconds (int or float), not {received}"
    )


@pytest.mark.parametrize("value, message", [
    (-1, "f(d=...) must be zero or more, not -1"),
    (timedelta(seconds=-1), "f(d=...) must be zero or more, not datetime.timedelta(days=-1, "),
    (math.nan, "f(d=...) must be a finite number of seconds, not nan"),
    (math.inf, "f(d=...) must be a finite number of seconds, not inf"),
    (1e20, "f(d=...) is too long: 1e+20 seconds"),
])
def test_negative_nan_infinite_and_huge_durations_are_refused(value, message):
    with pytest.raises(dtrio.InvalidInput) as raised:
        to_timedelta(value, "f(d=...)")
    assert str(raised.value).startswith(message)


def test_zero_is_refused_where_a_duration_must_be_positive_and_infinity_where_allowed():
    with pytest.raises(dtrio.InvalidInput, match=r"f\(d=...\) must be positive, not 0"):
        to_timedelta(0, "f(d=...)", positive=True)
    assert to_seconds(math.inf, "f(d=...)", infinite=True) == math.inf
    with pytest.raises(dtrio.InvalidInput, match="finite"):
        to_seconds(math.nan, "f(d=...)", infinite=True)


def test_a_fire_time_is_an_aware_datetime_or_a_duration_from_now():
    tokyo = timezone(timedelta(hours=9))
    assert fire_time(datetime(2026, 1, 1, 9, tzinfo=tokyo), "t", T0) == T0
    assert fire_time(T0 - timedelta(days=1), "t", T0) == T0 - timedelta(days=1)  # past: kept
    assert fire_time(1.5, "t", T0) == T0 + timedelta(seconds=1.5)
    assert fire_time(timedelta(hours=1), "t", T0) == T0 + timedelta(hours=1)
    with pytest.raises(dtrio.InvalidInput, match="t must be timezone-aware"):
        fire_time(datetime(2026, 1, 1), "t", T0)
    with pytest.raises(dtrio.InvalidInput, match="t takes a timezone-aware datetime, a "
                       r"timedelta or seconds \(int or float\), not str '1h'"):
        fire_time("1h", "t", T0)
    with pytest.raises(dtrio.InvalidInput, match="t is too far in the future"):
        fire_time(timedelta(days=999_999_999), "t", T0)


def test_orchestrator_timers_and_event_timeouts_take_seconds():
    reg = dtrio.Registry()

    @reg.orchestrator
    async def waits(ctx, _):
        ctx.create_timer(90)
        ctx.create_timer(T0 + timedelta(hours=2))
        return await ctx.wait_for_external_event("go", timeout=0.2)

    actions = OrchestrationRun(reg.orchestrators, "i1").feed([], start("waits"))
    assert [a.create_timer.fire_at for a in actions] == [
        T0 + timedelta(seconds=90), T0 + timedelta(hours=2), T0 + timedelta(milliseconds=200),
    ]


def test_a_refused_timeout_raises_in_the_orchestrator_and_leaves_no_waiter_behind():
    reg = dtrio.Registry()

    @reg.orchestrator
    async def recovers(ctx, _):
        errors = []
        for timeout in ("5", True, -1, math.nan):
            try:
                ctx.wait_for_external_event("go", timeout=timeout)
            except dtrio.InvalidInput as exc:
                errors.append(str(exc))
        for fire_at in ("soon", datetime(2026, 1, 2)):
            try:
                ctx.create_timer(fire_at)
            except dtrio.InvalidInput as exc:
                errors.append(str(exc))
        return {"errors": errors, "event": await ctx.wait_for_external_event("go")}

    run = OrchestrationRun(reg.orchestrators, "i1")
    assert run.feed([], start("recovers")) == []  # nothing scheduled by the refused calls
    done = completion(run.feed([], [h.orchestrator_started(T0), h.event_raised(T0, "go", "1")]))
    output = json.loads(done.result)
    assert output["event"] == 1  # the first "go" reached the wait that was made
    assert output["errors"] == [
        "wait_for_external_event(timeout=...) takes a timedelta or seconds (int or float), "
        "not str '5'",
        "wait_for_external_event(timeout=...) takes a timedelta or seconds (int or float), "
        "not bool True",
        "wait_for_external_event(timeout=...) must be zero or more, not -1",
        "wait_for_external_event(timeout=...) must be a finite number of seconds, not nan",
        "create_timer(fire_at=...) takes a timezone-aware datetime, a timedelta or seconds "
        "(int or float), not str 'soon'",
        "create_timer(fire_at=...) must be timezone-aware (use UTC), not a naive datetime",
    ]


def test_retry_policy_intervals_take_seconds():
    from dtrio.replay import RetryPolicy

    policy = RetryPolicy(max_attempts=4, first_retry_interval=2, backoff_coefficient=10,
                         max_retry_interval=30.0, retry_timeout=timedelta(minutes=1))
    assert policy.first_retry_interval == timedelta(seconds=2)
    assert policy.max_retry_interval == timedelta(seconds=30)
    failure = dtrio.TaskFailedError("x", dtrio.FailureDetails("IOError", "down"))
    assert [policy.next_delay(n, timedelta(0), failure) for n in (1, 2, 3)] == [
        timedelta(seconds=2), timedelta(seconds=20), timedelta(seconds=30),
    ]


@pytest.mark.parametrize("fields, message", [
    ({"first_retry_interval": "2s"},
     r"RetryPolicy\(first_retry_interval=...\) takes a timedelta or seconds \(int or float\), "
     "not str '2s'"),
    ({"first_retry_interval": 0}, r"RetryPolicy\(first_retry_interval=...\) must be positive"),
    ({"first_retry_interval": 1, "max_retry_interval": False},
     r"RetryPolicy\(max_retry_interval=...\) takes .*, not bool False"),
    ({"first_retry_interval": 1, "retry_timeout": math.inf},
     r"RetryPolicy\(retry_timeout=...\) must be a finite number of seconds"),
    ({"first_retry_interval": 1, "backoff_coefficient": math.nan},
     r"RetryPolicy\(backoff_coefficient=...\) must be a number of at least 1, not nan"),
    ({"first_retry_interval": 1, "max_attempts": 2.5},
     r"RetryPolicy\(max_attempts=...\) takes an int, not float"),
])
def test_retry_policy_refuses_bad_values_naming_them(fields, message):
    from dtrio.replay import RetryPolicy

    with pytest.raises(dtrio.InvalidInput, match=message):
        RetryPolicy(**{"max_attempts": 3, **fields})
