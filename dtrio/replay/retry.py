"""Retry policies for activities and sub-orchestrations, driven by durable timers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

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
    and returns whether it is worth retrying. The waits are durable timers.
    """

    max_attempts: int
    first_retry_interval: timedelta
    backoff_coefficient: float = 1.0
    max_retry_interval: timedelta | None = None
    retry_timeout: timedelta | None = None
    handle: Callable[[TaskFailedError], bool] | None = None

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise InvalidInput("max_attempts must be at least 1")
        if self.first_retry_interval <= timedelta(0):
            raise InvalidInput("first_retry_interval must be positive")
        if self.backoff_coefficient < 1:
            raise InvalidInput("backoff_coefficient must be at least 1")
        if self.max_retry_interval is not None and self.max_retry_interval <= timedelta(0):
            raise InvalidInput("max_retry_interval must be positive")
        if self.retry_timeout is not None and self.retry_timeout <= timedelta(0):
            raise InvalidInput("retry_timeout must be positive")

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
    completes with that result or fails with the last failure."""

    __slots__ = ("_ctx", "_policy", "_start_attempt", "_attempt", "_first", "_timer")

    def __init__(
        self, ctx: OrchestrationContext, policy: RetryPolicy, start_attempt: Callable[[], Task[Any]]
    ) -> None:
        super().__init__()
        self._ctx = ctx
        self._policy = policy
        self._start_attempt = start_attempt
        self._attempt = 1
        self._first = ctx.now
        self._timer: Task[Any] | None = None
        self._watch(start_attempt())

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
            self._watch(self._start_attempt())
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
