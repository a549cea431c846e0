"""The asyncio loop that a Trio task steps (dtrio.grpc.steploop): asyncio code on it runs as it
would under asyncio, every way of scheduling asyncio work wakes it, cancellation crosses both
ways, and what it relies on in asyncio is checked, failing loudly where it differs."""

from __future__ import annotations

import ast
import asyncio
import gc
import re
import threading
from pathlib import Path

import pytest
import sniffio
import trio

from dtrio.grpc import steploop
from dtrio.grpc.steploop import SteppedLoop, UnsupportedAsyncio, check_asyncio, open_stepped_loop

PACKAGE = Path(steploop.__file__).resolve().parents[1]


async def test_asyncio_code_sees_asyncio_and_trio_code_sees_trio() -> None:
    async def where() -> tuple[object, str, bool]:
        await asyncio.sleep(0)
        return (asyncio.get_running_loop(), sniffio.current_async_library(),
                asyncio.current_task() is not None)

    async with open_stepped_loop() as aio:
        assert await aio.run(where()) == (aio.loop, "asyncio", True)
        assert asyncio._get_running_loop() is None
        assert sniffio.current_async_library() == "trio"


async def test_a_timer_wakes_the_loop_when_due() -> None:
    # With nothing else to do, only the timer can wake the stepping task.
    async with open_stepped_loop() as aio:
        with trio.fail_after(5):
            await aio.run(asyncio.sleep(0.05))


async def test_a_timer_already_due_when_scheduled_during_a_step_runs() -> None:
    async def late_timer() -> None:
        loop = asyncio.get_running_loop()
        ran = loop.create_future()
        loop.call_at(loop.time() - 1, ran.set_result, None)
        await ran

    async with open_stepped_loop() as aio:
        with trio.fail_after(5):
            await aio.run(late_timer())


async def test_callbacks_and_timers_scheduled_from_trio_or_threads_wake_the_loop() -> None:
    async with open_stepped_loop() as aio:
        with trio.fail_after(5):
            ran = trio.Event()
            aio.loop.call_soon(ran.set)  # from Trio, while the stepping task waits
            await ran.wait()
            ran = trio.Event()
            await trio.to_thread.run_sync(aio.loop.call_soon_threadsafe, ran.set)
            await ran.wait()
            ran = trio.Event()
            aio.loop.call_later(0.05, ran.set)  # a timer, from Trio
            await ran.wait()


