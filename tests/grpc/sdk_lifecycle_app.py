"""Orchestrators for the lifecycle RPC tests, written for the official durabletask SDK."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from durabletask import task

attempts: dict[str, int] = {}


def flaky(ctx: task.ActivityContext, key: str) -> str:
    """Fails until its third attempt for `key`."""
    attempts[key] = attempts.get(key, 0) + 1
    if attempts[key] < 3:
        raise ConnectionError(f"attempt {attempts[key]} failed")
    return f"{key} ok after {attempts[key]}"


def echo(ctx: task.ActivityContext, value: Any) -> Any:
    attempts[f"echo:{value}"] = attempts.get(f"echo:{value}", 0) + 1
    return value


RETRY = task.RetryPolicy(first_retry_interval=timedelta(milliseconds=200), max_number_of_attempts=3)


def retries(ctx: task.OrchestrationContext, key: str):
    return (yield ctx.call_activity(flaky, input=key, retry_policy=RETRY))


def flaky_child(ctx: task.OrchestrationContext, key: str):
    return (yield ctx.call_activity(flaky, input=key))


def retries_child(ctx: task.OrchestrationContext, key: str):
    return (yield ctx.call_sub_orchestrator(flaky_child, input=key, retry_policy=RETRY))


def waits(ctx: task.OrchestrationContext, _: Any):
    ctx.set_custom_status({"stage": "waiting"})
    value = yield ctx.wait_for_external_event("value")
    return value


def tree(ctx: task.OrchestrationContext, depth: int):
    if depth == 0:
        yield ctx.wait_for_external_event("never")
    yield ctx.call_sub_orchestrator(tree, input=depth - 1)


def fails_once_in_the_middle(ctx: task.OrchestrationContext, key: str):
    first = yield ctx.call_activity(echo, input=f"{key}-first")
    second = yield ctx.call_activity(flaky, input=key)
    return [first, second]


def versioned(ctx: task.OrchestrationContext, _: Any):
    return ctx.version


def quick(ctx: task.OrchestrationContext, value: Any):
    return value


ORCHESTRATORS = [
    retries, flaky_child, retries_child, waits, tree, fails_once_in_the_middle, versioned, quick
]
ACTIVITIES = [flaky, echo]
