"""The pure replay core: history in, actions out."""

from .context import OrchestrationContext
from .executor import OrchestrationRun, describe_action
from .retry import RetryPolicy
from .tasks import Task, when_all, when_any

__all__ = [
    "OrchestrationContext",
    "OrchestrationRun",
    "RetryPolicy",
    "Task",
    "describe_action",
    "when_all",
    "when_any",
]
