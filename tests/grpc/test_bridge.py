"""The gRPC server itself (dtrio.grpc.bridge), under a small servicer, driven by grpcio: large
messages both ways (HTTP/2 flow control), deadlines and cancellation reaching the Trio method,
errors answered without harm to the connection."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial

import grpc
import pytest
import trio
from durabletask.internal import orchestrator_service_pb2 as sdk_pb2
from durabletask.internal import orchestrator_service_pb2_grpc as stubs
from h2.config import H2Configuration
from h2.connection import H2Connection

from dtrio import _pb as pb
from dtrio.errors import InvalidInput
from dtrio.grpc.bridge import serve_grpc

BIG = 3 << 20  # over the client's and the server's initial flow-control windows


class Servicer:
    def __init__(self) -> None:
        self.started = 0  # calls of wait_for_instance_start begun
        self.ended: list[str] = []  # how each call of wait_for_instance_start ended

    async def get_instance(self, request: pb.GetInstanceRequest) -> pb.GetInstanceResponse:
        if request.instance_id == "fail":
            raise RuntimeError("a bug")
        # Echoes the request's size and sends a large input back.
        return pb.GetInstanceResponse(exists=True, orchestration_state=pb.OrchestrationState(
            instance_id=str(len(request.instance_id)), input="y" * BIG,
        ))

    async def wait_for_instance_start(self, request: pb.GetInstanceRequest):
        self.started += 1
        try:
            await trio.sleep_forever()
        finally:
            self.ended.append("cancelled")

    async def until(self, what: Callable[[], bool]) -> None:
        with trio.fail_after(10):
            while not what():
                await trio.sleep(0.01)

    async def get_work_items(self, request: pb.GetWorkItemsRequest, send) -> None:
        count = request.max_concurrent_activity_work_items or 200
        try:
            for i in range(count):
                await send(pb.WorkItem(completion_token=f"{i}:" + "z" * 30_000))
        except BaseException as exc:
            self.ended.append(f"send raised {type(exc).__name__}")
            raise


class Stub:
    def __init__(self, channel: grpc.Channel, target: str) -> None:
        self.stub = stubs.TaskHubSidecarServiceStub(channel)
        self.channel = channel
        self.channel_target = target

    async def call(self, fn: Callable, *args, **kwargs):
        return await trio.to_thread.run_sync(partial(fn, *args, **kwargs))


@asynccontextmanager
async def serving(servicer: object) -> AsyncIterator[Stub]:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve_grpc, servicer, "127.0.0.1", 0))
        target = f"127.0.0.1:{port}"
        channel = grpc.insecure_channel(target)
        try:
            yield Stub(channel, target)
        finally:
            channel.close()
            nursery.cancel_scope.cancel()


async def test_large_messages_both_ways() -> None:
    async with serving(Servicer()) as client:
        request = sdk_pb2.GetInstanceRequest(instanceId="x" * BIG)
        reply = await client.call(client.stub.GetInstance, request, timeout=20)
        assert reply.orchestrationState.instanceId == str(BIG)
        assert len(reply.orchestrationState.input.value) == BIG


async def test_a_stream_of_many_messages_arrives_whole_and_in_order() -> None:
    async with serving(Servicer()) as client:
        def read() -> list[str]:
            stream = client.stub.GetWorkItems(sdk_pb2.GetWorkItemsRequest(), timeout=20)
            return [item.completionToken.split(":")[0] for item in stream]

        assert await client.call(read) == [str(i) for i in range(200)]


async def test_a_reader_that_leaves_mid_stream_makes_the_method_s_send_fail() -> None:
    # Sends are queued without waiting; the method must still learn that nobody reads.
    servicer = Servicer()
    async with serving(servicer) as client:
        stream = client.stub.GetWorkItems(
            sdk_pb2.GetWorkItemsRequest(maxConcurrentActivityWorkItems=1_000_000))
        first = await client.call(next, stream)
        assert first.completionToken.startswith("0:")
        stream.cancel()
        with trio.fail_after(10):
            while not servicer.ended:
                await trio.sleep(0.05)
    assert servicer.ended[0].startswith("send raised")


async def test_deadlines_and_cancellation_reach_the_method() -> None:
    servicer = Servicer()
    async with serving(servicer) as client:
        request = sdk_pb2.GetInstanceRequest(instanceId="i")
        with pytest.raises(grpc.RpcError) as caught:
            await client.call(client.stub.WaitForInstanceStart, request, timeout=0.3)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        future = client.stub.WaitForInstanceStart.future(request)  # no deadline
        await trio.sleep(0.3)
        future.cancel()
        with trio.fail_after(5):
            while len(servicer.ended) < 2:
                await trio.sleep(0.05)
        assert servicer.ended == ["cancelled", "cancelled"]


async def test_errors_are_answered_and_the_connection_keeps_serving() -> None:
    async with serving(Servicer()) as client:
        get = client.stub.GetInstance
        with pytest.raises(grpc.RpcError) as caught:
            await client.call(get, sdk_pb2.GetInstanceRequest(instanceId="fail"))
        assert caught.value.code() == grpc.StatusCode.INTERNAL
        assert "GetInstance failed" in caught.value.details()
        with pytest.raises(grpc.RpcError) as caught:
            await client.call(client.stub.RaiseEvent, sdk_pb2.RaiseEventRequest(instanceId="i"))
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        unknown = client.channel.unary_unary("/TaskHubSidecarService/NoSuchRpc",
                                             request_serializer=lambda b: b,
                                             response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as caught:
            await client.call(unknown, b"")
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        reply = await client.call(get, sdk_pb2.GetInstanceRequest(instanceId="ok"))
        assert reply.orchestrationState.instanceId == "2"


@pytest.mark.parametrize("host, port, message", [
    ("127.0.0.1", 99999, "cannot listen on 127.0.0.1:99999: a port is a number from 0 to 65535"),
    ("nosuch.invalid", 0, "cannot listen on nosuch.invalid:0: unknown host 'nosuch.invalid' ("),
])
async def test_a_bad_address_is_refused_naming_it(host: str, port: int, message: str) -> None:
    with pytest.raises(BaseExceptionGroup) as refused:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_grpc, Servicer(), host, port))
    (error,) = refused.value.exceptions
    assert isinstance(error, InvalidInput | OSError)
    assert (error.strerror if isinstance(error, OSError) else str(error)).startswith(message)


async def test_a_client_that_disconnects_cancels_the_method() -> None:
    # The connection drops with the call in flight, without a word (RST_STREAM, GOAWAY) first.
    servicer = Servicer()
    async with serving(servicer) as client:
        port = int(client.channel_target.rsplit(":", 1)[1])
        h2 = H2Connection(H2Configuration(client_side=True))
        h2.initiate_connection()
        h2.send_headers(1, [
            (":method", "POST"), (":scheme", "http"), (":authority", client.channel_target),
            (":path", "/TaskHubSidecarService/WaitForInstanceStart"),
            ("content-type", "application/grpc"), ("te", "trailers"),
        ])
        message = sdk_pb2.GetInstanceRequest(instanceId="i").SerializeToString()
        h2.send_data(1, b"\0" + len(message).to_bytes(4, "big") + message, end_stream=True)
        connection = await trio.open_tcp_stream("127.0.0.1", port)
        await connection.send_all(h2.data_to_send())
        await servicer.until(lambda: servicer.started == 1)
        connection.socket.setsockopt(  # closing sends a reset, not a polite FIN
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await connection.aclose()
        await servicer.until(lambda: servicer.ended == ["cancelled"])
        # The server goes on serving other connections.
        request = sdk_pb2.GetInstanceRequest(instanceId="ok")
        reply = await client.call(client.stub.GetInstance, request)
        assert reply.orchestrationState.instanceId == "2"


async def test_cancelling_the_root_with_a_call_in_flight_cancels_it_and_closes_the_server() -> None:
    servicer = Servicer()
    with trio.CancelScope() as root:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(partial(serve_grpc, servicer, "127.0.0.1", 0))
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            stub = stubs.TaskHubSidecarServiceStub(channel)
            call = stub.WaitForInstanceStart.future(sdk_pb2.GetInstanceRequest(instanceId="i"))
            await servicer.until(lambda: servicer.started == 1)
            root.cancel()
    try:
        assert servicer.ended == ["cancelled"]
        with pytest.raises(grpc.RpcError) as caught:
            await trio.to_thread.run_sync(partial(call.result, timeout=10))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(OSError):  # nothing listens any more
            await trio.open_tcp_stream("127.0.0.1", port)
    finally:
        channel.close()


def _accepted_socket_option(peer: tuple[str, int], level: int, option: int) -> int | None:
    """The option's value on the socket of this process connected to `peer`, if there is one."""
    for name in os.listdir("/proc/self/fd"):
        try:
            if not stat.S_ISSOCK(os.fstat(int(name)).st_mode):
                continue
            with socket.socket(fileno=os.dup(int(name))) as sock:
                if sock.family == socket.AF_INET and sock.getpeername() == peer:
                    return sock.getsockopt(level, option)
        except OSError:  # closed meanwhile, or not connected
            continue
    return None


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="finds sockets through /proc")
async def test_accepted_connections_send_without_delay() -> None:
    # Without TCP_NODELAY, each small reply of grpclib waits 40 ms for the peer's delayed ACK.
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve_grpc, Servicer(), "127.0.0.1", 0))
        async with await trio.open_tcp_stream("127.0.0.1", port) as client:
            peer = client.socket.getsockname()
            with trio.fail_after(10):
                while (nodelay := _accepted_socket_option(
                        peer, socket.IPPROTO_TCP, socket.TCP_NODELAY)) is None:
                    await trio.sleep(0.01)
            assert nodelay
        nursery.cancel_scope.cancel()


