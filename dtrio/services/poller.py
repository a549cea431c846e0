"""The backend poller: wakes the dispatchers when timers and retries come due, and polls for
work that other processes wrote to a shared store."""

from __future__ import annotations

import math

import trio

from ..backend import Backend
from ..clock import Clock

_MIN_POLL = 0.05


async def serve_poller(
    backend: Backend,
    clock: Clock,
    max_poll_interval: float | None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    poll = _MIN_POLL
    seen_commits = backend.commits
    task_status.started()
    while True:
        backend.schedule_changed.clear()
        due = await backend.next_due()
        backend.poller_due = due
        deadline = math.inf if due is None else clock.trio_deadline(due + 1)
        if max_poll_interval is not None:
            # Back off while this process is idle; others' work shows up within the cap.
            poll = (
                _MIN_POLL if backend.commits != seen_commits
                else min(poll * 2, max_poll_interval)
            )
            seen_commits = backend.commits
            deadline = min(deadline, trio.current_time() + poll)
        with trio.move_on_at(deadline) as timer:
            await backend.schedule_changed.wait()
        if timer.cancelled_caught:
            backend.orchestrations_ready.set()
            backend.activities_ready.set()
            backend.entities_ready.set()
