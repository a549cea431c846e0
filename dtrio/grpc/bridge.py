"""gRPC over HTTP/2 in Trio: serves TaskHubSidecarService on Trio sockets.

Each connection is a Trio task feeding received bytes to the HTTP/2 state machine of `http2`,
and a writer task that sends whatever it has queued, so everything the RPCs of one scheduling
tick write leaves in one socket write. Every RPC runs as a Trio task calling the servicer's
method of the same name in snake_case, under the caller's deadline (`grpc-timeout`); a client
that resets its stream or drops the connection cancels it. (grpclib on an asyncio loop run by
trio-asyncio, which this replaces, spent almost four times the CPU per RPC: see
benchmarks/bench_sidecar.py.)

Servicer methods are plain Trio coroutines: unary RPCs are `async def rpc(request) -> reply`,
server-streaming ones `async def rpc(request, send)` where `await send(message)` writes to the
stream (a message, or its bytes already encoded: work items are spliced from stored history
events, see `workitems`). An RPC the servicer lacks answers UNIMPLEMENTED with a message naming
it.
"""

from __future__ import annotations

import logging
import re
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from .. import _pb as pb
from ..errors import InvalidInput
from ..wire import encode
from . import http2
from .inbound import DEFAULT_MAX_MESSAGE_SIZE, MalformedMessage, Skimmer, decode
from .status import grpc_error

log = logging.getLogger("dtrio.grpc")

# How much a client may send ahead, per stream and per connection (grpclib's defaults).
WINDOW = 4 * 1024 * 1024

_RESPONSE = http2.header_block([(b":status", b"200"), (b"content-type", b"application/grpc")])
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
# grpc-message is percent-encoded: every byte outside printable ASCII, and "%" itself.
_UNSAFE = re.compile(rb"[^\x20-\x24\x26-\x7e]")
# Fields that say which work item a completion is for: all that is kept of one over the limit.
_IDENTITY = ("instance_id", "task_id", "completion_token")


@dataclass(frozen=True, slots=True)
class _Route:
    rpc: str
    method: Callable[..., Awaitable[Any]] | None  # None: the servicer lacks it
    request_type: type
    streams: bool  # server-streaming
    too_large: Callable[..., Awaitable[Any]] | None  # takes what is kept of one over the limit