async def test_asyncio_in_other_threads_is_left_alone_while_serving() -> None:
    # The official Python SDK's worker runs asyncio.run() in a thread of its own.
    async def in_a_thread() -> str:
        await asyncio.sleep(0.01)
        return type(asyncio.get_running_loop()).__module__

    async with serving(Servicer()) as client:
        module = await trio.to_thread.run_sync(asyncio.run, in_a_thread())
        assert module.startswith("asyncio.")
        request = sdk_pb2.GetInstanceRequest(instanceId="ok")
        reply = await client.call(client.stub.GetInstance, request)
        assert reply.orchestrationState.instanceId == "2"


def test_serves_from_trio_in_guest_mode_on_an_asyncio_host() -> None:
    # Any Trio program may host the server: here Trio runs as a guest of asyncio, whose loop
    # is the thread's running loop whenever Trio code runs.
    async def trio_main() -> str:
        async with serving(Servicer()) as client:
            request = sdk_pb2.GetInstanceRequest(instanceId="ok")
            reply = await client.call(client.stub.GetInstance, request, timeout=10)
            return reply.orchestrationState.instanceId

    async def ticks(done: asyncio.Future) -> int:
        # Host code meanwhile still finds its running loop (asyncio.sleep looks it up).
        count = 0
        while not done.done():
            await asyncio.sleep(0.001)
            count += 1
        return count

    async def host() -> str:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        ticking = loop.create_task(ticks(done))
        trio.lowlevel.start_guest_run(
            trio_main, run_sync_soon_threadsafe=loop.call_soon_threadsafe,
            run_sync_soon_not_threadsafe=loop.call_soon, done_callback=done.set_result)
        result = (await done).unwrap()
        assert await ticking > 0
        return result

    assert asyncio.run(host()) == "2"
