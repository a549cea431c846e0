"""The writes waiting for a group commit, as both stores queue them: every write queued in one
scheduling tick shares one transaction (a savepoint each), flushed by the first of them to run
again."""

from __future__ import annotations

from typing import Any

import trio


class WriteQueue:
    _queue: list[Any]

    async def _join(self, op: Any) -> None:
        """Queue `op` for the flush of this scheduling tick; on return a flush may have taken
        it already (done or under way), else the caller flushes."""
        # Cancelled may be raised only before the op is queued: once queued, a neighbour's flush
        # may commit it, so a write that raised Cancelled would have happened after all.
        await trio.lowlevel.checkpoint_if_cancelled()
        self._queue.append(op)
        try:
            await trio.lowlevel.cancel_shielded_checkpoint()
        except BaseException:
            if op in self._queue:  # no flush has taken it
                self._queue.remove(op)
            raise