def _snake(rpc: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", rpc).lower()


def routes(servicer: object) -> dict[bytes, _Route]:
    """Every TaskHubSidecarService RPC by path, each bound to `servicer`'s method.

    A request over the size limit is refused, unless the servicer has a method named
    `<rpc>_too_large(request, size, limit)` for a unary RPC: that one gets the request's
    identifying fields.
    """
    table = {}
    for path, handler in pb.TaskHubSidecarServiceBase().__mapping__().items():
        rpc = path.rsplit("/", 1)[1]
        streams = handler.cardinality is Cardinality.UNARY_STREAM
        too_large = None if streams else getattr(servicer, f"{_snake(rpc)}_too_large", None)
        table[path.encode()] = _Route(
            rpc, getattr(servicer, _snake(rpc), None), handler.request_type, streams, too_large
        )
    return table


async def _call(rpc: str, method: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Run a servicer method; its typed errors become gRPC statuses here."""
    try:
        return await method(*args)
    except (GRPCError, StreamTerminatedError):  # already a status, or the caller went away
        raise
    except Exception as exc:
        error = grpc_error(exc)
        if error is None:
            log.exception("%s failed", rpc)
            raise GRPCError(
                Status.INTERNAL, f"{rpc} failed with an internal error: {exc!r}"
            ) from None
        raise error from None


def _percent(message: str) -> bytes:
    return _UNSAFE.sub(lambda m: b"%%%02X" % m.group()[0], message.encode())


def _seconds(timeout: bytes) -> float:
    """A grpc-timeout header's value: up to 8 digits and a unit."""
    text = timeout.decode("ascii", "replace")
    unit = _TIMEOUT_UNITS.get(text[-1:])
    if unit is None or not text[:-1].isdigit() or len(text) > 9:
        raise GRPCError(Status.INVALID_ARGUMENT, f"malformed grpc-timeout header {text!r}")
    return int(text[:-1]) * unit


def _request(call: _Call) -> Any:
    """The request message: whole, or what is kept of one over the limit."""
    if call.skimmer is not None:
        if call.received < call.size:
            raise MalformedMessage(f"{call.rpc}: the request ended before its declared length")
        return call.skimmer.result()
    body = call.body
    if call.size is None or len(body) < 5 + call.size:
        raise MalformedMessage(f"{call.rpc}: the request ended before its declared length")
    return decode(call.route.request_type, bytes(body[5:5 + call.size]))


class _Call:
    """One RPC on a connection, from its request headers until its trailers or a reset."""

    __slots__ = ("body", "gone", "received", "responded", "route", "rpc", "scope", "size",
                 "skimmer", "stream_id", "timeout")

    def __init__(self, stream_id: int, rpc: str, route: _Route | None, timeout: bytes | None):
        self.stream_id = stream_id
        self.rpc = rpc
        self.route = route
        self.timeout = timeout
        self.body: bytearray | None = bytearray()  # None once refused
        self.size: int | None = None  # the message's, from its length prefix
        self.skimmer: Skimmer | None = None  # reading one over the limit through
        self.received = 0  # bytes of the message the skimmer was fed
        self.scope = trio.CancelScope()
        self.responded = False  # response headers sent
        self.gone = False  # reset by the client, or its connection closed


class _Connection:
    def __init__(self, stream: trio.SocketStream, table: dict[bytes, _Route], limit: int) -> None:
        self._stream = stream
        self._routes = table
        self._limit = limit
        self._h2 = http2.ServerConnection(window=WINDOW)
        self._calls: dict[int, _Call] = {}
        # Calls whose requests are complete, in the order they arrived. Trio runs tasks spawned
        # together in no set order, so each call's task takes the oldest one here: calls start
        # in arrival order (the first worker stream to ask is the first to be given work).
        self._ready: deque[_Call] = deque()
        self._outgoing = trio.Event()  # h2 holds bytes to send
        self._window = trio.Event()  # the client granted more send window

    async def serve(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write, nursery.cancel_scope)
            await self._read(nursery)
            nursery.cancel_scope.cancel()  # the client went away: so do its calls

    async def _write(self, connection: trio.CancelScope) -> None:
        try:
            while True:
                await self._outgoing.wait()
                self._outgoing = trio.Event()
                data = self._h2.data_to_send()
                if data:
                    await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            connection.cancel()

    def _flush(self) -> None:
        self._outgoing.set()

    async def _read(self, nursery: trio.Nursery) -> None:
        self._flush()
        while True:
            try:
                data = await self._stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the connection was reset
            if not data:
                return
            try:
                events = self._h2.receive(data)
            except http2.ProtocolError as exc:
                log.warning("closing a gRPC connection that broke the HTTP/2 protocol: %s", exc)
                # A GOAWAY saying why is queued; send it before hanging up.
                with trio.move_on_after(1):
                    await self._stream.send_all(self._h2.data_to_send())
                return
            for event in events:
                match event:
                    case http2.Data():
                        self._data(event, nursery)
                    case http2.Request():
                        self._received(event, nursery)
                    case http2.WindowOpened():
                        self._window.set()
                        self._window = trio.Event()
                    case http2.Reset():
                        call = self._calls.pop(event.stream_id, None)
                        if call is not None:
                            call.gone = True
                            call.scope.cancel()
            self._flush()

    def _ended(self, call: _Call, nursery: trio.Nursery) -> None:
        """The request is complete: answer it."""
        self._ready.append(call)
        nursery.start_soon(self._serve)

    def _received(self, event: http2.Request, nursery: trio.Nursery) -> None:
        headers = event.headers
        stream_id = event.stream_id
        if headers.get(b":method") != b"POST":
            self._h2.send_headers(stream_id, _NOT_POST, end_stream=True)
            return
        if not headers.get(b"content-type", b"").startswith(b"application/grpc"):
            self._h2.send_headers(stream_id, _NOT_GRPC, end_stream=True)
            return
        path = headers.get(b":path", b"")
        route = self._routes.get(path)
        rpc = route.rpc if route else path.decode("ascii", "replace")
        call = self._calls[stream_id] = _Call(stream_id, rpc, route, headers.get(b"grpc-timeout"))
        if event.ended:
            self._ended(call, nursery)

    def _data(self, event: http2.Data, nursery: trio.Nursery) -> None:
        call = self._calls.get(event.stream_id)
        if call is None or call.body is None:
            return
        self._take(call, event.data)
        if event.ended and call.body is not None:
            self._ended(call, nursery)

    def _take(self, call: _Call, data: bytes) -> None:
        assert call.body is not None
        if call.skimmer is not None:
            self._skim(call, data)
            return
        call.body += data
        if call.size is None:
            if len(call.body) < 5:
                return
            call.size = int.from_bytes(call.body[1:5], "big")
            if call.body[0]:
                self._refuse(call, Status.UNIMPLEMENTED,
                             f"{call.rpc}: compressed messages are not supported")
                return
            if call.size > self._limit:
                self._too_large(call)
                return
        # Bytes after the one message a request carries are ignored, not kept.
        del call.body[5 + call.size:]

    def _too_large(self, call: _Call) -> None:
        route = call.route
        assert call.body is not None
        if route is not None and route.too_large is not None:
            # Read through, keeping only what says which work item it is for.
            call.skimmer = Skimmer(route.request_type, _IDENTITY)
            data = bytes(call.body[5:])
            call.body.clear()
            self._skim(call, data)
        else:
            self._refuse(call, Status.RESOURCE_EXHAUSTED,
                         f"{call.rpc}: the request of {call.size} bytes exceeds this sidecar's "
                         f"limit of {self._limit} bytes per message (--max-message-size)")

    def _skim(self, call: _Call, data: bytes) -> None:
        assert call.skimmer is not None
        call.received += len(data)
        try:
            call.skimmer.feed(data)
        except InvalidInput as exc:
            self._refuse(call, Status.INVALID_ARGUMENT, str(exc))

    def _refuse(self, call: _Call, status: Status, message: str) -> None:
        """Answer a request without reading the rest of it."""
        call.body = None
        self._finish(call, status, message)
        self._h2.reset(call.stream_id)

    async def _serve(self) -> None:
        call = self._ready.popleft()
        if call.gone:
            return
        status, message = Status.OK, ""
        with call.scope:
            try:
                await self._answer(call)
            except GRPCError as error:
                status, message = error.status, error.message or ""
            except InvalidInput as exc:  # a malformed request
                status, message = Status.INVALID_ARGUMENT, str(exc)
            except StreamTerminatedError:
                return
            except Exception:  # a bug here must not take the connection's other calls down
                log.exception("%s failed", call.rpc)
                status, message = Status.INTERNAL, f"{call.rpc} failed with an internal error"
        if call.gone:
            return
        if call.scope.cancelled_caught:
            status, message = Status.DEADLINE_EXCEEDED, f"{call.rpc}: the caller's deadline passed"
        self._finish(call, status, message)

    async def _answer(self, call: _Call) -> None:
        if call.timeout is not None:
            call.scope.deadline = trio.current_time() + _seconds(call.timeout)
        route = call.route
        if route is None:
            raise GRPCError(Status.UNIMPLEMENTED, f"{call.rpc} is not a TaskHubSidecarService RPC")
        if route.method is None:
            raise GRPCError(
                Status.UNIMPLEMENTED, f"{route.rpc} is not implemented by this dtrio sidecar"
            )
        request = _request(call)
        call.body = None
        if route.streams:
            await _call(route.rpc, route.method, request, partial(self._send, call))
        elif call.skimmer is not None:
            assert route.too_large is not None and call.size is not None
            reply = await _call(route.rpc, route.too_large, request, call.size, self._limit)
            await self._send(call, reply)
        else:
            await self._send(call, await _call(route.rpc, route.method, request))

    async def _send(self, call: _Call, message: Any) -> None:
        """Write one message to the call's stream, as the client's flow control allows."""
        data = message if isinstance(message, bytes) else encode(message)
        frame = b"\x00" + len(data).to_bytes(4, "big") + data
        await trio.lowlevel.checkpoint_if_cancelled()
        if call.gone:
            raise StreamTerminatedError("the client closed the stream")
        if not call.responded:
            self._h2.send_headers(call.stream_id, _RESPONSE)
            call.responded = True
        sent = self._h2.send_data(call.stream_id, frame)
        self._flush()
        while sent < len(frame):
            await self._window.wait()
            if call.gone:
                raise StreamTerminatedError("the client closed the stream")
            sent += self._h2.send_data(call.stream_id, memoryview(frame)[sent:])
            self._flush()

    def _finish(self, call: _Call, status: Status, message: str) -> None:
        """Trailers (after a response) or a trailers-only answer; the call ends here."""
        block = _status_block(status, message)
        self._h2.send_headers(call.stream_id, block if call.responded else _RESPONSE + block,
                              end_stream=True)
        del self._calls[call.stream_id]
        self._flush()


_NOT_POST = http2.header_block([(b":status", b"405")])
_NOT_GRPC = http2.header_block([(b":status", b"415")])
_STATUS_BLOCKS = {status: http2.header_block([(b"grpc-status", b"%d" % status.value)])
                  for status in Status}


def _status_block(status: Status, message: str) -> bytes:
    block = _STATUS_BLOCKS[status]
    if message:
        block += http2.header_block([(b"grpc-message", _percent(message))])
    return block


async def _bind(host: str, port: int) -> socket.socket:
    """A listening socket, so that the port is known (port 0) and a taken one fails here,
    plainly."""
    family, kind, proto, _, address = (await trio.socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    ))[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(socket.SOMAXCONN)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


async def _serve_connection(
    table: dict[bytes, _Route], limit: int, stream: trio.SocketStream
) -> None:
    try:
        await _Connection(stream, table, limit).serve()
    except Exception:  # a bug must cost one connection, not the server
        log.exception("a gRPC connection failed")


async def serve_grpc(
    servicer: object,
    host: str,
    port: int,
    *,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve TaskHubSidecarService until cancelled; `started()` gives the bound port.

    A request over `max_message_size` bytes is refused unread with RESOURCE_EXHAUSTED (but see
    `routes` for completions). Cancelling cancels every RPC in progress (their `finally` blocks
    release what they hold) and closes the connections."""
    handler = partial(_serve_connection, routes(servicer), max_message_size)
    sock = await _bind(host, port)
    async with trio.SocketListener(trio.socket.from_stdlib_socket(sock)) as listener:
        task_status.started(sock.getsockname()[1])
        await trio.serve_listeners(handler, [listener])