class _Replies(asyncio.Protocol):
    """Answers each message with three writes and, after "bye", closes in the same step."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for part in (b"<", data, b">"):
            self.transport.write(part)  # type: ignore[attr-defined]
        if data == b"bye":
            self.transport.close()


async def test_writes_of_a_step_reach_the_peer_in_order_and_before_a_close() -> None:
    async with open_stepped_loop() as aio:
        server = await aio.run(aio.loop.create_server(_Replies, "127.0.0.1", 0))
        port = server.sockets[0].getsockname()[1]
        with trio.fail_after(5):
            peer = await trio.open_tcp_stream("127.0.0.1", port)
            received = b""
            for message in (b"one", b"two"):
                await peer.send_all(message)
                while not received.endswith(b"<" + message + b">"):
                    received += await peer.receive_some()
            await peer.send_all(b"bye")
            while chunk := await peer.receive_some():
                received += chunk
        assert received == b"<one><two><bye>"
        server.close()


async def test_results_and_errors_cross_both_ways() -> None:
    async def trio_double(n: int) -> int:
        await trio.sleep(0)
        return 2 * n

    async def trio_fails() -> None:
        raise KeyError("from Trio")

    async def asyncio_side(aio: SteppedLoop) -> int:
        with pytest.raises(KeyError, match="from Trio"):
            await aio.run_trio(trio_fails)
        return await aio.run_trio(trio_double, 21)

    async def asyncio_fails() -> None:
        raise ValueError("from asyncio")

    async with open_stepped_loop() as aio:
        assert await aio.run(asyncio_side(aio)) == 42
        with pytest.raises(ValueError, match="from asyncio"):
            await aio.run(asyncio_fails())


async def test_cancelling_a_trio_wait_cancels_the_asyncio_task_and_waits_for_its_end() -> None:
    ended: list[str] = []

    async def sleeps() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0.01)  # its cleanup awaits, too
            ended.append("cleaned up")

    async with open_stepped_loop() as aio:
        with trio.move_on_after(0.05) as scope:
            await aio.run(sleeps())
        assert scope.cancelled_caught
        assert ended == ["cleaned up"]


async def test_cancelling_an_asyncio_wait_cancels_the_trio_task() -> None:
    ended = trio.Event()

    async def trio_sleeps() -> None:
        try:
            await trio.sleep_forever()
        finally:
            ended.set()

    async def asyncio_side(aio: SteppedLoop) -> None:
        task = asyncio.get_running_loop().create_task(aio.run_trio(trio_sleeps))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    async with open_stepped_loop() as aio:
        await aio.run(asyncio_side(aio))
        with trio.fail_after(5):
            await ended.wait()


async def test_leaving_cancels_what_still_runs_on_either_side_and_closes_the_loop(
    monkeypatch,
) -> None:
    monkeypatch.setattr(steploop, "FINISH_TIMEOUT", 60.0)  # not what ends them
    ended: list[str] = []

    async def asyncio_sleeps() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:  # not closed unfinished, when the loop is dropped
            ended.append("asyncio task cancelled")
            raise

    async def trio_sleeps() -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            ended.append("trio task cancelled")
            raise

    async def asyncio_waits_for_trio(aio: SteppedLoop) -> None:
        await aio.run_trio(trio_sleeps)

    async with open_stepped_loop() as aio:
        aio.loop.create_task(asyncio_sleeps())
        aio.loop.create_task(asyncio_waits_for_trio(aio))
        await trio.sleep(0.05)
        leaving = trio.current_time()
    assert trio.current_time() - leaving < 30
    assert sorted(ended) == ["asyncio task cancelled", "trio task cancelled"]
    assert aio.loop.is_closed()


async def test_asyncio_s_async_generators_are_finalized_by_asyncio() -> None:
    # Trio's own hooks would claim an async generator first iterated in a step, and close it
    # in a Trio task, where its asyncio code cannot run.
    closed_under: list[str] = []

    async def numbers():  # noqa: ANN202
        try:
            yield 1
            yield 2
        finally:
            closed_under.append(sniffio.current_async_library())
            await asyncio.sleep(0)

    async def takes_one() -> None:
        agen = numbers()
        assert await agen.__anext__() == 1
        del agen  # abandoned, not exhausted

    async with open_stepped_loop() as aio:
        await aio.run(takes_one())
        gc.collect()
        with trio.fail_after(5):
            while not closed_under:
                await aio.run(asyncio.sleep(0.01))
    assert closed_under == ["asyncio"]


# -- what it relies on in asyncio ------------------------------------------------------------

class _TimersUnseen(steploop._Loop):
    """A loop whose `call_later` does not go through `call_at`."""

    def call_later(self, delay, callback, *args, context=None):  # noqa: ANN001, ANN201
        return asyncio.SelectorEventLoop.call_at(
            self, self.time() + delay, callback, *args, context=context)


class _TwoIterations(steploop._Loop):
    """A loop on which stop() then run_forever() runs two iterations."""

    def run_forever(self) -> None:
        super().run_forever()
        self.stop()
        super().run_forever()


@pytest.mark.parametrize("loop_class, named", [
    (_TimersUnseen, "asyncio.sleep()'s timer was not scheduled with call_at()"),
    (_TwoIterations, "stop() then run_forever() ran other than one iteration"),
])
def test_an_asyncio_that_behaves_otherwise_fails_the_check_naming_what(loop_class, named) -> None:
    class Stepped(SteppedLoop):
        _loop_class = loop_class

    with pytest.raises(UnsupportedAsyncio, match=r"cannot run on Python .*: " + re.escape(named)):
        check_asyncio(Stepped)
    check_asyncio()  # and asyncio as it is passes


def test_an_asyncio_without_its_running_loop_hooks_fails_the_check(monkeypatch) -> None:
    monkeypatch.delattr(asyncio, "_set_running_loop")
    with pytest.raises(UnsupportedAsyncio, match=r"asyncio._set_running_loop\(\) is missing"):
        check_asyncio()


def test_the_check_leaves_other_threads_and_the_loop_policy_alone() -> None:
    policy = asyncio.get_event_loop_policy()
    check_asyncio()
    assert asyncio.get_event_loop_policy() is policy
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(asyncio.run(asyncio.sleep(0, "ok"))))
    thread.start()
    thread.join()
    assert result == ["ok"]


def test_asyncio_s_private_names_are_used_in_steploop_alone() -> None:
    """asyncio is imported by dtrio.grpc's bridge and steploop only, and only steploop touches
    names asyncio keeps private (what `check_asyncio` vouches for)."""
    importers, private = set(), set()
    for path in PACKAGE.rglob("*.py"):
        module = path.relative_to(PACKAGE.parent).with_suffix("").as_posix().replace("/", ".")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""])
                if any(n == "asyncio" or n.startswith("asyncio.") for n in names):
                    importers.add(module)
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id == "asyncio" and node.attr.startswith("_")):
                private.add(module)
    assert importers == {"dtrio.grpc.bridge", "dtrio.grpc.steploop"}
    assert private == {"dtrio.grpc.steploop"}
