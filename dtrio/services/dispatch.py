"""The loop shared by both dispatchers: lease up to the free capacity, run each item in its
own task, sleep until the backend says there may be more."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import trio

from ..signals import Wakeup

Item = TypeVar("Item")

# How long releasing a work item may take when its task is being cancelled.
RELEASE_TIMEOUT = 5.0


def backoff(attempt: int, *, first: float = 0.1, cap: float = 60.0) -> float:
    return min(cap, first * 2 ** max(0, attempt - 1))


class Dispatcher(Generic[Item]):
    def __init__(
        self,
        name: str,
        limit: int,
        ready: Wakeup,
        lease: Callable[[int], Awaitable[list[Item]]],
        execute: Callable[[Item], Awaitable[None]],
        log: logging.Logger,
    ) -> None:
        self.name = name
        self.limit = limit
        self.in_flight = 0
        self._ready = ready
        self._lease = lease
        self._execute = execute
        self._log = log
        self._slot_freed = Wakeup()
        self._draining = False
        self.finished = trio.Event()

    def drain(self) -> None:
        """Stop leasing new work; `serve` returns once the items in flight are done."""
        self._draining = True
        self._ready.set()
        self._slot_freed.set()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as items:
                task_status.started()
                while not self._draining:
                    free = self.limit - self.in_flight
                    if free <= 0:
                        await self._slot_freed.wait()
                        continue
                    self._ready.clear()
                    batch = await self._lease(free)
                    for item in batch:
                        self.in_flight += 1
                        items.start_soon(self._run_one, item)
                    if len(batch) < free:
                        # That was everything available; anything newer sets `ready` again.
                        await self._ready.wait()
        finally:
            self.finished.set()

    async def _run_one(self, item: Item) -> None:
        try:
            await self._execute(item)
        except Exception:
            self._log.exception("%s work item failed unexpectedly: %r", self.name, item)
        finally:
            self.in_flight -= 1
            self._slot_freed.set()
