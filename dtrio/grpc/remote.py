"""Work for remote SDK workers.

One dispatcher per engine leases orchestration steps and activities from the backend, up to
the free capacity of the connected GetWorkItems streams, and hands each item to the stream with
the most room. (A backend Wakeup is cleared by whoever waits on it, so one lease loop per kind
serves every stream; a loop per stream would steal each other's wake-ups.) Completions and
abandons come back by completion token, which is the item's lease token; a stream that drops
releases everything it held at once, so another worker picks it up.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from .. import _pb as pb
from .. import history as h
from ..backend import ActivityWorkItem, EntityWorkItem, NameFilter, OrchestrationWorkItem
from ..entities.batch import EntityBatch, finish_batch
from ..errors import FailureDetails, InvalidInput, LeaseLost
from ..services import Engine
from ..services.dispatch import RELEASE_TIMEOUT, backoff
from ..services.entities import plan_item
from ..signals import Wakeup
from ..state import TERMINAL, apply_step
from ..wire import decode, encode
from .filters import work_item_filters
from .workitems import (
    HEALTH_PING,
    activity_work_item,
    entity_work_item,
    orchestration_trace_context,
    orchestrator_work_item,
)

log = logging.getLogger("dtrio.grpc")

_SUSPENDED = int(pb.OrchestrationStatus.SUSPENDED)

# gRPC clients refuse larger messages unless configured otherwise: the official SDK workers do.
DEFAULT_MAX_WORK_ITEM_SIZE = 4 << 20

Item = OrchestrationWorkItem | ActivityWorkItem | EntityWorkItem
Send = Callable[[bytes], Awaitable[None]]


@dataclass(slots=True)
class StepInput:
    """What an orchestration step was given, kept to turn the worker's actions into a commit."""

    new_events: list[tuple[pb.HistoryEvent, bytes]]
    started: pb.ExecutionStartedEvent | None
    suspended: bool


@dataclass(eq=False, slots=True)
class Lease:
    """A work item handed to a stream, until completed, abandoned or released."""

    queue: _Queue
    item: Item
    stream: WorkerStream
    # What an orchestration step or an entity batch was given (activities: None).
    step: StepInput | EntityBatch | None = None

    @property
    def token(self) -> str:
        return self.item.lock_token


@dataclass(eq=False)
class _Queue:
    """One kind of work (orchestrations or activities) and the leases out on it."""

    kind: str  # "orchestration", "activity" or "entity"
    limit: int  # most items of this kind out with workers at once, over all streams
    lease_us: int
    ready: Wakeup  # the backend's "there may be work of this kind"
    lease: Callable[[str, int, int, NameFilter | None], Awaitable[list[Any]]]
    abandon: Callable[[Any, int], Awaitable[None]]
    renew: Callable[[Any, int], Awaitable[None]]
    leases: dict[str, Lease] = field(default_factory=dict)  # by completion token
    held: Wakeup = field(default_factory=Wakeup)  # a lease was handed out
    # When each set of names (see `_rooms`) was last given work, in rounds that gave any.
    served: dict[NameFilter | None, int] = field(default_factory=dict)
    rounds: int = 0
    capacity: Wakeup = field(default_factory=Wakeup)  # a stream connected or a slot freed


class WorkerStream:
    """One connected GetWorkItems stream: how much it may hold, what it holds, its outbox,
    and which names of each kind it takes (None: all)."""

    def __init__(self, limits: dict[str, int], filters: dict[str, NameFilter | None]) -> None:
        self.limits = limits
        self.filters = filters
        self.counts = dict.fromkeys(limits, 0)
        self.held: dict[str, Lease] = {}
        self._send, self._outbox = trio.open_memory_channel[bytes](math.inf)

    def free(self, kind: str) -> int:
        return self.limits[kind] - self.counts[kind]

    def put(self, lease: Lease, message: bytes) -> None:
        self.held[lease.token] = lease
        self.counts[lease.queue.kind] += 1
        self._send.send_nowait(message)

    def forget(self, lease: Lease) -> None:
        del self.held[lease.token]
        self.counts[lease.queue.kind] -= 1

    async def forward(self, send: Send, ping_interval: float) -> None:
        """Write work items to the stream as they come, and a health ping after each silence."""
        while True:
            try:
                # Work already queued needs no timeout (and no cancel scope per message).
                message = self._outbox.receive_nowait()
            except trio.WouldBlock:
                message = HEALTH_PING
                with trio.move_on_after(ping_interval):
                    message = await self._outbox.receive()
            await send(message)


