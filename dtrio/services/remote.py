"""The remote runner: work run by connected workers (the SDKs, through `dtrio.grpc`).

Each worker holds one stream. Running an item offers it to a stream taking its name, and waits
for the completion that names its lease token; the completion is settled in the worker's own
call. A stream that goes away, or stops making progress, gives back what it holds at once. The
transport is injected: `encode` makes a work item's message, and the transport's `forward`
writes a stream's outbox to its worker.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio
from trio_util import AsyncValue, periodic

from ..errors import FailureDetails, InvalidInput, LeaseLost, StreamStalled, WorkItemTooLarge
from .lifecycle import GiveBack, Kind, Lifecycle, Runner, Settled

log = logging.getLogger("dtrio.grpc")

# Items a worker that states no limit of its own may hold of each kind: the official SDKs'
# default on one core.
DEFAULT_WORKER_LIMIT = 100

# (kind name, item, what the kind opened) -> the encoded work item
Encode = Callable[[str, Any, Any], Awaitable[bytes]]


@dataclass(eq=False, slots=True)
class _Handoff:
    """An item with a worker, until the worker completes it or gives it back."""

    kind: Kind[Any, Any, Any]
    item: Any
    work: Any
    stream: WorkerStream
    since: float = field(default_factory=trio.current_time)
    answered: trio.Event = field(default_factory=trio.Event)
    outcome: Settled | BaseException | None = None  # the exception: why it was not settled


class WorkerStream:
    """One connected worker: what it takes (per kind, how many and which names; None: all),
    what it holds, and its outbox of work items (None in it ends the stream)."""

    def __init__(self, limits: Mapping[str, int], filters: Mapping[str, Any]) -> None:
        self.limits, self.filters = dict(limits), dict(filters)
        self.counts = dict.fromkeys(self.limits, 0)
        self.held: dict[str, _Handoff] = {}
        self.progress = trio.current_time()  # when it last answered for an item
        self.outbox, self.queued = trio.open_memory_channel[bytes | None](math.inf)

    def free(self, kind: str) -> int:
        return self.limits[kind] - self.counts[kind]


class RemoteWork:
    """Connected worker streams, and one runner per kind of work that hands items to them."""

    def __init__(self, encode: Encode, *, stall_timeout: float) -> None:
        self._encode, self._stall = encode, stall_timeout
        self._streams: list[WorkerStream] = []
        self.connected_streams = AsyncValue(0)
        self._lifecycles: Mapping[str, Lifecycle[Any, Any, Any]] = {}
        self._offered: dict[tuple[str, str], _Handoff] = {}  # by (kind, lease token)
        self._closing = False

    def bind(self, lifecycles: Mapping[str, Lifecycle[Any, Any, Any]]) -> None:
        """The lifecycles the runners serve, told whenever a worker's room grows."""
        self._lifecycles = lifecycles

    def _room_grew(self, stream: WorkerStream, kind: str) -> None:
        if kind in self._lifecycles:
            self._lifecycles[kind].room_changed(stream.filters.get(kind))

    async def serve_stream(
        self, hints: Mapping[str, int], filters: Mapping[str, Any],
        forward: Callable[[WorkerStream], Awaitable[None]],
    ) -> None:
        """Feed one worker's stream (`forward` writes its outbox) until it goes away, stalls,
        or the sidecar closes; then give back whatever it still holds. `hints` are the most
        items of each kind the worker takes at once (0: unstated)."""
        if self._closing:
            return
        stream = WorkerStream(
            {kind: hints.get(kind) or DEFAULT_WORKER_LIMIT for kind in self._lifecycles}, filters)
        self._streams.append(stream)
        self.connected_streams.value = len(self._streams)
        log.info("worker stream connected (%d connected)", len(self._streams))
        try:
            for kind in self._lifecycles:
                self._room_grew(stream, kind)  # (work it takes may be waiting in the store)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch, stream)
                await forward(stream)
                nursery.cancel_scope.cancel()
        except StreamStalled as exc:
            log.warning("worker stream treated as gone: %s", exc)
            raise
        finally:
            self._streams.remove(stream)
            self.connected_streams.value = len(self._streams)
            log.info("worker stream disconnected (%d connected); giving back the %d work "
                     "items it held", len(self._streams), len(stream.held))
            for handoff in list(stream.held.values()):
                self._answer(handoff, GiveBack("its worker went away", with_backoff=False))

    async def _watch(self, stream: WorkerStream) -> None:
        """A stream counts as gone when it holds orchestration steps or entity batches and has
        answered for nothing for the stall timeout. (An activity may run for hours; a step
        may not.)"""
        async for _ in periodic(self._stall / 4):
            oldest = min((h.since for h in stream.held.values() if h.kind.name != "activity"),
                         default=math.inf)
            if trio.current_time() - max(oldest, stream.progress) >= self._stall:
                raise StreamStalled(
                    f"it finished no work item for {self._stall:g} s while holding some")

    def close(self) -> None:
        """End every stream once its queued items are sent, and refuse new ones."""
        self._closing = True
        for stream in self._streams:
            stream.outbox.send_nowait(None)

    async def complete(
        self, kind: str, token: str, result: Any, *, matches: Callable[[Any], bool] = bool,
        what: str = "", failed: FailureDetails | None = None,
    ) -> None:
        """Settle a worker's result for its item (or, with `failed`, fail the item) and return
        once that is committed or refused. An empty token (older SDKs) is found by `matches`."""
        if not token:
            token = next((t for (k, t), h in self._offered.items()
                          if k == kind and matches(h.item)), "")
        handoff = self._offered.get((kind, token))
        if handoff is None:
            raise LeaseLost(
                f"no {kind} work item for {what or 'this completion'} is held under completion "
                f"token {token!r}: it was already completed or abandoned, or released and "
                "dispatched again")
        if not matches(handoff.item):
            # The SDKs never retry a refused completion: kept, the item would stay with this
            # worker for as long as it stays connected. It goes back, with backoff.
            self.give_back(kind, token, "its completion named another work item")
            raise InvalidInput(f"completion token {token!r} does not belong to {what}")
        item, work = handoff.item, handoff.work
        if failed is not None:
            result = handoff.kind.failure(item, work, failed)
        self._release(handoff)
        try:
            handoff.outcome = Settled(await handoff.kind.settle(item, work, result))
        except BaseException as exc:
            handoff.outcome = exc if isinstance(exc, Exception) else GiveBack(
                "its completion was cut short", with_backoff=False)
            raise
        finally:
            handoff.answered.set()

    def give_back(self, kind: str, token: str, why: str) -> None:
        """A worker gives an item back: it goes back to the store with backoff. An unknown
        token is a no-op (already given back, or released when its stream went away)."""
        if (handoff := self._offered.get((kind, token))) is not None:
            self._answer(handoff, GiveBack(why, with_backoff=True))

    def _answer(self, handoff: _Handoff, given_back: GiveBack) -> None:
        self._release(handoff)
        handoff.outcome = given_back
        handoff.answered.set()

    def _release(self, handoff: _Handoff) -> None:
        """The item is no longer the worker's to answer for."""
        kind, token, stream = handoff.kind.name, handoff.kind.token(handoff.item), handoff.stream
        if self._offered.pop((kind, token), None) is handoff:
            del stream.held[token]
            stream.counts[kind] -= 1
            stream.progress = trio.current_time()
            self._room_grew(stream, kind)

    def rooms(self, kind: str) -> list[tuple[Any, float]]:
        """Room per name filter that streams take `kind` by. Work is leased by those names, so
        no stream is handed work it does not take, and work no connected stream takes stays in
        the store. Streams that take some names lease first, leaving the rest to the others."""
        rooms: dict[Any, float] = {}
        for stream in self._streams:
            names, free = stream.filters.get(kind), stream.free(kind)
            if free > 0 and names != frozenset():  # (an empty set of names takes nothing)
                rooms[names] = rooms.get(names, 0) + free
        return sorted(rooms.items(), key=lambda room: room[0] is None)

    async def offer(self, kind: Kind[Any, Any, Any], item: Any, work: Any, names: Any) -> Any:
        """Hand an item to the stream taking `names` that holds the fewest (so work spreads
        over the workers); the item settled, once its worker answers."""
        def takers() -> list[WorkerStream]:
            return [s for s in self._streams
                    if s.filters.get(kind.name) == names and s.free(kind.name) > 0]
        if not takers():
            raise GiveBack("no connected worker has room for it", with_backoff=False)
        try:
            message = await self._encode(kind.name, item, work)
        except WorkItemTooLarge as exc:
            # Sent, it would break the worker's stream, and come back to break the next one.
            log.warning("%s failed: %s", kind.describe(item), exc)
            return kind.failure(item, work, FailureDetails(
                "WorkItemTooLarge", str(exc), is_non_retriable=True))
        streams = takers()  # again: encoding may have let a worker go away or fill up
        if not streams:
            raise GiveBack("its worker went away", with_backoff=False)
        stream = min(streams, key=lambda s: (s.counts[kind.name], -s.free(kind.name)))
        token = kind.token(item)
        handoff = self._offered[kind.name, token] = stream.held[token] = _Handoff(
            kind, item, work, stream)
        stream.counts[kind.name] += 1
        stream.outbox.send_nowait(message)
        try:
            await handoff.answered.wait()
        finally:
            self._release(handoff)  # cancelled (shutting down): no longer the worker's either
        if isinstance(handoff.outcome, BaseException):
            raise handoff.outcome
        return handoff.outcome


class RemoteRunner(Runner[Any, Any, Any]):
    """Runs items of one kind by handing them to connected workers."""

    def __init__(self, remote: RemoteWork, kind: Kind[Any, Any, Any]) -> None:
        self.remote, self.kind = remote, kind

    def rooms(self) -> list[tuple[Any, float]]:
        return self.remote.rooms(self.kind.name)

    async def run(self, item: Any, work: Any, names: Any) -> Any:
        return await self.remote.offer(self.kind, item, work, names)
