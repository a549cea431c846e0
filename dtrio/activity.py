"""What an activity sees."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ActivityContext:
    """Identifies one execution of an activity. `attempt` counts deliveries of this task
    (more than 1 after a crash or an abandoned lease), so activities can be made idempotent."""

    orchestration_id: str
    task_id: int
    name: str
    attempt: int

    @property
    def idempotency_key(self) -> str:
        """Stable across redeliveries of the same scheduled task."""
        return f"{self.orchestration_id}:{self.task_id}"
