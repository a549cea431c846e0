"""grpclib inside the Trio root: with `steploop`, the only modules where asyncio appears.

grpclib serves on a stock asyncio loop that a Trio task steps in the Trio thread (`steploop`),
and every RPC hops at once into Trio to run the servicer's Trio method of the same name in
snake_case. Cancellation flows both ways: a client that goes away or a deadline that passes
makes grpclib cancel its handler task, which cancels the Trio task running the method; a Trio
root cancelled with RPCs in flight cancels their methods, and closes the server.

Servicer methods are plain Trio coroutines: unary RPCs are `async def rpc(request) -> reply`,
server-streaming ones `async def rpc(request, send)` where `await send(message)` writes to the
stream. An RPC the servicer lacks answers UNIMPLEMENTED with a message naming it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import grpclib.const
import grpclib.server
import trio
from grpclib.encoding.proto import ProtoCodec
from grpclib.events import RecvRequest, listen
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.protocol import Connection, EventsProcessor, H2Protocol
from h2.connection import H2Connection
from h2.settings import SettingCodes

from ..errors import InvalidInput
from ..wire import encode
from ._stubs import TaskHubSidecarServiceBase
from .inbound import DEFAULT_MAX_MESSAGE_SIZE, MalformedMessage, Skimmer, decode
from .security import OPEN, Door, TokenCheck
from .status import grpc_error
from .steploop import SteppedLoop, open_stepped_loop

log = logging.getLogger("dtrio.grpc")

# How long closing the server may take: handlers are cancelled and release what they hold.
CLOSE_TIMEOUT = 10.0
# Calls one connection may have open at once (h2's own default): a client opening more waits
# for one to end, and one that ignores the limit loses its connection, not others their turn.
DEFAULT_MAX_CONCURRENT_STREAMS = 100


class _ExpiredDeadline(logging.Filter):
    """grpclib logs a call whose deadline had passed when it began (a client that gave up while
    the call was on its way, or sent a timeout of 0) as an error with a traceback, "Timeout
    occurred", and answers it UNKNOWN, which its client, out of time, never reads. It is the
    caller's doing, as a deadline passing mid-call is (logged by grpclib at INFO): DEBUG. The
    servicer's own errors never reach grpclib's handler, so this line has no other cause."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != "Timeout occurred":
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.msg, record.exc_info, record.exc_text = "a call began past its deadline", None, None
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def _quiet_expired_deadlines() -> None:
    server_log = logging.getLogger("grpclib.server")
    if not any(isinstance(f, _ExpiredDeadline) for f in server_log.filters):
        server_log.addFilter(_ExpiredDeadline())


