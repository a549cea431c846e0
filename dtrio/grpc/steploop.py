"""asyncio's own event loop, stepped by a Trio task in the Trio thread.

grpclib needs an asyncio loop, and dtrio must stay one Trio root that any Trio program can run
as a service. Here a stock `asyncio.SelectorEventLoop` never runs on its own: one Trio task
steps it (`stop()` then `run_forever()`, which asyncio documents as one iteration), then waits
in Trio until the loop's selector has something to read, its next timer falls due, or Trio
code has scheduled an asyncio callback, and steps it again. No thread, no second event loop
library: asyncio callbacks may start Trio tasks and set Trio events directly, and Trio code may
schedule asyncio callbacks, which wakes the stepping task.

What this relies on in asyncio is checked when the module is imported (`check_asyncio`), so
that a Python whose asyncio behaves otherwise fails at once, naming what changed, rather than
stalling a call now and then:
- `stop()` before `run_forever()` runs exactly one iteration: callbacks scheduled during it
  wait for the next;
- every callback and timer scheduled from the loop's thread goes through `call_soon` or
  `call_at` (those of futures, tasks and `call_later` too), which this loop overrides to learn
  of them; callbacks from other threads write to the loop's self-pipe, which makes its
  selector readable;
- `asyncio._get_running_loop()` and `_set_running_loop()`, asyncio's hooks for event loops: a
  step hides, and then restores, a loop that already runs the thread (Trio in guest mode on an
  asyncio host).
The loop's selector is told a timeout of zero whatever asyncio asks, so that a step never
blocks the Trio thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import select
import selectors
import sys
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import outcome
import sniffio
import trio

T = TypeVar("T")

# How long leaving `open_stepped_loop` waits for the asyncio tasks still running to end once
# cancelled (the loop is closed regardless after that).
FINISH_TIMEOUT = 5.0

_Selector: type[selectors.BaseSelector] = selectors.DefaultSelector


class UnsupportedAsyncio(ImportError):
    """This Python's asyncio does not behave as the stepped loop needs."""


class _ZeroTimeoutSelector(_Selector):  # type: ignore[misc, valid-type]
    """The loop's selector: a step never blocks the Trio thread; waiting is Trio's job."""

    def select(self, timeout: float | None = None) -> list[Any]:
        return super().select(0)


class _Loop(asyncio.SelectorEventLoop):
    """asyncio's selector loop, telling `scheduled` of every callback (None) and timer."""

    def __init__(
        self, selector: selectors.BaseSelector,
        scheduled: Callable[[asyncio.TimerHandle | None], None],
    ) -> None:
        super().__init__(selector)
        self._dtrio_scheduled = scheduled
        self.accepted: weakref.WeakSet[asyncio.Transport] = weakref.WeakSet()
        self.corked: list[_Corked] = []  # transports written to during this step

    def call_soon(self, callback: Any, *args: Any, context: Any = None) -> asyncio.Handle:
        handle = super().call_soon(callback, *args, context=context)
        self._dtrio_scheduled(None)
        return handle

    async def create_server(  # type: ignore[override]
        self, protocol_factory: Callable[[], asyncio.BaseProtocol], *args: Any, **kwargs: Any
    ) -> asyncio.Server:
        """As asyncio's, keeping in `accepted` the transport of every connection accepted."""

        def factory() -> asyncio.BaseProtocol:
            protocol = protocol_factory()
            made = protocol.connection_made

            def connection_made(transport: asyncio.BaseTransport) -> None:
                self.accepted.add(transport)  # type: ignore[arg-type]
                made(_Corked(transport, self.corked))  # type: ignore[arg-type]

            protocol.connection_made = connection_made  # type: ignore[method-assign]
            return protocol

        return await super().create_server(factory, *args, **kwargs)

    def call_at(
        self, when: float, callback: Any, *args: Any, context: Any = None
    ) -> asyncio.TimerHandle:
        handle = super().call_at(when, callback, *args, context=context)
        self._dtrio_scheduled(handle)
        return handle


