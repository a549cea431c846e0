"""The storage contract every backend implements, and the records it hands out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from .. import _pb as pb
from ..entities.batch import EntityStep
from ..events import StoredEvent
from ..inbox import Message, NewInstance
from ..state import OrchestrationStep

# The names of the orchestrations or activities a worker takes, each with the versions it takes
# (none: any version; an absent version counts as ""). A lease with None takes every name.
NameFilter = frozenset[tuple[str, frozenset[str]]]


@dataclass(slots=True)
class OrchestrationWorkItem:
    """New events for one instance, leased to one worker until completed or abandoned."""

    instance_id: str
    execution_id: str
    name: str
    status: int
    lock_token: str
    step: int  # increases with every committed step; a cached run is current if it matches
    events: list[tuple[int, StoredEvent]]  # (inbox id, event), oldest first


@dataclass(slots=True)
class ActivityWorkItem:
    id: int
    instance_id: str
    execution_id: str
    task_id: int
    name: str
    version: str | None
    input: str | None
    lock_token: str
    # Attempts of its call so far, this one included: its call's earlier tasks' and its own
    # deliveries (each lease counts one).
    attempt: int
    # The orchestration span this activity runs under (None: not traced).
    trace_context: pb.TraceContext | None = None
    # The call it is an attempt of, when the call has a retry policy (None: its own task ID).
    call_id: int | None = None


@dataclass(slots=True)
class EntityWorkItem:
    """Messages for one entity, with its state and lock, leased to one worker."""

    instance_id: str
    name: str
    state: str | None
    locked_by: str | None
    lock_section: str | None
    lock_token: str
    messages: list[tuple[int, StoredEvent]]  # (inbox id, event), oldest first


class NextStep(Protocol):
    """The step of an orchestration that an activity's result wakes, offered to run in the
    transaction that records the result, when the worker holds the orchestration's run in
    memory (it is then planned without I/O)."""

    owner: str  # what the instance is leased under while the step is planned
    step: int  # the instance's step counter the run in memory is current for

    def plan(self, item: OrchestrationWorkItem) -> OrchestrationStep | None:
        """The step for `item`, whose one event is the activity's result (not in the inbox);
        None declines it."""
        ...


@dataclass(frozen=True, slots=True)
class TakenOver:
    """A work item whose lease was ended because its owner is gone."""

    kind: str  # "orchestration", "activity" or "entity"
    instance_id: str
    name: str
    task_id: int | None = None  # an activity's


@dataclass(slots=True)
class EntityRecord:
    instance_id: str
    name: str
    created_at: int
    last_modified: int
    locked_by: str | None
    backlog: int  # messages waiting in its inbox
    state: str | None = None  # only when asked for


@dataclass(frozen=True, slots=True)
class EntityQuery:
    instance_id_prefix: str | None = None
    modified_from: int | None = None  # microseconds since the epoch, inclusive
    modified_to: int | None = None  # exclusive
    include_state: bool = False
    # Also entities that have no state yet (only messages waiting); hidden by default.
    include_transient: bool = False
    page_size: int = 100
    continuation_token: str | None = None


@dataclass(slots=True)
class EntityPage:
    entities: list[EntityRecord]
    continuation_token: str | None


@dataclass(slots=True)
class InstanceRecord:
    instance_id: str
    execution_id: str
    name: str
    version: str | None
    status: int
    created_at: int
    updated_at: int
    completed_at: int | None
    scheduled_start: int | None
    parent_instance_id: str | None
    input: str | None = None
    output: str | None = None
    custom_status: str | None = None
    failure: bytes | None = None
    tags: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class InstanceQuery:
    created_from: int | None = None  # microseconds since the epoch, inclusive
    created_to: int | None = None  # exclusive
    statuses: frozenset[int] | None = None
    instance_id_prefix: str | None = None
    page_size: int = 100
    continuation_token: str | None = None
    fetch_payloads: bool = False
    name: str | None = None  # the orchestration's name, exactly
    parent_instance_id: str | None = None  # only the sub-orchestrations of this instance
    newest_first: bool = False  # ordered by (created_at, instance_id) descending


@dataclass(slots=True)
class InstancePage:
    instances: list[InstanceRecord]
    continuation_token: str | None  # None on the last page


@dataclass(slots=True)
class Committed:
    """What one committed transaction made due, reported to the backend's listeners (the
    services that schedule work) right after it commits."""

    orchestration: bool = False  # an orchestration work item is due now
    activity: bool = False
    entity: bool = False
    next_due: int | None = None  # the earliest later time at which something written is due
    instances: set[str] = field(default_factory=set)  # whose status or execution changed

    def due(self, kind: str, visible_at: int, now: int) -> None:
        """Note that work of `kind` ("orchestration", "activity", "entity") becomes due at
        `visible_at`."""
        if visible_at > now:
            if self.next_due is None or visible_at < self.next_due:
                self.next_due = visible_at
        elif kind == "orchestration":
            self.orchestration = True
        elif kind == "activity":
            self.activity = True
        else:
            self.entity = True

    def merge(self, notes: Committed) -> None:
        """Add what `notes` made due (several commits reported as one)."""
        self.orchestration |= notes.orchestration
        self.activity |= notes.activity
        self.entity |= notes.entity
        if notes.next_due is not None and (self.next_due is None or notes.next_due < self.next_due):
            self.next_due = notes.next_due
        self.instances |= notes.instances


Listener = Callable[[Committed], None]


class Backend(Protocol):
    """Durable storage for instances, history, inboxes, the activity queue and entities.

    Every method is a short transaction. Completions check the lease and either apply in
    full or raise `LeaseLost` having changed nothing. A store that cannot be read or written
    raises `StorageError` and changes nothing. After every write that commits, each listener
    is told what it made due.
    """

    def listen(self, listener: Listener) -> None: ...

    async def create_instance(
        self, new: NewInstance, *, replace: frozenset[int] = frozenset(),
        ignore: frozenset[int] = frozenset(),
    ) -> bool: ...

    async def get_instance(
        self, instance_id: str, *, payloads: bool = True
    ) -> InstanceRecord | None: ...

    async def add_event(
        self, instance_id: str, event: StoredEvent, *, visible_at: int | None = None,
        wake_pending: bool = False,
    ) -> bool: ...

    async def rewind_instance(self, instance_id: str, reason: str | None) -> None: ...

    async def purge_instance(self, instance_id: str, *, recursive: bool = True) -> int: ...

    async def purge_instances(
        self, created_from: int | None, created_to: int | None, statuses: frozenset[int] | None
    ) -> int: ...

    async def query_instances(self, query: InstanceQuery) -> InstancePage: ...

    async def count_instances(self, query: InstanceQuery) -> dict[int, int]:
        """How many instances match `query`'s filters (its statuses, paging and order aside),
        per status; statuses with none are left out."""
        ...

    async def list_instance_ids(
        self, statuses: frozenset[int] | None, completed_from: int | None,
        completed_to: int | None, page_size: int, last_key: str | None,
    ) -> tuple[list[str], str | None]: ...

    async def lease_orchestrations(
        self, owner: str, limit: int, lease_us: int, names: NameFilter | None = None
    ) -> list[OrchestrationWorkItem]: ...

    async def load_history(self, instance_id: str) -> list[StoredEvent]: ...

    async def renew_orchestration(self, item: OrchestrationWorkItem, lease_us: int) -> None: ...

    async def complete_orchestration(
        self, item: OrchestrationWorkItem, step: OrchestrationStep
    ) -> None: ...

    async def release_orchestration(self, item: OrchestrationWorkItem) -> None: ...

    async def abandon_orchestration(self, item: OrchestrationWorkItem, delay_us: int) -> None: ...

    async def lease_activities(
        self, owner: str, limit: int, lease_us: int, names: NameFilter | None = None
    ) -> list[ActivityWorkItem]:
        """Each lease of a task counts one attempt. The task of a call with a retry policy
        (`ActivityTask.call_id`) counts on from the attempts of the call's earlier tasks in the
        same execution, and from no fewer than `ActivityTask.retries`."""
        ...

    async def renew_activity(self, item: ActivityWorkItem, lease_us: int) -> None: ...

    async def complete_activity(
        self, item: ActivityWorkItem, result: StoredEvent, then: NextStep | None = None
    ) -> bool:
        """Deliver `result` (taskCompleted or taskFailed); a failed task of a call with a retry
        policy leaves its attempts for the call's next task.

        With `then`, a backend may instead, in the same transaction, lease the instance (only
        if it is running, at step `then.step`, not leased, with nothing else due in its inbox),
        have `then.plan` plan its step from `result`, and commit that step as
        `complete_orchestration` would, the result never entering the inbox. Returns whether
        it did; a declined plan leaves the instance as it was and `result` delivered."""
        ...

    async def abandon_activity(self, item: ActivityWorkItem, delay_us: int) -> None: ...

    async def send_entity_message(self, message: Message) -> None: ...

    async def lease_entities(
        self, owner: str, limit: int, lease_us: int, batch_size: int,
        names: frozenset[str] | None = None,
    ) -> list[EntityWorkItem]: ...

    async def renew_entity(self, item: EntityWorkItem, lease_us: int) -> None: ...

    async def complete_entity(self, item: EntityWorkItem, step: EntityStep) -> None: ...

    async def abandon_entity(self, item: EntityWorkItem, delay_us: int) -> None: ...

    async def get_entity(
        self, instance_id: str, *, include_state: bool
    ) -> EntityRecord | None: ...

    async def query_entities(self, query: EntityQuery) -> EntityPage: ...

    async def clean_entity_storage(
        self, remove_empty: bool, release_orphaned_locks: bool
    ) -> tuple[int, int]: ...

    async def lease_owners(self) -> set[str]:
        """The owners of the leases that have not lapsed (of every kind of work item)."""
        ...

    async def release_owner(self, owner: str) -> list[TakenOver]:
        """End every lease `owner` holds, as if it had lapsed (the caller knows the owner is
        gone): the items may be leased again at once, and listeners are told. Returns them."""
        ...

    async def next_due(self) -> int | None: ...

    async def aclose(self) -> None: ...
