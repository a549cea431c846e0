"""The poller: wakes the lifecycles when timers, retries and expired leases come due, and polls
for work that other processes wrote to a shared store."""

from __future__ import annotations

import logging
import math

import trio

from ..backend import Backend
from ..clock import Clock
from ..errors import StorageError
from .lifecycle import backoff
from .wakeups import Wakeups

log = logging.getLogger("dtrio.engine")

_MIN_POLL = 0.05


async def serve_poller(
    backend: Backend,
    clock: Clock,
    wakeups: Wakeups,
    max_poll_interval: float | None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    poll = _MIN_POLL
    seen_commits = wakeups.commits
    failures = 0
    task_status.started()
    while True:
        wakeups.schedule_changed.value = False
        try:
            due = await backend.next_due()
            failures = 0
        except StorageError as exc:
            failures += 1
            delay = backoff(failures, first=0.5, cap=30.0)
            log.warning("could not read when work is due next (retrying in %.1f s): %s",
                        delay, exc)
            await trio.sleep(delay)
            wakeups.all_ready()
            continue
        wakeups.poller_due = due
        deadline = math.inf if due is None else clock.trio_deadline(due + 1)
        if max_poll_interval is not None:
            # Back off while this process is idle; others' work shows up within the cap.
            poll = (
                _MIN_POLL if wakeups.commits != seen_commits
                else min(poll * 2, max_poll_interval)
            )
            seen_commits = wakeups.commits
            deadline = min(deadline, trio.current_time() + poll)
        with trio.move_on_at(deadline) as timer:
            await wakeups.schedule_changed.wait_value(True)
        if timer.cancelled_caught:
            wakeups.all_ready()
