"""Orchestrators and activities written for the official durabletask SDK (generator style)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from durabletask import task


def hello(ctx: task.ActivityContext, name: str) -> str:
    return f"Hello, {name}!"


def square(ctx: task.ActivityContext, n: int) -> int:
    return n * n


def explode(ctx: task.ActivityContext, message: str) -> None:
    raise ValueError(message)


def sequence(ctx: task.OrchestrationContext, _: Any):
    results = []
    for city in ("Tokyo", "London", "Seattle"):
        results.append((yield ctx.call_activity(hello, input=city)))
    return results


def fan_out_fan_in(ctx: task.OrchestrationContext, count: int):
    squares = yield task.when_all([ctx.call_activity(square, input=i) for i in range(count)])
    return sum(squares)


def first_of_event_or_timer(ctx: task.OrchestrationContext, _: Any):
    event = ctx.wait_for_external_event("go")
    timeout = ctx.create_timer(timedelta(seconds=30))
    winner = yield task.when_any([event, timeout])
    return "event" if winner is event else "timeout"


def sleeper(ctx: task.OrchestrationContext, seconds: float):
    yield ctx.create_timer(timedelta(seconds=seconds))
    return ctx.current_utc_datetime.isoformat()


def approval(ctx: task.OrchestrationContext, _: Any):
    ctx.set_custom_status("waiting")
    decision = yield ctx.wait_for_external_event("approval")
    return {"approved": decision}


def child(ctx: task.OrchestrationContext, n: int):
    doubled = yield ctx.call_activity(square, input=n)
    return {"child": ctx.instance_id, "parent": ctx.parent_instance_id, "value": doubled}


def parent(ctx: task.OrchestrationContext, n: int):
    first = yield ctx.call_sub_orchestrator(child, input=n)
    kid = f"{ctx.instance_id}-kid"
    second = yield ctx.call_sub_orchestrator(child, input=n + 1, instance_id=kid)
    return [first, second]


def catches_failure(ctx: task.OrchestrationContext, message: str):
    try:
        yield ctx.call_activity(explode, input=message)
    except task.TaskFailedError as failure:
        return {"type": failure.details.error_type, "message": failure.details.message}
    return "no failure"


def fails(ctx: task.OrchestrationContext, message: str):
    yield ctx.call_activity(explode, input=message)
    return "unreachable"


def counter(ctx: task.OrchestrationContext, n: int):
    yield ctx.call_activity(square, input=n)
    if n < 3:
        ctx.continue_as_new(n + 1)
        return None
    return n


def tick_counter(ctx: task.OrchestrationContext, ticks: list[int]):
    """One event per execution: continues as new after each, keeping events not yet read."""
    tick = yield ctx.wait_for_external_event("tick")
    ticks = [*ticks, tick]
    if len(ticks) < 5:
        ctx.continue_as_new(ticks, save_events=True)
        return None
    return ticks


ORCHESTRATORS = [
    sequence, fan_out_fan_in, first_of_event_or_timer, sleeper, approval, child, parent,
    catches_failure, fails, counter, tick_counter,
]
ACTIVITIES = [hello, square, explode]
