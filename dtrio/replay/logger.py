"""The replay-safe logger orchestrators use: silent while the orchestrator replays history."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .context import OrchestrationContext


class ReplaySafeLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Wraps a logger so that an orchestrator's lines are logged once, when the code first runs,
    and not again each time the orchestrator is replayed after a restart. Lines carry the
    instance ID and orchestration name (fields in the JSON format).

    `ctx.logger` is one over `dtrio.orchestrator.<name>`; wrap your own with
    `ReplaySafeLogger(logging.getLogger(__name__), ctx)`. A step that cannot be saved (its
    process died, or lost its lease) runs again and logs its lines again.
    """

    def __init__(self, logger: logging.Logger, ctx: OrchestrationContext) -> None:
        super().__init__(logger, {})
        self._ctx = ctx

    def isEnabledFor(self, level: int) -> bool:
        # LoggerAdapter.log asks this before formatting anything, so a replay costs one check.
        return not self._ctx.is_replaying and self.logger.isEnabledFor(level)

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {
            "work_item": "orchestration",
            "instance_id": self._ctx.instance_id,
            "orchestration": self._ctx.name,
            **(kwargs.get("extra") or {}),
        }
        return msg, kwargs
