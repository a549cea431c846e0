"""The one lifecycle of a work item, for every kind and every runner:

    lease (in batches, by name filter) -> run -> settle, or give back with backoff

One loop leases up to the room its runner has, starts a task per item, and waits for more work
or more room. Each item's task runs it and settles it (a commit that checks the lease), or gives
it back in a `finally`, shielded and bounded. While an item is held its lease is renewed. The
kind (`kinds.py`) knows the storage of its items; the runner (`local.py`, `remote.py`) knows
how to run them. Storage errors back off and retry: the loop never dies of a full disk.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import trio
from trio_util import AsyncBool

from ..errors import LeaseLost, StorageError

log = logging.getLogger("dtrio.engine")

Item = TypeVar("Item")
Work = TypeVar("Work")
Result = TypeVar("Result")
Names = Hashable | None  # a worker's name filter for one kind (None: every name)

# How long one attempt to give an item back may take (it is shielded from cancellation).
RELEASE_TIMEOUT = 5.0
# Longest wait between attempts to give back an item the store refused to take back.
RELEASE_RETRY_CAP = 5.0
# Failure counts kept for backoff, for this many items at most (the oldest are forgotten).
_FAILURES_KEPT = 10_000


def backoff(attempt: int, *, first: float = 0.1, cap: float = 60.0) -> float:
    return min(cap, first * 2 ** max(0, attempt - 1))


class GiveBack(Exception):
    """Raised by a runner: the item goes back to the store unsettled, to be leased again at once
    (its worker went away) or after its backoff (its worker gave it back)."""

    def __init__(self, why: str, *, with_backoff: bool) -> None:
        super().__init__(why)
        self.with_backoff = with_backoff


@dataclass(frozen=True, slots=True)
class Settled:
    """What a runner returns for an item settled while it ran (a worker's completion is
    settled in the worker's own call): `outcome` is what `Kind.settle` returned."""

    outcome: Any


class Kind(Protocol[Item, Work, Result]):
    """The storage side of one kind of work item."""

    name: str  # "orchestration", "activity" or "entity"
    lease_s: float

    def token(self, item: Item) -> str: ...

    def key(self, item: Item) -> str:
        """What failures are counted by, for backoff."""
        ...

    def describe(self, item: Item) -> str: ...

    async def lease(self, owner: str, limit: int, lease_us: int, names: Any) -> list[Item]: ...

    def open(self, item: Item) -> Work | None:
        """What a runner runs, or None when the item turned out to need no runner."""
        ...

    async def skip(self, item: Item) -> None:
        """Settle (or give back) an item that `open` found needs no runner."""
        ...

    async def settle(self, item: Item, work: Work, result: Result) -> Any:
        """Commit `result`, checking the lease (`LeaseLost` if it was lost, changing nothing);
        returns what was committed."""
        ...

    async def renew(self, item: Item, lease_us: int) -> None: ...

    async def give_back(self, item: Item, delay_us: int) -> None: ...


class Runner(Protocol[Item, Work, Result]):
    """How items of one kind are run: in this process, or by a connected worker."""

    def rooms(self) -> list[tuple[Any, float]]:
        """Room for more items, per name filter that items are leased by (None: every name)."""
        ...

    async def run(self, item: Item, work: Work, names: Any) -> Result: ...

    def settled(self, item: Item, work: Work, result: Result, outcome: Any) -> None:
        """Told after `result` was committed (runners that subclass this may leave it out)."""

    def failed(self, item: Item, error: BaseException) -> None:
        """Told when a result the runner gave could not be committed."""


class Lifecycle(Generic[Item, Work, Result]):
    def __init__(
        self, kind: Kind[Item, Work, Result], runner: Runner[Item, Work, Result],
        ready: AsyncBool, *, owner: str, limit: int,
    ) -> None:
        self.kind = kind
        self.runner = runner
        self.limit = limit
        self._ready = ready  # the store may hold work of this kind
        self._owner = owner
        self._lease_us = int(kind.lease_s * 1_000_000)
        self.in_flight = 0
        # Worker tasks waiting for an item, and the items handed to them.
        self._idle = 0
        self._queued, self._queue = trio.open_memory_channel[tuple[Any, Any]](math.inf)
        self._workers: trio.Nursery | None = None
        # Set when the last item in flight ends while draining.
        self._emptied: trio.Event | None = None
        self._held: dict[str, Item] = {}  # by lease token, while leased here
        self._holding = AsyncBool()
        # When the leases of all held items were last renewed (or the first was taken).
        self._renewed = 0.0
        self._room = AsyncBool()  # the runner's room grew (or draining began)
        self._leased_for: set[Any] = set()
        # When each name filter was last given work, in rounds that gave any.
        self._served: dict[Any, int] = {}
        self._rounds = 0
        self._failures: OrderedDict[str, int] = OrderedDict()
        self._draining = False
        self._stop = trio.Event()  # draining began
        self._grace = 0.0
        self.finished = trio.Event()

    def room_changed(self, names: Any) -> None:
        """Called by the runner when its room for `names` grew (a slot freed, a worker came)."""
        self._room.value = True
        if names not in self._leased_for:
            # Work may be waiting that only these workers take, while the loop, having served
            # the others, waits for new work: it counts as new work.
            self._ready.value = True

    def drain(self, grace: float) -> None:
        """Stop leasing; items in flight get `grace` seconds, then are given back."""
        self._grace = grace
        self._draining = True
        self._stop.set()
        # Whatever the loop waits for, it wakes and finds it is draining.
        self._room.value = self._ready.value = True

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._renew)
                try:
                    await self._serve_items(task_status)
                finally:
                    await self._give_back_queued()
                nursery.cancel_scope.cancel()
        finally:
            self.finished.set()

    async def _serve_items(self, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as items:
            self._workers = items
            task_status.started()
            await self._lease_loop()
            held = self.in_flight
            if held:
                log.info("draining: %d %s work items in flight get up to %g s to finish",
                         held, self.kind.name, self._grace)
                self._emptied = trio.Event()
                with trio.move_on_after(self._grace):
                    await self._emptied.wait()
            if self.in_flight:
                log.warning("drained: %d %s work items did not finish within %g s and are "
                            "given back", self.in_flight, self.kind.name, self._grace)
            elif held:
                log.info("drained: every %s work item in flight finished", self.kind.name)
            items.cancel_scope.cancel()

    def _dispatch(self, item: Item, names: Any) -> None:
        """Run `item` in a worker task: an idle one, or a new one (at most `limit`, since no
        more are ever in flight). Reusing tasks costs less than a task per item."""
        if self._idle:
            self._idle -= 1
            self._queued.send_nowait((item, names))
        else:
            assert self._workers is not None
            self._workers.start_soon(self._work, item, names)

    async def _work(self, item: Item, names: Any) -> None:
        while True:
            await self._run_one(item, names)
            self._idle += 1
            item, names = await self._queue.receive()

    async def _give_back_queued(self) -> None:
        """Items handed to a worker that was cancelled before it took them go back at once."""
        while True:
            try:
                item, _ = self._queue.receive_nowait()
            except trio.WouldBlock:
                return
            await self._give_back(item, 0.0)
            self.in_flight -= 1

    # -- leasing ---------------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        # The loop waits on one flag at a time, each also set when draining begins: composing
        # them (trio-util's compose_values) costs more than a lease round here.
        failures = 0
        while not self._draining:
            free = self.limit - self.in_flight
            rooms = [(n, r) for n, r in self.runner.rooms() if r > 0] if free > 0 else []
            if not rooms:
                self._room.value = False
                await self._room.wait_value(True)
                continue
            self._ready.value = False
            try:
                await self._renew_if_late()
                drained = await self._lease_round(rooms, free)
                failures = 0
            except StorageError as exc:
                failures += 1
                delay = backoff(failures, first=0.5, cap=30.0)
                log.warning("%s work could not be leased (retrying in %.1f s): %s",
                            self.kind.name, delay, exc)
                with trio.move_on_after(delay):
                    await self._stop.wait()
                continue
            if drained:
                # That was everything available to the runner's room. Newer work, or room for
                # workers that had none, wakes this.
                self._leased_for = {names for names, _ in rooms}
                await self._ready.wait_value(True)

    async def _lease_round(self, rooms: list[tuple[Any, float]], free: int) -> bool:
        if sum(room for _, room in rooms) > free:
            # The limit is what is short, not the runner's room: the name filter served
            # longest ago goes first, or the first would take every freed slot while work that
            # only the others take waits, however long it has waited.
            rooms.sort(key=lambda room: self._served.get(room[0], 0))
        drained = True
        for names, room in rooms:
            take = min(room, self.limit - self.in_flight)
            if take <= 0:
                return False
            batch = await self.kind.lease(self._owner, int(take), self._lease_us, names)
            if batch:
                self._rounds += 1
                self._served[names] = self._rounds
            self.in_flight += len(batch)
            for item in batch:
                self._dispatch(item, names)
            drained = drained and len(batch) < take
        return drained

    # -- one item --------------------------------------------------------------------------

    async def _run_one(self, item: Item, names: Any) -> None:
        kind, runner = self.kind, self.runner
        token = kind.token(item)
        if not self._held:
            self._holding.value = True
            self._renewed = trio.current_time()
        self._held[token] = item
        delay: float | None = None  # seconds before it may be leased again; None: settled
        try:
            work = kind.open(item)
            if work is None:
                await kind.skip(item)
            else:
                result = await runner.run(item, work, names)
                if isinstance(result, Settled):
                    outcome = result.outcome
                else:
                    try:
                        outcome = await kind.settle(item, work, result)
                    except BaseException as exc:
                        runner.failed(item, exc)
                        raise
                runner.settled(item, work, result, outcome)
            if self._failures:
                self._failures.pop(kind.key(item), None)
        except LeaseLost as exc:
            log.warning("%s: %s", kind.describe(item), exc)
        except GiveBack as back:
            delay = self._backoff(item) if back.with_backoff else 0.0
            log.debug("%s given back: %s", kind.describe(item), back)
        except StorageError as exc:
            delay = self._backoff(item)
            log.warning("%s could not be settled (given back for %.1f s): %s",
                        kind.describe(item), delay, exc)
        except Exception:
            delay = self._backoff(item)
            log.exception("%s failed unexpectedly (given back for %.1f s)",
                          kind.describe(item), delay)
        except BaseException:
            delay = 0.0  # cancelled: released for whoever runs it next
            raise
        finally:
            del self._held[token]
            if not self._held:
                self._holding.value = False
            try:
                if delay is not None:
                    await self._give_back(item, delay)
            finally:
                self.in_flight -= 1
                if self._emptied is not None and not self.in_flight:
                    self._emptied.set()
                self._room.value = True
                if names not in self._leased_for:
                    self._ready.value = True

    def _backoff(self, item: Item) -> float:
        key = self.kind.key(item)
        attempt = self._failures.pop(key, 0) + 1
        self._failures[key] = attempt
        if len(self._failures) > _FAILURES_KEPT:
            self._failures.popitem(last=False)
        return backoff(attempt)

    async def _give_back(self, item: Item, delay: float) -> None:
        """Each attempt is shielded and bounded. One the store refuses (a full disk) or that
        times out is made again, with backoff, until the lease would have lapsed anyway: given
        up at once, the item would wait out its whole lease (minutes, for an activity) after
        the disk was freed. Cancelled (shutting down), what is left to it is its lease."""
        describe, lapses = self.kind.describe, trio.current_time() + self.kind.lease_s
        attempt = 0
        while True:
            error: Exception | None = None
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + RELEASE_TIMEOUT
                try:
                    await self.kind.give_back(item, int(delay * 1_000_000))
                except Exception as exc:
                    error = exc
            if error is None and not scope.cancelled_caught:
                if attempt:
                    log.info("%s given back after %d failed attempts", describe(item), attempt)
                return
            if error is None:
                error = StorageError(f"giving it back took over {RELEASE_TIMEOUT:g} s")
            attempt += 1
            until = trio.current_time() + backoff(attempt, first=0.5, cap=RELEASE_RETRY_CAP)
            lapse = f"{describe(item)} could not be given back (its lease will lapse): {error}"
            if (not isinstance(error, StorageError) or until >= lapses
                    or until >= trio.current_effective_deadline()):
                log.warning("%s", lapse)
                return
            if attempt == 1:
                log.warning("%s could not be given back (trying again until it is): %s",
                            describe(item), error)
            try:
                await trio.sleep_until(until)
            except trio.Cancelled:
                log.warning("%s", lapse)
                raise

    # -- renewal ---------------------------------------------------------------------------

    async def _renew(self) -> None:
        """Keep the leases of held items alive: an item may take longer than a lease (a slow
        activity, a large orchestration), and only a process or worker that is gone should
        lose its work. Every third of a lease all of them are renewed; a round the store
        refused, even in part, is made again within a second or so (backing off), so a lease
        has two thirds of its time for the store to take a renewal."""
        period = self.kind.lease_s / 3
        while True:
            # Waiting without a deadline while idle lets a MockClock jump straight to timers.
            await self._holding.wait_value(True)
            failures = 0
            while self._held:
                if failures:
                    await trio.sleep(backoff(failures, first=0.25, cap=min(2.0, period)))
                else:
                    await trio.sleep_until(self._renewed + period)
                if not self._held:
                    break
                refused = await self._renew_held()
                if refused is None:
                    if failures:
                        log.info("the leases of held %s work items are renewed again",
                                 self.kind.name)
                    failures = 0
                    continue
                if failures % 10 == 0:  # the first of a run of refusals, then now and then
                    log.warning("the leases of %d %s work items could not be renewed (trying "
                                "again shortly): %s", refused[0], self.kind.name, refused[1])
                failures += 1

    async def _renew_held(self) -> tuple[int, StorageError] | None:
        """Renew the lease of every held item; how many the store refused, and why (None: it
        refused none)."""
        began = trio.current_time()
        refused: list[StorageError] = []
        for token, item in list(self._held.items()):
            if self._held.get(token) is not item:
                continue  # settled while an earlier one was renewed
            try:
                await self.kind.renew(item, self._lease_us)
            except LeaseLost as exc:
                # Settled while this renewal was on its way (a worker's completion is settled in
                # the worker's call, before the item's task hears of it); if the lease was truly
                # lost, settling it says so.
                log.debug("%s: %s", self.kind.describe(item), exc)
            except StorageError as exc:
                refused.append(exc)
        if refused:
            return len(refused), refused[-1]
        self._renewed = began
        return None

    async def _renew_if_late(self) -> None:
        """Before leasing: if renewals are late (a busy event loop, a slow store), the leases
        held here may be lapsing, and the round about to run could take them again, to run a
        second time here (the poller wakes on lapsed leases). Renewed first, they cannot."""
        if self._held and trio.current_time() >= self._renewed + 2 * self.kind.lease_s / 3:
            await self._renew_held()


def unlimited(names: Any = None) -> list[tuple[Any, float]]:
    """The room of a runner that runs whatever the lifecycle's limit lets in."""
    return [(names, math.inf)]

