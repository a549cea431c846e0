"""What an activity sees."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ActivityContext:
    """Identifies one attempt of an activity call. `attempt` counts the call's attempts from 1:
    its retries (new tasks after a retry policy's wait) and its redeliveries (the same task run
    again after its process died or it was given back). `call_id` is the task ID of the call's
    first attempt (None: `task_id`)."""

    orchestration_id: str
    task_id: int
    name: str
    attempt: int
    call_id: int | None = None

    @property
    def idempotency_key(self) -> str:
        """The same for every attempt of one call, retries and redeliveries alike."""
        call = self.task_id if self.call_id is None else self.call_id
        return f"{self.orchestration_id}:{call}"
