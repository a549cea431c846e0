"""The pure replay core: history in, actions out."""

from .context import OrchestrationContext
from .executor import OrchestrationRun, describe_action
from .logger import ReplaySafeLogger
from .retry import RetryPolicy
from .tasks import Task, when_all, when_any

__all__ = [
    "OrchestrationContext",
    "OrchestrationRun",
    "ReplaySafeLogger",
    "RetryPolicy",
    "Task",
    "describe_action",
    "when_all",
    "when_any",
]