class RemoteWork:
    def __init__(
        self, engine: Engine, *, health_ping_interval: float = 30.0,
        max_work_item_size: int = DEFAULT_MAX_WORK_ITEM_SIZE,
        entity_request_version: int = 2,
    ) -> None:
        self._backend = engine.backend
        self._clock = engine.clock
        self._owner = engine.owner
        self._ping_interval = health_ping_interval
        self._max_work_item_size = max_work_item_size
        options, backend = engine.options, engine.backend
        self._orchestrations = _Queue(
            "orchestration", options.max_concurrent_orchestrations,
            int(options.orchestration_lease * 1_000_000), backend.orchestrations_ready,
            backend.lease_orchestrations, backend.abandon_orchestration,
            backend.renew_orchestration,
        )
        self._activities = _Queue(
            "activity", options.max_concurrent_activities,
            int(options.activity_lease * 1_000_000), backend.activities_ready,
            backend.lease_activities, backend.abandon_activity, backend.renew_activity,
        )
        self._entities = _Queue(
            "entity", options.max_concurrent_entities,
            int(options.orchestration_lease * 1_000_000), backend.entities_ready,
            partial(_lease_entities, backend, options.entity_batch_size),
            backend.abandon_entity, backend.renew_entity,
        )
        if entity_request_version not in (1, 2):
            raise InvalidInput(
                f"entity_request_version must be 1 or 2, not {entity_request_version}")
        self._entity_request_version = entity_request_version
        self._streams: list[WorkerStream] = []
        # Abandoned steps per instance, for the backoff of a worker that keeps giving one back.
        self._abandoned: dict[str, int] = {}

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._dispatch, self._orchestrations, self._offer_orchestration)
                nursery.start_soon(self._dispatch, self._activities, self._offer_activity)
                nursery.start_soon(self._dispatch, self._entities, self._offer_entity)
                for queue in self._queues:
                    nursery.start_soon(self._renew, queue)
                task_status.started()
        finally:
            held = [lease for queue in self._queues for lease in queue.leases.values()]
            await self._release(held)

    # -- streams ---------------------------------------------------------------------------

    @asynccontextmanager
    async def connect(self, request: pb.GetWorkItemsRequest) -> AsyncIterator[WorkerStream]:
        """A stream for one connected worker; leaving releases whatever it still holds."""
        stream = WorkerStream({
            # A hint of 0 (unset) leaves only the sidecar-wide limit.
            "orchestration": request.max_concurrent_orchestration_work_items
            or self._orchestrations.limit,
            "activity": request.max_concurrent_activity_work_items or self._activities.limit,
            "entity": request.max_concurrent_entity_work_items or self._entities.limit,
        }, work_item_filters(request))
        self._streams.append(stream)
        for queue in self._queues:
            queue.capacity.set()
            queue.ready.set()  # work that no stream connected so far takes may be this one's
        log.info("worker stream connected (%d connected)", len(self._streams))
        try:
            yield stream
        finally:
            self._streams.remove(stream)
            log.info("worker stream disconnected (%d connected); releasing the %d work items "
                     "it held", len(self._streams), len(stream.held))
            await self._release(list(stream.held.values()))

    @property
    def _queues(self) -> tuple[_Queue, ...]:
        return (self._orchestrations, self._activities, self._entities)

    async def serve_stream(self, request: pb.GetWorkItemsRequest, send: Send) -> None:
        async with self.connect(request) as stream:
            await stream.forward(send, self._ping_interval)

    # -- leasing and handing out -----------------------------------------------------------

    def _rooms(self, queue: _Queue) -> list[tuple[NameFilter | None, int]]:
        """Room for more work, per set of names that streams take it by. Work is leased by
        those names, so no stream is handed work it does not take, and work that no connected
        stream takes stays in the store, untouched, until one that does connects. Streams that
        take some names lease first, leaving the rest to those that take every name."""
        rooms: dict[NameFilter | None, int] = {}
        for stream in self._streams:
            names, free = stream.filters[queue.kind], stream.free(queue.kind)
            if free > 0 and names != frozenset():  # (an empty set of names takes nothing)
                rooms[names] = rooms.get(names, 0) + free
        return sorted(rooms.items(), key=lambda room: room[0] is None)

    def _room(self, queue: _Queue, names: NameFilter | None) -> int:
        return sum(max(0, s.free(queue.kind)) for s in self._streams
                   if s.filters[queue.kind] == names)

    def _pick(self, queue: _Queue, names: NameFilter | None) -> WorkerStream | None:
        """The stream with the most room of those taking work by `names`."""
        takers = (s for s in self._streams if s.filters[queue.kind] == names)
        best = max(takers, key=lambda s: s.free(queue.kind), default=None)
        return best if best is not None and best.free(queue.kind) > 0 else None

    async def _dispatch(
        self, queue: _Queue, offer: Callable[[Any, NameFilter | None], Awaitable[None]]
    ) -> None:
        while True:
            rooms = self._rooms(queue)
            if not rooms or len(queue.leases) >= queue.limit:
                await queue.capacity.wait()
                continue
            queue.ready.clear()
            if sum(room for _, room in rooms) > queue.limit - len(queue.leases):
                # The sidecar-wide limit is what is short, not the streams' room: the set of
                # names served longest ago goes first, or the first set would take every freed
                # slot while work that only the others take waits, however long it has waited.
                rooms.sort(key=lambda room: queue.served.get(room[0], 0))
            drained = True
            for names, room in rooms:
                free = min(room, queue.limit - len(queue.leases))
                if free <= 0:
                    drained = False
                    break
                batch = await queue.lease(self._owner, free, queue.lease_us, names)
                if batch:
                    queue.rounds += 1
                    queue.served[names] = queue.rounds
                pending = list(batch)
                try:
                    while pending:
                        try:
                            await offer(pending[0], names)
                        except Exception:
                            log.exception(
                                "could not hand out %s work item %r", queue.kind, pending[0]
                            )
                            await self._abandon(queue, pending[0], self._backoff(pending[0]))
                        pending.pop(0)
                finally:
                    for item in pending:  # cancelled midway: these were never handed out
                        await self._abandon(queue, item, 0)
                drained = drained and len(batch) < free
            if drained:
                # That was everything available to the connected streams. Newer work, a stream
                # connecting, or room for streams that had none (see `_drop`) sets `ready`.
                await queue.ready.wait()

    def _hold(self, lease: Lease, message: bytes) -> None:
        lease.queue.leases[lease.token] = lease
        lease.stream.put(lease, message)
        lease.queue.held.set()

    def _drop(self, lease: Lease) -> None:
        queue, stream = lease.queue, lease.stream
        del queue.leases[lease.token]
        stream.forget(lease)
        queue.capacity.set()
        if self._room(queue, stream.filters[queue.kind]) == 1:
            # Room where there was none: work may be waiting that only these streams take,
            # while the dispatcher, having served the others, waits for new work.
            queue.ready.set()

    async def _offer_orchestration(
        self, item: OrchestrationWorkItem, names: NameFilter | None
    ) -> None:
        if not item.events or item.status in TERMINAL:
            await self._backend.release_orchestration(item)
            return
        past = await self._backend.load_history(item.instance_id)
        now = self._clock.now_dt()
        new: list[tuple[pb.HistoryEvent, bytes]] = [h.step_opener(now)]
        for inbox_id, data in item.events:
            event = item.decoded.get(inbox_id)
            new.append((decode(pb.HistoryEvent, data) if event is None else event, data))
        stream = self._pick(self._orchestrations, names)
        if stream is None:  # every stream with room went away meanwhile
            await self._backend.abandon_orchestration(item, 0)
            return
        started = _execution_started(past, new)
        step = StepInput(
            new, started.execution_started if started is not None else None,
            _suspended_after(item.status, new),
        )
        message = orchestrator_work_item(
            item.lock_token, item.instance_id, item.execution_id, past, [data for _, data in new],
            orchestration_trace_context(started),
        )
        if len(message) > self._max_work_item_size:
            await self._fail_oversized_step(item, step, len(message))
            return
        self._hold(Lease(self._orchestrations, item, stream, step), message)

    async def _offer_activity(self, item: ActivityWorkItem, names: NameFilter | None) -> None:
        stream = self._pick(self._activities, names)
        if stream is None:
            await self._backend.abandon_activity(item, 0)
            return
        message = activity_work_item(item.lock_token, item)
        if len(message) > self._max_work_item_size:
            # Sent, it would break the worker's stream, and come back to break the next one.
            event = h.task_failed(self._clock.now_dt(), item.task_id, self._too_large(
                f"activity {item.name!r} (#{item.task_id}) with its input", len(message)
            ))
            await self._backend.complete_activity(item, encode(event), decoded=event)
            return
        self._hold(Lease(self._activities, item, stream), message)

    async def _fail_oversized_step(
        self, item: OrchestrationWorkItem, step: StepInput, size: int
    ) -> None:
        """Fail an orchestration whose history no worker would accept: sent, it would break
        the worker's stream, and come back to break the next one, for ever."""
        details = self._too_large(f"orchestration {item.instance_id!r} with its history", size)
        fail = pb.OrchestratorAction(id=-1, complete_orchestration=pb.CompleteOrchestrationAction(
            orchestration_status=pb.OrchestrationStatus.FAILED,
            failure_details=h.failure_to_pb(details),
        ))
        plan = apply_step(
            item.instance_id, item.execution_id, step.started, step.new_events, [fail],
            self._clock.now_dt(), suspended=step.suspended,
        )
        await self._backend.complete_orchestration(item, plan)
        log.warning("instance %s failed: %s", item.instance_id, details.message)

    def _too_large(self, what: str, size: int) -> FailureDetails:
        return FailureDetails(
            "WorkItemTooLarge",
            f"the work item for {what} is {size} bytes, over the {self._max_work_item_size} "
            "bytes a worker is sent at most (--max-work-item-size; gRPC clients accept 4 MiB "
            "unless configured for more)",
            is_non_retriable=True,
        )

    async def _offer_entity(self, item: EntityWorkItem, names: NameFilter | None) -> None:
        now = self._clock.now_dt()
        batch = plan_item(item, now)
        if not batch.operations:
            # Only lock messages (or nothing): no entity code to run, so no worker is needed.
            await self._backend.complete_entity(
                item, finish_batch(batch, pb.EntityBatchResult(entity_state=batch.state), now))
            return
        stream = self._pick(self._entities, names)
        if stream is None:
            await self._backend.abandon_entity(item, 0)
            return
        message = entity_work_item(item.lock_token, batch, version=self._entity_request_version)
        if len(message) > self._max_work_item_size:
            # Its state and inputs would break the worker's stream: the operations fail instead,
            # and the state stays as it was.
            details = self._too_large(f"entity {item.instance_id} with its state", len(message))
            failure = pb.OperationResult(failure=pb.OperationResultFailure(
                failure_details=h.failure_to_pb(details)))
            result = pb.EntityBatchResult(
                results=[failure] * len(batch.operations), entity_state=batch.state)
            await self._backend.complete_entity(item, finish_batch(batch, result, now))
            log.warning("entity %s: %s", item.instance_id, details.message)
            return
        self._hold(Lease(self._entities, item, stream, batch), message)

    async def _renew(self, queue: _Queue) -> None:
        """Keep the leases of work that connected workers still hold alive: a worker may take
        longer than a lease (a slow activity, or a step of a large orchestration), and only a
        worker that went away should lose its work."""
        while True:
            if not queue.leases:
                await queue.held.wait()
            await trio.sleep(queue.lease_us / 3_000_000)
            for lease in list(queue.leases.values()):
                if queue.leases.get(lease.token) is not lease:
                    continue  # completed or released while an earlier one was renewed
                try:
                    await queue.renew(lease.item, queue.lease_us)
                except LeaseLost as exc:
                    log.warning("%s", exc)

    # -- completions -----------------------------------------------------------------------

    async def _take(
        self, queue: _Queue, token: str, matches: Callable[[Item], bool], what: str
    ) -> Lease:
        """The lease a completion names; an empty token (older SDKs) is matched by `matches`."""
        if token:
            lease = queue.leases.get(token)
            if lease is not None and not matches(lease.item):
                # The SDKs never retry a refused completion: kept, the item would stay with
                # this worker for as long as it stays connected. It goes back, with backoff.
                await self._give_back(queue, token)
                raise InvalidInput(f"completion token {token!r} does not belong to {what}")
        else:
            lease = next((lease for lease in queue.leases.values() if matches(lease.item)), None)
        if lease is None:
            raise LeaseLost(
                f"no {queue.kind} work item for {what} is held under completion token {token!r}: "
                "it was already completed or abandoned, or released and dispatched again"
            )
        self._drop(lease)
        return lease

    async def complete_orchestration(self, response: pb.OrchestratorResponse) -> None:
        lease = await self._take(
            self._orchestrations, response.completion_token,
            lambda item: item.instance_id == response.instance_id,
            f"orchestration {response.instance_id!r}",
        )
        item, step = lease.item, lease.step
        assert isinstance(item, OrchestrationWorkItem) and step is not None

        async def commit() -> None:
            plan = apply_step(
                item.instance_id, item.execution_id, step.started, step.new_events,
                response.actions, self._clock.now_dt(),
                custom_status=response.custom_status, suspended=step.suspended,
            )
            await self._backend.complete_orchestration(item, plan)

        await self._settle(self._orchestrations, item, commit)
        self._abandoned.pop(item.instance_id, None)

    async def complete_activity(self, response: pb.ActivityResponse) -> None:
        lease = await self._take(
            self._activities, response.completion_token,
            lambda item: isinstance(item, ActivityWorkItem)
            and (item.instance_id, item.task_id) == (response.instance_id, response.task_id),
            f"activity #{response.task_id} of orchestration {response.instance_id!r}",
        )
        item = lease.item
        assert isinstance(item, ActivityWorkItem)
        now = self._clock.now_dt()
        if response.failure_details is not None:
            # Passed through as the worker sent them: the SDK reads its own details back.
            event = h.event(now, task_failed=pb.TaskFailedEvent(
                task_scheduled_id=item.task_id, failure_details=response.failure_details,
            ))
        else:
            event = h.task_completed(now, item.task_id, response.result)
        await self._settle(
            self._activities, item,
            partial(self._backend.complete_activity, item, encode(event), decoded=event),
        )

    async def complete_entity(self, result: pb.EntityBatchResult) -> None:
        if not result.completion_token:
            raise InvalidInput(
                "an entity batch result needs the completion token of its work item")
        lease = await self._take(self._entities, result.completion_token, lambda item: True,
                           "an entity batch")
        item, batch = lease.item, lease.step
        assert isinstance(item, EntityWorkItem) and isinstance(batch, EntityBatch)
        if result.failure_details is not None and not result.results:
            # The worker could not run the batch at all: it runs again, later.
            details = result.failure_details
            log.warning("worker failed the batch of entity %s: %s: %s", item.instance_id,
                        details.error_type, details.error_message)
            await self._abandon(self._entities, item, self._backoff(item))
            return

        async def commit() -> None:
            step = finish_batch(batch, result, self._clock.now_dt())
            for why in step.rejected:
                log.warning("dropped %s", why)
            await self._backend.complete_entity(item, step)

        await self._settle(self._entities, item, commit)
        self._abandoned.pop(item.instance_id, None)

    async def fail_entity(self, token: str, failure: pb.OperationResult) -> None:
        """Complete a held batch with `failure` for every operation, keeping its state."""
        lease = self._entities.leases.get(token)
        if lease is None:
            raise LeaseLost(f"no entity work item is held under completion token {token!r}")
        batch = lease.step
        assert isinstance(batch, EntityBatch)
        await self.complete_entity(pb.EntityBatchResult(
            results=[failure] * len(batch.operations), entity_state=batch.state,
            completion_token=token,
        ))

    async def abandon_entity(self, token: str) -> None:
        await self._give_back(self._entities, token)

    async def _settle(
        self, queue: _Queue, item: Any, commit: Callable[[], Awaitable[None]]
    ) -> None:
        """Commit a worker's result. If that fails (a bug, a full disk, a cancellation), the
        item goes back to the store with backoff; a lost lease means it is someone else's."""
        try:
            await commit()
        except LeaseLost:
            raise
        except BaseException:
            await self._abandon(queue, item, self._backoff(item))
            raise

    async def abandon_orchestration(self, token: str) -> None:
        await self._give_back(self._orchestrations, token)

    async def abandon_activity(self, token: str) -> None:
        await self._give_back(self._activities, token)

    async def _give_back(self, queue: _Queue, token: str) -> None:
        """Give an item back, with backoff; an unknown token is a no-op (already released)."""
        lease = queue.leases.get(token)
        if lease is not None:
            self._drop(lease)
            await self._abandon(queue, lease.item, self._backoff(lease.item))

    # -- releasing -------------------------------------------------------------------------

    def _backoff(self, item: Item) -> float:
        """Seconds before an item given back after a failure may be dispatched again."""
        if isinstance(item, ActivityWorkItem):
            return backoff(item.attempt)
        attempt = self._abandoned[item.instance_id] = self._abandoned.get(item.instance_id, 0) + 1
        return backoff(attempt)

    async def _release(self, leases: list[Lease]) -> None:
        """Give leases back for immediate re-dispatch (their worker went away)."""
        # Whoever drops a lease first releases it (a stream and the dispatcher may both try).
        mine = [lease for lease in leases if lease.queue.leases.get(lease.token) is lease]
        for lease in mine:
            self._drop(lease)
        for lease in mine:
            await self._abandon(lease.queue, lease.item, 0)

    async def _abandon(self, queue: _Queue, item: Any, delay: float) -> None:
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + RELEASE_TIMEOUT
            try:
                await queue.abandon(item, int(delay * 1_000_000))
            except Exception:
                log.exception("could not release %s work item of %s", queue.kind, item.instance_id)


async def _lease_entities(
    backend: Any, batch_size: int, owner: str, limit: int, lease_us: int,
    names: frozenset[str] | None,
) -> list[EntityWorkItem]:
    return await backend.lease_entities(owner, limit, lease_us, batch_size, names)


def _execution_started(
    past: list[bytes], new: list[tuple[pb.HistoryEvent, bytes]]
) -> pb.HistoryEvent | None:
    # executionStarted is the second event of a history, so this parses two events, not all.
    for data in past:
        event = decode(pb.HistoryEvent, data)
        if event.execution_started is not None:
            return event
    return next((e for e, _ in new if e.execution_started is not None), None)


def _suspended_after(status: int, new: list[tuple[pb.HistoryEvent, bytes]]) -> bool:
    suspended = status == _SUSPENDED
    for event, _ in new:
        if event.execution_suspended is not None:
            suspended = True
        elif event.execution_resumed is not None:
            suspended = False
    return suspended
