"""The remote runner: work run by connected workers (the SDKs, through `dtrio.grpc`).

Each worker holds one stream. Running an item offers it to the stream with the most room among
those taking its name, and waits for the completion that names its lease token; the lifecycle
then settles it as it settles local work. A stream that goes away, or stops making progress,
gives back what it holds at once. The transport is injected: work items are encoded by the
`encode` function given, and sent by the `send` function of each stream.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import trio
from trio_util import AsyncValue, periodic

from ..errors import FailureDetails, InvalidInput, LeaseLost, StreamStalled, WorkItemTooLarge
from .lifecycle import GiveBack, Kind, Lifecycle

log = logging.getLogger("dtrio.grpc")

# Items a worker that states no limit of its own may hold of each kind: the official SDKs'
# default on one core.
DEFAULT_WORKER_LIMIT = 100

# (kind name, item, what the kind opened) -> the encoded work item
Encode = Callable[[str, Any, Any], Awaitable[bytes]]
Send = Callable[[bytes], Awaitable[None]]


class _Handoff:
    """An item offered to a stream, until its worker completes or gives it back."""

    __slots__ = ("delivered", "error", "given_back", "item", "kind", "result", "settled",
                 "stream", "since", "work")

    def __init__(self, kind: str, item: Any, work: Any, stream: WorkerStream) -> None:
        self.kind, self.item, self.work, self.stream = kind, item, work, stream
        self.since = trio.current_time()
        self.delivered = trio.Event()
        self.result: Any = None
        self.given_back: GiveBack | None = None
        self.settled = trio.Event()
        self.error: BaseException | None = None


class WorkerStream:
    """One connected worker: how much it may hold of each kind, what it holds, which names of
    each kind it takes (None: all), and its outbox."""

    def __init__(self, limits: Mapping[str, int], filters: Mapping[str, Any]) -> None:
        self.limits = dict(limits)
        self.filters = dict(filters)
        self.held: dict[str, _Handoff] = {}
        self.counts = dict.fromkeys(self.limits, 0)
        self.progress = trio.current_time()  # when it last completed or gave back an item
        self._send, self._outbox = trio.open_memory_channel[bytes | None](math.inf)

    def free(self, kind: str) -> int:
        return self.limits[kind] - self.counts[kind]

    def hold(self, token: str, handoff: _Handoff, message: bytes) -> None:
        self.held[token] = handoff
        self.counts[handoff.kind] += 1
        self._send.send_nowait(message)

    def drop(self, token: str) -> _Handoff | None:
        handoff = self.held.pop(token, None)
        if handoff is not None:
            self.counts[handoff.kind] -= 1
        return handoff

    def end(self) -> None:
        """End the stream once what is queued has been sent."""
        self._send.send_nowait(None)

    async def forward(self, send: Send, ping: bytes, ping_interval: float, stall: float) -> None:
        """Write work items as they come, and a health ping after each silence. A write that
        does not drain within `stall` seconds means the worker stopped reading."""
        while True:
            try:
                # Work already queued needs no timeout (and no cancel scope per message).
                message = self._outbox.receive_nowait()
            except trio.WouldBlock:
                message = ping
                with trio.move_on_after(ping_interval):
                    message = await self._outbox.receive()
            if message is None:
                return
            with trio.move_on_after(stall) as scope:
                await send(message)
            if scope.cancelled_caught:
                raise StreamStalled(f"the worker read nothing for {stall:g} s")

    async def watch(self, stalled: Callable[[WorkerStream], str | None], every: float) -> None:
        async for _ in periodic(every):
            why = stalled(self)
            if why is not None:
                raise StreamStalled(why)


class RemoteWork:
    """Connected worker streams, and one runner per kind of work that hands items to them."""

    def __init__(
        self, encode: Encode, *, ping: bytes, ping_interval: float, stall_timeout: float,
    ) -> None:
        self._encode = encode
        self._ping = ping
        self._ping_interval = ping_interval
        self._stall = stall_timeout
        self._streams: list[WorkerStream] = []
        self.connected_streams = AsyncValue(0)
        self._runners: dict[str, RemoteRunner] = {}
        self._closing = False

    def runner(self, kind: Kind[Any, Any, Any]) -> RemoteRunner:
        runner = self._runners[kind.name] = RemoteRunner(self, kind)
        return runner

    def bind(self, lifecycles: Mapping[str, Lifecycle[Any, Any, Any]]) -> None:
        """The lifecycles the runners serve, told whenever a worker's room grows."""
        for name, lifecycle in lifecycles.items():
            self._runners[name].lifecycle = lifecycle

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
        for name, runner in self._runners.items():
            runner.room_grew(stream.filters.get(name))
        log.info("worker stream connected (%d connected)", len(self._streams))
        try:
            yield stream
        finally:
            self._streams.remove(stream)
            self.connected_streams.value = len(self._streams)
            log.info("worker stream disconnected (%d connected); giving back the %d work "
                     "items it held", len(self._streams), len(stream.held))
            for token, handoff in list(stream.held.items()):
                self._runners[handoff.kind].give_back(token, GiveBack(
                    "its worker went away", with_backoff=False))

    async def serve_stream(
        self, hints: Mapping[str, int], filters: Mapping[str, Any], send: Send
    ) -> None:
        """Feed one worker's stream until it goes away, stalls, or the sidecar closes."""
        if self._closing:
            return
        async with self.connect(hints, filters) as stream:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(stream.watch, self._stalled, self._stall / 4)
                    await stream.forward(send, self._ping, self._ping_interval, self._stall)
                    nursery.cancel_scope.cancel()
            except StreamStalled as exc:
                log.warning("worker stream treated as gone: %s; its %d work items go to other "
                            "workers", exc, len(stream.held))
                raise

    def _stalled(self, stream: WorkerStream) -> str | None:
        """Why a stream counts as gone: it holds orchestration steps or entity batches and has
        finished nothing for a stall timeout. (An activity may run for hours; a step may not.)"""
        now = trio.current_time()
        if now - stream.progress < self._stall:
            return None
        oldest = min((h.since for h in stream.held.values() if h.kind != "activity"),
                     default=None)
        if oldest is None or now - oldest < self._stall:
            return None
        return f"it finished no work item for {self._stall:g} s while holding some"

    def close(self) -> None:
        """End every stream once its queued items are sent, and refuse new ones."""
        self._closing = True
        for stream in self._streams:
            stream.end()

    # -- completions -----------------------------------------------------------------------

    async def complete(
        self, kind: str, token: str, result: Any, *, matches: Callable[[Any], bool] = bool,
        what: str = "",
    ) -> None:
        """Hand a worker's result to its item, and wait until it is committed (or refused)."""
        runner = self._runners[kind]
        handoff = runner.deliver(self._token(runner, token, matches, what), result)
        await handoff.settled.wait()
        if handoff.error is not None:
            raise handoff.error

    async def fail(
        self, kind: str, token: str, details: FailureDetails, *,
        matches: Callable[[Any], bool] = bool, what: str = "",
    ) -> None:
        """Settle a held item as failed with `details` (its result could not be used)."""
        runner = self._runners[kind]
        token = self._token(runner, token, matches, what)
        handoff = runner.offered[token]
        await self.complete(kind, token, runner.kind.failure(handoff.item, handoff.work, details))

    def give_back(self, kind: str, token: str, why: str) -> None:
        """A worker gives an item back: it goes back to the store with backoff. An unknown
        token is a no-op (already given back, or released when its stream went away)."""
        self._runners[kind].give_back(token, GiveBack(why, with_backoff=True))

    def _token(
        self, runner: RemoteRunner, token: str, matches: Callable[[Any], bool], what: str
    ) -> str:
        """The token of the item a completion names; an empty token (older SDKs) is matched
        by `matches`."""
        kind = runner.kind.name
        if token:
            handoff = runner.offered.get(token)
            if handoff is not None and not matches(handoff.item):
                # The SDKs never retry a refused completion: kept, the item would stay with
                # this worker for as long as it stays connected. It goes back, with backoff.
                self.give_back(kind, token, "its completion named another work item")
                raise InvalidInput(f"completion token {token!r} does not belong to {what}")
        else:
            token, handoff = next(
                ((t, h) for t, h in runner.offered.items() if matches(h.item)), ("", None))
        if handoff is None:
            raise LeaseLost(
                f"no {kind} work item for {what or 'this completion'} is held under completion "
                f"token {token!r}: it was already completed or abandoned, or released and "
                "dispatched again"
            )
        return token

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

    def pick(self, kind: str, names: Any) -> WorkerStream | None:
        """Of the streams with room taking `kind` by `names`, the one holding the fewest items
        of it (so work spreads over the workers), then the one with the most room."""
        takers = [s for s in self._streams if s.filters.get(kind) == names and s.free(kind) > 0]
        return min(takers, key=lambda s: (s.counts[kind], -s.free(kind)), default=None)

    async def encode(self, kind: str, item: Any, work: Any) -> bytes:
        return await self._encode(kind, item, work)

    def connected(self, stream: WorkerStream) -> bool:
        return stream in self._streams


