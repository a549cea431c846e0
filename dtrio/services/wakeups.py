"""What the services wait on: "there may be work" per kind of work item, and "the schedule
changed" for the poller. Fed by the backend's report of each commit."""

from __future__ import annotations

from trio_util import AsyncBool

from ..backend import Committed

KINDS = ("orchestration", "activity", "entity")


class Wakeups:
    def __init__(self) -> None:
        # Set when work of that kind may be due now; whoever leases clears it first.
        self.ready = {kind: AsyncBool() for kind in KINDS}
        # Set when something was written that comes due before the poller would next wake.
        self.schedule_changed = AsyncBool()
        # The poller's next wake-up (epoch microseconds); only work due earlier must wake it.
        self.poller_due: int | None = None
        # Transactions this process committed, for the poller's backoff.
        self.commits = 0

    def committed(self, notes: Committed) -> None:
        self.commits += 1
        self.heard(notes)

    def heard(self, notes: Committed | None) -> None:
        """Wake for `notes`, committed here or by another process (None: by another process,
        anything)."""
        if notes is None:
            self.all_ready()
            self.schedule_changed.value = True
            return
        for kind in KINDS:
            if getattr(notes, kind):
                self.ready[kind].value = True
        due = notes.next_due
        if due is not None and (self.poller_due is None or due < self.poller_due):
            self.schedule_changed.value = True

    def all_ready(self) -> None:
        """Something may be due that no commit of this process announced (a timer, an expired
        lease, another process's write)."""
        for ready in self.ready.values():
            ready.value = True
