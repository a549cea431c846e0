"""Builders and constants shared by the backend contract suite (imported by its test modules)."""

from __future__ import annotations

from dtrio import _pb as pb
from dtrio import history as h
from dtrio.backend import Backend
from dtrio.backend.base import OrchestrationWorkItem
from dtrio.clock import Clock
from dtrio.events import StoredEvent
from dtrio.state import ActivityTask, Message, NewInstance, OrchestrationStep, new_execution_id

S = pb.OrchestrationStatus
SECOND = 1_000_000
LEASE = 30 * SECOND


def parse(data: bytes | StoredEvent) -> pb.HistoryEvent:
    return data.event if isinstance(data, StoredEvent) else pb.HistoryEvent.parse(data)


def kinds(events: list[StoredEvent] | list[tuple[int, StoredEvent]]) -> list[str]:
    """The oneof names of stored events (or of a work item's (inbox id, event) pairs)."""
    return [h.kind(parse(e[1] if isinstance(e, tuple) else e)) for e in events]


class Kit:
    """Builders for contract-level records, with "now" taken from the backend's clock."""

    def __init__(self, backend: Backend, clock: Clock) -> None:
        self.backend = backend
        self.clock = clock

    def now(self) -> int:
        return self.clock.now_us()

    def new_instance(
        self, instance_id: str, name: str = "wf", input: str | None = '"in"', *,
        visible_at: int | None = None, execution_id: str | None = None,
        parent_instance_id: str | None = None, tags: dict[str, str] | None = None,
        conflict: Message | None = None, version: str | None = "1.0",
    ) -> NewInstance:
        execution_id = execution_id or new_execution_id()
        started = h.execution_started(self.clock.now_dt(), name, instance_id, execution_id, input,
                                      version=version, tags=tags)
        return NewInstance(
            instance_id, execution_id, name, version, input, StoredEvent.of(started),
            self.now() if visible_at is None else visible_at,
            parent_instance_id=parent_instance_id, tags=tags, conflict=conflict,
        )

    async def start(self, instance_id: str, **kw) -> NewInstance:
        new = self.new_instance(instance_id, **kw)
        await self.backend.create_instance(new)
        return new

    async def lease(
        self, owner: str = "w1", lease_us: int = LEASE, limit: int = 100
    ) -> dict[str, OrchestrationWorkItem]:
        items = await self.backend.lease_orchestrations(owner, limit, lease_us)
        by_id = {item.instance_id: item for item in items}
        assert len(by_id) == len(items), "an instance was leased twice in one call"
        return by_id

    async def lease_one(
        self, instance_id: str, owner: str = "w1", lease_us: int = LEASE
    ) -> OrchestrationWorkItem:
        items = await self.lease(owner, lease_us)
        assert list(items) == [instance_id]
        return items[instance_id]

    async def started_and_leased(
        self, instance_id: str, **kw
    ) -> tuple[NewInstance, OrchestrationWorkItem]:
        new = await self.start(instance_id, **kw)
        return new, await self.lease_one(instance_id)

    def event_raised(self, name: str = "ev", input: str | None = None) -> StoredEvent:
        return StoredEvent.of(h.event_raised(self.clock.now_dt(), name, input))

    def history(self, *events: pb.HistoryEvent) -> list[StoredEvent]:
        return [StoredEvent.of(e) for e in events]

    def step(
        self, item: OrchestrationWorkItem, *extra: pb.HistoryEvent, status: S = S.RUNNING,
        consumed: bool = True, **kw,
    ) -> OrchestrationStep:
        """A step that records the item's events, then `extra`, then orchestratorCompleted."""
        now = self.clock.now_dt()
        history = [e for _, e in item.events] if consumed else []
        history += [StoredEvent.of(h.orchestrator_started(now))]
        history += [StoredEvent.of(e) for e in extra]
        history.append(StoredEvent.of(h.orchestrator_completed(now)))
        custom_status = kw.pop("custom_status", None)
        return OrchestrationStep(history, item.execution_id, int(status), custom_status, **kw)

    def activity(self, item: OrchestrationWorkItem, task_id: int, name: str = "act",
                 input: str | None = '"a"', visible_at: int | None = None) -> ActivityTask:
        return ActivityTask(item.instance_id, item.execution_id, task_id, name, "1.0", input,
                            self.now() if visible_at is None else visible_at)

    def task_completed(self, task_id: int, result: str | None = '"r"') -> StoredEvent:
        return StoredEvent.of(h.task_completed(self.clock.now_dt(), task_id, result))
