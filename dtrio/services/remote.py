"""The remote runner: work run by connected workers (the SDKs, through `dtrio.grpc`).

Each worker holds one stream. Running an item offers it to a stream taking its name, and waits
for the completion that names its lease token; the lifecycle then settles it as it settles local
work. A stream that goes away, or stops making progress, gives back what it holds at once. The
transport is injected: work items are encoded by the `encode` function given, and sent by the
`send` function of each stream.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio
from trio_util import AsyncValue, periodic

from ..errors import FailureDetails, InvalidInput, LeaseLost, StreamStalled, WorkItemTooLarge
from .lifecycle import GiveBack, Kind, Lifecycle, Settled

log = logging.getLogger("dtrio.grpc")

# Items a worker that states no limit of its own may hold of each kind: the official SDKs'
# default on one core.
DEFAULT_WORKER_LIMIT = 100

# (kind name, item, what the kind opened) -> the encoded work item
Encode = Callable[[str, Any, Any], Awaitable[bytes]]
Send = Callable[[bytes], Awaitable[None]]


@dataclass(eq=False, slots=True)
class _Handoff:
    """An item with a worker, until the worker completes it or gives it back."""

    kind: str
    item: Any
    work: Any
    stream: WorkerStream
    since: float = field(default_factory=trio.current_time)
    answered: trio.Event = field(default_factory=trio.Event)  # settled, or to be given back
    outcome: Settled | None = None
    error: BaseException | None = None  # why it was not settled


class WorkerStream:
    """One connected worker: what it takes (per kind, how many and which names; None: all),
    what it holds, and its outbox (None in it ends the stream)."""

    def __init__(self, limits: Mapping[str, int], filters: Mapping[str, Any]) -> None:
        self.limits, self.filters = dict(limits), dict(filters)
        self.counts = dict.fromkeys(self.limits, 0)
        self.held: dict[str, _Handoff] = {}
        self.progress = trio.current_time()  # when it last answered for an item
        self.outbox, self._queued = trio.open_memory_channel[bytes | None](math.inf)

    def free(self, kind: str) -> int:
        return self.limits[kind] - self.counts[kind]

    async def forward(self, send: Send, ping: bytes, ping_interval: float, stall: float) -> None:
        """Write work items as they come, and a health ping after each silence. A write that
        does not drain within `stall` seconds means the worker stopped reading."""
        while True:
            try:
                # Work already queued needs no timeout (and no cancel scope per message).
                message = self._queued.receive_nowait()
            except trio.WouldBlock:
                message = ping
                with trio.move_on_after(ping_interval):
                    message = await self._queued.receive()
            if message is None:
                return
            with trio.move_on_after(stall) as scope:
                await send(message)
            if scope.cancelled_caught:
                raise StreamStalled(f"the worker read nothing for {stall:g} s")


class RemoteWork:
    """Connected worker streams, and one runner per kind of work that hands items to them."""

    def __init__(
        self, encode: Encode, *, ping: bytes, ping_interval: float, stall_timeout: float,
    ) -> None:
        self._encode, self._ping, self._ping_interval = encode, ping, ping_interval
        self._stall = stall_timeout
        self._streams: list[WorkerStream] = []
        self.connected_streams = AsyncValue(0)
        self._runners: dict[str, RemoteRunner] = {}
        self._offered: dict[tuple[str, str], _Handoff] = {}  # by (kind, lease token)
        self._closing = False

    def runner(self, kind: Kind[Any, Any, Any]) -> RemoteRunner:
        runner = self._runners[kind.name] = RemoteRunner(self, kind)
        return runner

    def bind(self, lifecycles: Mapping[str, Lifecycle[Any, Any, Any]]) -> None:
        """The lifecycles the runners serve, told whenever a worker's room grows."""
        for name, lifecycle in lifecycles.items():
            self._runners[name].lifecycle = lifecycle

    def _room_grew(self, stream: WorkerStream, kind: str) -> None:
        lifecycle = self._runners[kind].lifecycle
        if lifecycle is not None:
            lifecycle.room_changed(stream.filters.get(kind))

    # -- streams ---------------------------------------------------------------------------

    @asynccontextmanager
    async def connect(
        self, hints: Mapping[str, int], filters: Mapping[str, Any]
    ) -> AsyncIterator[WorkerStream]:
        """A stream for one worker; leaving gives back whatever it still holds. `hints` are the
        most items of each kind the worker takes at once (0: unstated)."""
        stream = WorkerStream(
            {kind: hints.get(kind) or DEFAULT_WORKER_LIMIT for kind in self._runners}, filters)
        self._streams.append(stream)
        self.connected_streams.value = len(self._streams)
        for kind in self._runners:
            self._room_grew(stream, kind)
        log.info("worker stream connected (%d connected)", len(self._streams))
        try:
            yield stream
        finally:
            self._streams.remove(stream)
            self.connected_streams.value = len(self._streams)
            log.info("worker stream disconnected (%d connected); giving back the %d work "
                     "items it held", len(self._streams), len(stream.held))
            for token, handoff in list(stream.held.items()):
                self._answer(handoff.kind, token, GiveBack(
                    "its worker went away", with_backoff=False))

    async def serve_stream(
        self, hints: Mapping[str, int], filters: Mapping[str, Any], send: Send
    ) -> None:
        """Feed one worker's stream until it goes away, stalls, or the sidecar closes."""
        if self._closing:
            return
        async with self.connect(hints, filters) as stream, trio.open_nursery() as nursery:
            nursery.start_soon(self._watch, stream)
            try:
                await stream.forward(send, self._ping, self._ping_interval, self._stall)
            except StreamStalled as exc:
                log.warning("worker stream treated as gone: %s; its %d work items go to other "
                            "workers", exc, len(stream.held))
                raise
            nursery.cancel_scope.cancel()

    async def _watch(self, stream: WorkerStream) -> None:
        """A stream counts as gone when it holds orchestration steps or entity batches and has
        answered for nothing for the stall timeout. (An activity may run for hours; a step
        may not.)"""
        async for _ in periodic(self._stall / 4):
            now = trio.current_time()
            oldest = min((h.since for h in stream.held.values() if h.kind != "activity"),
                         default=now)
            if now - max(oldest, stream.progress) >= self._stall:
                raise StreamStalled(
                    f"it finished no work item for {self._stall:g} s while holding some")

    def close(self) -> None:
        """End every stream once its queued items are sent, and refuse new ones."""
        self._closing = True
        for stream in self._streams:
            stream.outbox.send_nowait(None)

    # -- answers from workers --------------------------------------------------------------

    async def complete(
        self, kind: str, token: str, result: Any, *, matches: Callable[[Any], bool] = bool,
        what: str = "", failed: FailureDetails | None = None,
    ) -> None:
        """Hand a worker's result to its item (or, with `failed`, fail the item instead), and
        wait until that is committed or refused. An empty token (older SDKs) is matched by
        `matches`."""
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
        runner = self._runners[kind].kind
        if failed is not None:
            result = runner.failure(handoff.item, handoff.work, failed)
        self._release(kind, token)
        # Settled here, in the worker's own call: it answers as soon as its result is stored.
        try:
            handoff.outcome = Settled(await runner.settle(handoff.item, handoff.work, result))
        except BaseException as exc:
            handoff.error = exc if isinstance(exc, Exception) else GiveBack(
                "its completion was cut short", with_backoff=False)
            raise
        finally:
            handoff.answered.set()

    def give_back(self, kind: str, token: str, why: str) -> None:
        """A worker gives an item back: it goes back to the store with backoff. An unknown
        token is a no-op (already given back, or released when its stream went away)."""
        self._answer(kind, token, GiveBack(why, with_backoff=True))

    def _answer(self, kind: str, token: str, given_back: GiveBack) -> None:
        handoff = self._release(kind, token)
        if handoff is not None:
            handoff.error = given_back
            handoff.answered.set()

    def _release(self, kind: str, token: str) -> _Handoff | None:
        """The item is no longer the worker's to answer for."""
        handoff = self._offered.pop((kind, token), None)
        if handoff is not None:
            stream = handoff.stream
            del stream.held[token]
            stream.counts[kind] -= 1
            stream.progress = trio.current_time()
            self._room_grew(stream, kind)
        return handoff

    # -- offering --------------------------------------------------------------------------

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
        """Hand an item to a stream taking `names`: of those with room, the one holding the
        fewest (so work spreads over the workers). The worker's result, once it answers."""
        takers = [s for s in self._streams
                  if s.filters.get(kind.name) == names and s.free(kind.name) > 0]
        if not takers:
            raise GiveBack("no connected worker has room for it", with_backoff=False)
        stream = min(takers, key=lambda s: (s.counts[kind.name], -s.free(kind.name)))
        try:
            message = await self._encode(kind.name, item, work)
        except WorkItemTooLarge as exc:
            # Sent, it would break the worker's stream, and come back to break the next one.
            log.warning("%s failed: %s", kind.describe(item), exc)
            return kind.failure(item, work, FailureDetails(
                "WorkItemTooLarge", str(exc), is_non_retriable=True))
        if stream not in self._streams or stream.free(kind.name) <= 0:
            raise GiveBack("its worker went away", with_backoff=False)
        token = kind.token(item)
        handoff = self._offered[kind.name, token] = stream.held[token] = _Handoff(
            kind.name, item, work, stream)
        stream.counts[kind.name] += 1
        stream.outbox.send_nowait(message)
        try:
            await handoff.answered.wait()
        finally:
            # Cancelled (shutting down), it is no longer this worker's either.
            if self._offered.get((kind.name, token)) is handoff:
                self._release(kind.name, token)
        if handoff.error is not None:
            raise handoff.error
        return handoff.outcome


class RemoteRunner:
    """Runs items of one kind by handing them to connected workers; a worker's completion is
    settled in its own call, so the item comes back settled."""

    def __init__(self, remote: RemoteWork, kind: Kind[Any, Any, Any]) -> None:
        self._remote = remote
        self.kind = kind
        self.lifecycle: Lifecycle[Any, Any, Any] | None = None

    def rooms(self) -> list[tuple[Any, float]]:
        return self._remote.rooms(self.kind.name)

    async def run(self, item: Any, work: Any, names: Any) -> Any:
        return await self._remote.offer(self.kind, item, work, names)

    def settled(self, item: Any, work: Any, result: Any, outcome: Any) -> None:
        pass

    def failed(self, item: Any, error: BaseException) -> None:
        pass
