"""The pure replay core: history in, actions out."""

from .context import OrchestrationContext
from .executor import OrchestrationRun, describe_action
from .tasks import Task, when_all, when_any

__all__ = ["OrchestrationContext", "OrchestrationRun", "Task", "describe_action", "when_all", "when_any"]