class _Corked:
    """A connection's transport whose writes during a step are sent together when the step
    ends. grpclib writes each HTTP/2 frame as h2 makes it (headers, data, trailers: three
    writes per reply), and asyncio sends each write at once: one system call each. A step
    handles many calls' frames; sent together, they cost one."""

    __slots__ = ("_transport", "_chunks", "_corked")

    def __init__(self, transport: asyncio.WriteTransport, corked: list[_Corked]) -> None:
        self._transport = transport
        self._chunks: list[bytes] = []
        self._corked = corked

    def write(self, data: bytes) -> None:
        if not self._chunks:
            self._corked.append(self)
        self._chunks.append(data)

    def flush(self) -> None:
        chunks, self._chunks = self._chunks, []
        if chunks and not self._transport.is_closing():
            self._transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def writelines(self, data: Any) -> None:
        for chunk in data:
            self.write(chunk)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._chunks.clear()
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._chunks))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class SteppedLoop:
    """An asyncio loop (`.loop`) stepped by a Trio task; see the module's docstring. Made by
    `open_stepped_loop`, which runs the stepping task."""

    _loop_class: type[_Loop] = _Loop

    def __init__(self) -> None:
        selector = _ZeroTimeoutSelector()
        fileno = getattr(selector, "fileno", None)
        if fileno is None:
            selector.close()
            raise RuntimeError("dtrio's gRPC server needs an epoll or kqueue selector, which "
                               f"this platform lacks (it has {_Selector.__name__})")
        self._fd: int = fileno()  # readable when the loop has I/O to handle
        self.loop = self._loop_class(selector, self._scheduled)
        self._pending = False  # callbacks are ready that the last step did not run
        self._timers: list[tuple[float, int, asyncio.TimerHandle]] = []  # a heap by `when`
        self._order = itertools.count()
        self._compact_at = 64
        self._idle: trio.CancelScope | None = None  # the stepping task's wait, while it waits
        self._stepping: trio.CancelScope | None = None  # the stepping task, while it runs
        self._nursery: trio.Nursery | None = None

    # -- stepping -------------------------------------------------------------------------

    def _scheduled(self, timer: asyncio.TimerHandle | None) -> None:
        """The loop scheduled a callback (`timer` None) or a timer: wake the stepping task if
        it waits, or tell it when to wake."""
        if timer is not None:
            when = timer.when()
            heapq.heappush(self._timers, (when, next(self._order), timer))
            if when > self.loop.time():
                if self._idle is not None:
                    self._idle.deadline = min(self._idle.deadline, self._trio_time(when))
                return
            # Due already: the next step runs it. (Scheduled during a step, it may be too late
            # for that step, yet earlier than `_next_deadline` counts as run.)
        self._pending = True
        if self._idle is not None:
            self._idle.cancel()

    def _trio_time(self, when: float) -> float:
        return trio.current_time() + (when - self.loop.time())

    def _next_deadline(self, stepped_at: float) -> float:
        """When the earliest timer not yet run falls due, in Trio's clock. A timer due by
        `stepped_at` ran in the step begun then, or was scheduled due and made `_pending`."""
        timers = self._timers
        while timers and (timers[0][0] <= stepped_at or timers[0][2].cancelled()):
            heapq.heappop(timers)
        if len(timers) > self._compact_at:
            # Timers cancelled long before they fall due (grpclib's deadline of each call).
            timers[:] = [t for t in timers if not t[2].cancelled()]
            heapq.heapify(timers)
            self._compact_at = max(64, 2 * len(timers))
        return self._trio_time(timers[0][0]) if timers else math.inf

    @trio.lowlevel.enable_ki_protection
    def _step(self) -> None:
        """One iteration of the asyncio loop, run as asyncio code expects to be run: with its
        running loop, its async generator hooks (`run_forever` sets both) and sniffio saying
        "asyncio". Ctrl+C waits until it is done, as Trio's own scheduling does."""
        host = asyncio._get_running_loop()  # an asyncio loop running this thread, if any
        if host is not None:
            asyncio._set_running_loop(None)
        library, sniffio.thread_local.name = sniffio.thread_local.name, "asyncio"
        self._pending = False
        try:
            self.loop.stop()
            self.loop.run_forever()
        finally:
            corked = self.loop.corked
            while corked:
                corked.pop().flush()
            sniffio.thread_local.name = library
            if host is not None:
                asyncio._set_running_loop(host)

    async def _drive(self, *, task_status: trio.TaskStatus[None]) -> None:
        wait_readable, checkpoint = trio.lowlevel.wait_readable, trio.lowlevel.checkpoint
        try:
            # Shielded: closing the server under a cancelled root needs the loop to go on.
            with trio.CancelScope(shield=True) as self._stepping:
                task_status.started()
                while True:
                    stepped_at = self.loop.time()
                    self._step()
                    if self._pending:
                        await checkpoint()  # the Trio tasks that the step woke run first
                        continue
                    deadline = self._next_deadline(stepped_at)
                    with trio.CancelScope(deadline=deadline) as self._idle:
                        await wait_readable(self._fd)
                    self._idle = None
        finally:
            self._stepping = self._idle = None

    # -- crossing -------------------------------------------------------------------------

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` as an asyncio task, and wait for it (from Trio). Cancelling the wait
        cancels the task, and still waits for it to end."""
        if self._stepping is None:
            coro.close()
            raise RuntimeError("the stepped asyncio loop is not running")
        task = self.loop.create_task(coro)
        waiter = trio.lowlevel.current_task()
        cancelled: list[Callable[[], Any]] = []  # how Trio cancelled the wait, if it did

        def finished(task: asyncio.Task[T]) -> None:
            if task.cancelled():
                result = outcome.capture(cancelled[0] if cancelled else _cancelled_elsewhere)
            else:
                result = outcome.capture(task.result)
            trio.lowlevel.reschedule(waiter, result)

        def abort(raise_cancel: Callable[[], Any]) -> trio.lowlevel.Abort:
            cancelled.append(raise_cancel)
            task.cancel()
            return trio.lowlevel.Abort.FAILED

        task.add_done_callback(finished)
        return await trio.lowlevel.wait_task_rescheduled(abort)  # type: ignore[no-any-return]

    async def run_trio(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `fn(*args)` as a Trio task, and wait for it (from asyncio). Cancelling the wait
        cancels the Trio task; its exceptions (not Trio's cancellation) are raised here."""
        if self._nursery is None:
            raise RuntimeError("the stepped asyncio loop is not open")
        done = self.loop.create_future()
        scope = trio.CancelScope()
        self._nursery.start_soon(_job, done, scope, fn, args, name=fn)
        try:
            return await done  # type: ignore[no-any-return]
        except asyncio.CancelledError:
            scope.cancel()
            raise

    def close_connections(self) -> None:
        """Close the connections that servers of this loop accepted and still hold: their
        clients see them end at once. (asyncio's own `Server.close_clients()` is Python
        3.13's; a server's `wait_closed()` waits for them from 3.12 on.)"""
        for transport in list(self.loop.accepted):
            transport.close()

    async def _finish(self) -> None:
        """Cancel the asyncio tasks still running, and wait (a bounded time) for them."""
        tasks = asyncio.all_tasks(self.loop)
        for task in tasks:
            task.cancel()
        with trio.move_on_after(FINISH_TIMEOUT):
            if tasks:
                await self.run(_gather(tasks))
            await self.run(self.loop.shutdown_asyncgens())


def _cancelled_elsewhere() -> None:
    raise RuntimeError("the asyncio task was cancelled by asyncio code, not by Trio")


async def _gather(tasks: set[asyncio.Task[Any]]) -> None:
    await asyncio.gather(*tasks, return_exceptions=True)


async def _job(
    done: asyncio.Future[Any], scope: trio.CancelScope, fn: Callable[..., Awaitable[Any]],
    args: tuple[Any, ...],
) -> None:
    """The Trio side of `run_trio`: its outcome goes to `done`, and `scope` cancels it."""
    with scope:
        try:
            result = await fn(*args)
        except Exception as exc:
            if not done.done():
                done.set_exception(exc)
            return
        except BaseException:  # Trio cancelling it from outside, KeyboardInterrupt, ...
            if not done.done():
                done.cancel()
            raise
        if not done.done():
            done.set_result(result)
        return
    if not done.done():  # `scope` was cancelled: the asyncio side went away
        done.cancel()


@asynccontextmanager
async def open_stepped_loop() -> AsyncIterator[SteppedLoop]:
    """A stepped asyncio loop for the block. Leaving the block cancels the asyncio tasks and
    the Trio tasks (of `run_trio`) still running, waits for them, and closes the loop."""
    stepped = SteppedLoop()
    try:
        async with trio.open_nursery() as nursery:
            stepped._nursery = nursery
            await nursery.start(stepped._drive)
            try:
                yield stepped
            finally:
                with trio.CancelScope(shield=True):
                    await stepped._finish()
                if stepped._stepping is not None:
                    stepped._stepping.cancel()
                nursery.cancel_scope.cancel()
    finally:
        stepped._nursery = None
        stepped.loop.close()


# -- what the stepped loop relies on in asyncio, checked at import ------------------------------

def check_asyncio(make: Callable[[], SteppedLoop] = SteppedLoop) -> None:
    """Raise `UnsupportedAsyncio`, naming what differs, unless asyncio behaves as the stepped
    loop needs (see the module's docstring). Runs outside Trio, in well under a millisecond."""

    def fail(what: str) -> None:
        raise UnsupportedAsyncio(
            f"dtrio's gRPC server cannot run on Python {sys.version.split()[0]}: its asyncio "
            f"differs from what dtrio.grpc.steploop relies on: {what}")

    for name in ("_get_running_loop", "_set_running_loop"):
        if not callable(getattr(asyncio, name, None)):
            fail(f"asyncio.{name}() is missing")
    seen: list[str] = []
    running = asyncio._get_running_loop()
    stepped = make()
    loop = stepped.loop
    try:
        future = loop.create_future()
        future.add_done_callback(lambda _: seen.append("the future's callback"))
        loop.call_soon(lambda: (seen.append("a callback"), future.set_result(None)))
        if not stepped._pending:
            fail("call_soon() is not seen by the loop's override")
        stepped._step()
        if seen != ["a callback"] or not stepped._pending:
            fail("stop() then run_forever() ran other than one iteration, or a future's "
                 f"callback was not scheduled with call_soon() (ran: {seen})")
        stepped._step()
        if seen != ["a callback", "the future's callback"] or stepped._pending:
            fail(f"the second iteration ran {seen[1:]}, not the future's callback alone")
        if asyncio._get_running_loop() is not running:
            fail("the running loop stays changed after a step")

        async def sleeps() -> None:
            await asyncio.sleep(3600)

        task = loop.create_task(sleeps())
        if not stepped._pending:
            fail("a new task's first step was not scheduled with call_soon()")
        stepped._step()
        if not stepped._timers or not 3500 < stepped._timers[0][0] - loop.time() <= 3600:
            fail("asyncio.sleep()'s timer was not scheduled with call_at()")
        task.cancel()
        stepped._step()
        if not task.cancelled() or stepped._next_deadline(loop.time()) != math.inf:
            fail("a cancelled task, or its timer, did not end in the next iteration")

        thread = threading.Thread(target=loop.call_soon_threadsafe, args=(seen.append, "thread"))
        thread.start()
        thread.join()
        if not select.select([stepped._fd], [], [], 5)[0]:
            fail("call_soon_threadsafe() left the loop's selector unreadable")
        stepped._step()
        if seen[-1] != "thread":
            fail("call_soon_threadsafe()'s callback did not run in the next iteration")
    finally:
        for task in asyncio.all_tasks(loop):  # left by a failure: end it quietly
            task.cancel()
            with contextlib.suppress(Exception):
                stepped._step()
        loop.close()


check_asyncio()
