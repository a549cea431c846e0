"""Retry policies for activities and sub-orchestrations, driven by durable timers."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ..durations import to_timedelta
from ..errors import InvalidInput, TaskFailedError
from .tasks import Task

if TYPE_CHECKING:
    from .context import OrchestrationContext


@dataclass(frozen=True)
class RetryPolicy:
    """How to retry a failed activity or sub-orchestration.

    Attempt n+1 starts `first_retry_interval * backoff_coefficient ** (n - 1)` after attempt n
    failed (capped by `max_retry_interval`), until `max_attempts` attempts were made or
    `retry_timeout` has passed since the first attempt. `handle`, if given, sees each failure
    and returns whether it is worth retrying. The waits are durable timers. Intervals are
    timedeltas or seconds (int or float), kept as timedeltas.
    """

    max_attempts: int
    first_retry_interval: timedelta | float
    backoff_coefficient: float = 1.0
    max_retry_interval: timedelta | float | None = None
    retry_timeout: timedelta | float | None = None
    handle: Callable[[TaskFailedError], bool] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or isinstance(self.max_attempts, bool):
            raise InvalidInput(f"RetryPolicy(max_attempts=...) takes an int, not "
                               f"{type(self.max_attempts).__name__}")
        if self.max_attempts < 1:
            raise InvalidInput("max_attempts must be at least 1")
        coefficient = self.backoff_coefficient
        if (not isinstance(coefficient, int | float) or isinstance(coefficient, bool)
                or not coefficient >= 1 or coefficient == math.inf):
            raise InvalidInput(f"RetryPolicy(backoff_coefficient=...) must be a number of at "
                               f"least 1, not {coefficient!r}")
        for name in ("first_retry_interval", "max_retry_interval", "retry_timeout"):
            value = getattr(self, name)
            if value is not None or name == "first_retry_interval":
                delta = to_timedelta(value, f"RetryPolicy({name}=...)", positive=True)
                object.__setattr__(self, name, delta)

    def next_delay(
        self, attempt: int, elapsed: timedelta, failure: TaskFailedError
    ) -> timedelta | None:
        """The wait before the next attempt after `attempt` failed, or None to give up."""
        if attempt >= self.max_attempts:
            return None
        if failure.details.is_non_retriable:
            return None
        if self.handle is not None and not self.handle(failure):
            return None
        delay = self.first_retry_interval * (self.backoff_coefficient ** (attempt - 1))
        if self.max_retry_interval is not None:
            delay = min(delay, self.max_retry_interval)
        if self.retry_timeout is not None and elapsed + delay > self.retry_timeout:
            return None
        return delay


class RetryableTask(Task[Any]):
    """Runs attempts one after another until one succeeds or the policy gives up; then it
    completes with that result or fails with the last failure. `start_attempt(n)` schedules
    attempt n (from 1): each is a new task, after a durable timer."""

    __slots__ = ("_ctx", "_policy", "_start_attempt", "_attempt", "_first", "_timer")

    def __init__(
        self, ctx: OrchestrationContext, policy: RetryPolicy,
        start_attempt: Callable[[int], Task[Any]],
    ) -> None:
        super().__init__()
        self._ctx = ctx
        self._policy = policy
        self._start_attempt = start_attempt
        self._attempt = 1
        self._first = ctx.now
        self._timer: Task[Any] | None = None
        self._watch(start_attempt(1))

    def _watch(self, task: Task[Any]) -> None:
        if task.is_complete:
            self._child_done(task)
        else:
            task._parents.append(self)  # type: ignore[arg-type]

    def _child_done(self, child: Task[Any]) -> None:
        if self._done:
            return
        if child is self._timer:
            self._timer = None
            self._attempt += 1
            self._watch(self._start_attempt(self._attempt))
            return
        exc = child.exception()
        if exc is None:
            self._complete(child._value)
            return
        delay = (
            self._policy.next_delay(self._attempt, self._ctx.now - self._first, exc)
            if isinstance(exc, TaskFailedError)
            else None
        )
        if delay is None:
            self._fail(exc)
            return
        self._timer = self._ctx.create_timer(delay)
        self._watch(self._timer)