class _Codec(ProtoCodec):
    """Encodes with dtrio's fast encoder, and passes pre-encoded messages through as they are:
    work items are assembled from the stored bytes of history events (see `workitems`)."""

    def encode(self, message: Any, message_type: Any) -> bytes:
        return message if isinstance(message, bytes) else encode(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        return decode(message_type, data)


_CODEC = _Codec()
# Fields that say which work item a completion is for: all that is kept of one over the limit.
_IDENTITY = ("instance_id", "task_id", "completion_token")
_CHUNK = 1 << 16


class _Service:
    """What grpclib serves: a path -> handler mapping."""

    def __init__(self, mapping: dict[str, grpclib.const.Handler]) -> None:
        self._mapping = mapping

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return self._mapping


def _snake(rpc: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", rpc).lower()


async def _call(rpc: str, method: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Run a servicer method in Trio; its typed errors become gRPC statuses here."""
    try:
        return await method(*args)
    except (GRPCError, StreamTerminatedError):  # already a status, or the caller went away
        raise
    except Exception as exc:
        error = grpc_error(exc)
        if error is None:
            log.exception("%s failed", rpc)
            raise GRPCError(
                grpclib.const.Status.INTERNAL, f"{rpc} failed with an internal error: {exc!r}"
            ) from None
        raise error from None


class _Malformed(GRPCError):
    """A request that is not a well-formed message, with what could be read of its
    identifying fields (None if not even those)."""

    def __init__(self, message: str, identity: Any) -> None:
        super().__init__(grpclib.const.Status.INVALID_ARGUMENT, message)
        self.identity = identity


def _identity(message_type: Any, data: bytes) -> Any:
    skimmer = Skimmer(message_type, _IDENTITY)
    try:
        skimmer.feed(data)
        return skimmer.result()
    except InvalidInput:
        return None


async def _receive(
    stream: grpclib.server.Stream[Any, Any], rpc: str, limit: int, too_large: bool
) -> tuple[Any, int]:
    """The request and its size in bytes.

    Read here rather than by grpclib, which buffers a message of any size before decoding it.
    A request over `limit` is refused unread, unless the servicer takes it `too_large`: then it
    is read through in chunks, and only its identifying fields are kept. A malformed one of
    those raises `_Malformed` with whatever identifies it.
    """
    # grpclib's own attributes: it offers no way to see a message's size before buffering it.
    raw, message_type = stream._stream, stream._recv_type

    async def read(size: int) -> bytes:
        try:
            data = await raw.recv_data(size)
        except AssertionError:  # how grpclib says the stream ended before `size` bytes
            data = b""
        if len(data) < size:
            raise MalformedMessage(f"{rpc}: the request ended before its declared length")
        return data

    try:
        header = await read(5)
        compressed, size = struct.unpack(">?I", header)
        if compressed:
            raise GRPCError(grpclib.const.Status.UNIMPLEMENTED,
                            f"{rpc}: compressed messages are not supported")
        if size <= limit:
            data = await read(size)
            try:
                return _CODEC.decode(data, message_type), size
            except InvalidInput as exc:
                if too_large:
                    raise _Malformed(str(exc), _identity(message_type, data)) from None
                raise
        if not too_large:
            raise GRPCError(grpclib.const.Status.RESOURCE_EXHAUSTED,
                            f"{rpc}: the request of {size} bytes exceeds this sidecar's limit "
                            f"of {limit} bytes per message (--max-message-size)")
        skimmer = Skimmer(message_type, _IDENTITY)
        for start in range(0, size, _CHUNK):
            skimmer.feed(await read(min(_CHUNK, size - start)))
        return skimmer.result(), size
    except InvalidInput as exc:
        raise GRPCError(grpclib.const.Status.INVALID_ARGUMENT, str(exc)) from None


def _unary(
    aio: SteppedLoop, rpc: str, method: Callable[..., Awaitable[Any]], limit: int,
    too_large: Callable[..., Awaitable[Any]] | None,
    malformed: Callable[..., Awaitable[Any]] | None,
) -> Callable[[Any], Awaitable[None]]:
    to_trio = aio.run_trio

    async def handle(stream: grpclib.server.Stream[Any, Any]) -> None:
        try:
            request, size = await _receive(stream, rpc, limit, too_large is not None)
        except _Malformed as exc:
            if malformed is not None and exc.identity is not None:
                await to_trio(_call, rpc, malformed, exc.identity)
            raise GRPCError(exc.status, exc.message) from None
        if size > limit:
            assert too_large is not None
            reply = await to_trio(_call, rpc, too_large, request, size, limit)
        else:
            reply = await to_trio(_call, rpc, method, request)
        await stream.send_message(reply)

    return handle


class _Outbox:
    """The messages a Trio method streams, written out by one asyncio task.

    Crossing from Trio to asyncio for every message costs several times what sending it does:
    the Trio side only appends (both run in one thread), and waits only while `HIGH` messages
    are queued. A failure to write reaches the Trio side at its next send (as
    `trio.BrokenResourceError` if the writer was cancelled: the RPC is ending).
    """

    HIGH = 64

    def __init__(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        self._stream = stream
        self._queue: collections.deque[Any] = collections.deque()
        self._more = asyncio.Event()
        self._room: trio.Event | None = None
        self._error: BaseException | None = None
        self._done = False

    async def send(self, message: Any) -> None:
        """Queue `message` (Trio side)."""
        if self._error is not None:
            await self._fail()
        self._queue.append(message)
        self._more.set()
        if len(self._queue) >= self.HIGH:
            self._room = room = trio.Event()
            await room.wait()
            if self._error is not None:
                await self._fail()

    async def _fail(self) -> None:
        if isinstance(self._error, Exception):
            raise self._error
        # asyncio's cancellation is no exception for Trio code to see: the RPC is ending, and
        # the method is being cancelled, unless it ran outside its call.
        await trio.lowlevel.checkpoint_if_cancelled()
        raise trio.BrokenResourceError("the stream was closed") from None

    def close(self) -> None:
        """No more messages: the writer returns once the queue is written."""
        self._done = True
        self._more.set()

    async def write(self) -> None:
        """Write queued messages until closed and empty (asyncio side)."""
        try:
            while True:
                while self._queue:
                    await self._stream.send_message(self._queue.popleft())
                    if self._room is not None and len(self._queue) <= self.HIGH // 2:
                        self._room.set()
                        self._room = None
                if self._done:
                    return
                self._more.clear()
                await self._more.wait()
        except BaseException as exc:
            self._error = exc
            if self._room is not None:
                self._room.set()
            raise


def _server_stream(
    aio: SteppedLoop, rpc: str, method: Callable[..., Awaitable[Any]], limit: int
) -> Callable[[Any], Awaitable[None]]:
    async def handle(stream: grpclib.server.Stream[Any, Any]) -> None:
        request, _ = await _receive(stream, rpc, limit, False)
        outbox = _Outbox(stream)
        writer = asyncio.get_running_loop().create_task(outbox.write())
        try:
            await aio.run_trio(_call, rpc, method, request, outbox.send)
        except BaseException:
            writer.cancel()
            raise
        # The RPC ends only after what the method queued is written.
        outbox.close()
        await writer

    return handle


def _unimplemented(rpc: str) -> Callable[[Any], Awaitable[None]]:
    async def handle(stream: grpclib.server.Stream[Any, Any]) -> None:
        raise GRPCError(
            grpclib.const.Status.UNIMPLEMENTED, f"{rpc} is not implemented by this dtrio sidecar"
        )

    return handle


def handlers(
    servicer: object, aio: SteppedLoop, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
) -> dict[str, grpclib.const.Handler]:
    """grpclib handlers for every TaskHubSidecarService RPC, each running `servicer`'s method
    in Trio through `aio`.

    A request over `max_message_size` bytes is refused, unless the servicer has a method named
    `<rpc>_too_large(request, size, limit)`: that one gets the request's identifying fields.
    A malformed request of such an RPC is refused too, after `<rpc>_malformed(request)` (if the
    servicer has one) got what could be read of those fields.
    """
    mapping = {}
    for path, handler in TaskHubSidecarServiceBase().__mapping__().items():
        rpc = path.rsplit("/", 1)[1]
        method = getattr(servicer, _snake(rpc), None)
        if method is None:
            func = _unimplemented(rpc)
        elif handler.cardinality is grpclib.const.Cardinality.UNARY_STREAM:
            func = _server_stream(aio, rpc, method, max_message_size)
        else:
            too_large = getattr(servicer, f"{_snake(rpc)}_too_large", None)
            malformed = getattr(servicer, f"{_snake(rpc)}_malformed", None)
            func = _unary(aio, rpc, method, max_message_size, too_large, malformed)
        mapping[path] = grpclib.const.Handler(
            func, handler.cardinality, handler.request_type, handler.reply_type
        )
    return mapping


async def _bind(host: str, port: int) -> socket.socket:
    """A bound socket, so that the port is known (port 0) and a taken one fails here, plainly."""
    if not 0 <= port <= 65535:
        raise InvalidInput(f"cannot listen on {host}:{port}: a port is a number from 0 to 65535 "
                           "(0: any free port)")
    try:
        family, kind, proto, _, address = (await trio.socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ))[0]
    except socket.gaierror as exc:
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: unknown host {host!r} "
                                 f"({exc.strerror})") from None
    # IPPROTO_TCP, not 0: asyncio and grpclib turn on TCP_NODELAY only for sockets saying so,
    # and without it every reply waits 40 ms for the client's delayed ACK.
    sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


async def serve_grpc(
    servicer: object,
    host: str,
    port: int,
    *,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS,
    door: Door = OPEN,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve TaskHubSidecarService until cancelled; `started()` gives the bound port.

    Over TLS when `door.ssl` is set; with `door.token`, every call but Hello must carry it.
    A connection may have `max_concurrent_streams` calls open at once.
    """
    _quiet_expired_deadlines()
    # The server closes the socket when it closes; `with` covers a failure to start it.
    with await _bind(host, port) as sock:
        async with open_stepped_loop() as aio:
            server = await aio.run(_start(
                handlers(servicer, aio, max_message_size), sock, door, max_concurrent_streams))
            try:
                task_status.started(sock.getsockname()[1])
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + CLOSE_TIMEOUT
                    await aio.run(_close(server, aio))


class _Protocol(H2Protocol):
    """grpclib's HTTP/2 protocol, telling each client how many streams its connection may open
    in the very first SETTINGS frame, and enforcing that from the start. Lowered by a later
    frame instead, the limit would drop under a client already using more, and h2 would close
    the connection when it opened the next (grpc-core clients do just that)."""

    def __init__(self, made: H2Protocol, max_streams: int) -> None:
        super().__init__(made.handler, made.config, made.h2_config)
        self._max_streams = max_streams

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # What grpclib's own does (the socket's TCP_NODELAY aside: asyncio sets it), with the
        # limit set before h2 sends its settings. grpclib offers no setting for it.
        h2_conn = H2Connection(config=self.h2_config)
        h2_conn.local_settings.update({SettingCodes.MAX_CONCURRENT_STREAMS: self._max_streams})
        h2_conn.local_settings.acknowledge()
        h2_conn.initiate_connection()
        initial = h2_conn.local_settings.initial_window_size
        if self.config.http2_connection_window_size != initial:
            h2_conn.increment_flow_control_window(
                self.config.http2_connection_window_size - initial)
        if self.config.http2_stream_window_size != initial:
            h2_conn.update_settings(
                {SettingCodes.INITIAL_WINDOW_SIZE: self.config.http2_stream_window_size})
        self.connection = Connection(h2_conn, transport, config=self.config)  # type: ignore[arg-type]
        self.connection.flush()
        self.connection.initialize()
        self.processor = EventsProcessor(self.handler, self.connection)

    def data_received(self, data: bytes) -> None:
        try:
            super().data_received(data)
        except UnicodeDecodeError:
            # h2 reads header values as ASCII, as gRPC's text metadata is. Other bytes end the
            # connection, as grpclib ends it on any other HTTP/2 protocol error, rather than
            # escaping to asyncio, which would log an error with a traceback.
            log.debug("closed a connection whose client sent a header that is not ASCII")
            self.processor.close("a header that is not ASCII")


class _Server(grpclib.server.Server):
    """grpclib's server, with a limit on the streams of each connection."""

    def __init__(self, mapping: dict[str, grpclib.const.Handler], max_streams: int) -> None:
        super().__init__([_Service(mapping)], codec=_CODEC)
        self._max_streams = max_streams

    def _protocol_factory(self) -> H2Protocol:
        return _Protocol(super()._protocol_factory(), self._max_streams)


async def _start(
    mapping: dict[str, grpclib.const.Handler], sock: socket.socket, door: Door,
    max_streams: int,
) -> grpclib.server.Server:
    server = _Server(mapping, max_streams)
    if door.token is not None:
        listen(server, RecvRequest, TokenCheck(door.token))
    await server.start(sock=sock, ssl=door.ssl)
    return server


async def _close(server: grpclib.server.Server, aio: SteppedLoop) -> None:
    server.close()  # stops listening, and cancels the calls in flight
    # Their clients would otherwise wait for a reply until their deadline, if they set one:
    # with the connection gone they see UNAVAILABLE at once, as from a server that stopped.
    aio.close_connections()
    await server.wait_closed()