class RemoteRunner:
    """Runs items of one kind by handing them to connected workers."""

    def __init__(self, remote: RemoteWork, kind: Kind[Any, Any, Any]) -> None:
        self._remote = remote
        self.kind = kind
        self.lifecycle: Lifecycle[Any, Any, Any] | None = None
        self.offered: dict[str, _Handoff] = {}  # with a worker, by lease token
        self._settling: dict[str, _Handoff] = {}  # delivered, being committed

    def rooms(self) -> list[tuple[Any, float]]:
        return self._remote.rooms(self.kind.name)

    def room_grew(self, names: Any) -> None:
        if self.lifecycle is not None:
            self.lifecycle.room_changed(names)

    async def run(self, item: Any, work: Any, names: Any) -> Any:
        kind = self.kind
        stream = self._remote.pick(kind.name, names)
        if stream is None:
            raise GiveBack("no connected worker has room for it", with_backoff=False)
        try:
            message = await self._remote.encode(kind.name, item, work)
        except WorkItemTooLarge as exc:
            # Sent, it would break the worker's stream, and come back to break the next one.
            log.warning("%s failed: %s", kind.describe(item), exc)
            return kind.failure(item, work, FailureDetails(
                "WorkItemTooLarge", str(exc), is_non_retriable=True))
        if not self._remote.connected(stream) or stream.free(kind.name) <= 0:
            raise GiveBack("its worker went away", with_backoff=False)
        token = kind.token(item)
        handoff = self.offered[token] = _Handoff(kind.name, item, work, stream)
        stream.hold(token, handoff, message)
        try:
            await handoff.delivered.wait()
        finally:
            # Cancelled (shutting down), it is no longer this worker's either.
            if self.offered.get(token) is handoff:
                del self.offered[token]
                stream.drop(token)
        if handoff.given_back is not None:
            raise handoff.given_back
        self._settling[token] = handoff
        return handoff.result

    def deliver(self, token: str, result: Any) -> _Handoff:
        handoff = self._release(token)
        assert handoff is not None
        handoff.stream.progress = trio.current_time()
        handoff.result = result
        handoff.delivered.set()
        return handoff

    def give_back(self, token: str, why: GiveBack) -> None:
        handoff = self._release(token)
        if handoff is not None:
            handoff.given_back = why
            handoff.delivered.set()

    def _release(self, token: str) -> _Handoff | None:
        handoff = self.offered.pop(token, None)
        if handoff is not None:
            handoff.stream.drop(token)
            self.room_grew(handoff.stream.filters.get(self.kind.name))
        return handoff

    def settled(self, item: Any, work: Any, result: Any, outcome: Any) -> None:
        handoff = self._settling.pop(self.kind.token(item), None)
        if handoff is not None:
            handoff.settled.set()

    def failed(self, item: Any, error: BaseException) -> None:
        handoff = self._settling.pop(self.kind.token(item), None)
        if handoff is not None:
            handoff.error = error if isinstance(error, Exception) else LeaseLost(
                f"{self.kind.describe(item)} was not saved: the sidecar is shutting down")
            handoff.settled.set()
