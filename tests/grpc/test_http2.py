"""dtrio.grpc.http2, the server side of HTTP/2, without sockets: h2's client, which checks every
frame it receives, plays the peer."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest

from dtrio.grpc import http2

REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"localhost"),
           (b":path", b"/TaskHubSidecarService/Hello"), (b"content-type", b"application/grpc"),
           (b"te", b"trailers")]
RESPONSE = http2.header_block([(b":status", b"200"), (b"content-type", b"application/grpc")])


class Pair:
    """A server connection and an h2 client talking to it."""

    def __init__(self, **server) -> None:
        self.server = http2.ServerConnection(**server)
        self.client = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.client.initiate_connection()
        self.to_server()
        self.to_client()
        self.to_server()

    def to_server(self) -> list[object]:
        return self.server.receive(self.client.data_to_send())

    def to_client(self) -> list[h2.events.Event]:
        return self.client.receive_data(self.server.data_to_send())

    def request(self, body: bytes = b"", **kw) -> int:
        stream_id = self.client.get_next_available_stream_id()
        self.client.send_headers(stream_id, REQUEST, end_stream=not body)
        if body:
            self.client.send_data(stream_id, body, end_stream=True, **kw)
        return stream_id


def of(events, kind):
    return [e for e in events if isinstance(e, kind)]


def test_a_request_and_its_answer() -> None:
    pair = Pair()
    stream_id = pair.request(b"\x00\x00\x00\x00\x02hi")
    events = pair.to_server()
    (request,), (data,) = of(events, http2.Request), of(events, http2.Data)
    assert request.headers[b":path"] == b"/TaskHubSidecarService/Hello" and not request.ended
    assert (data.stream_id, data.data, data.ended) == (stream_id, b"\x00\x00\x00\x00\x02hi", True)
    pair.server.send_headers(stream_id, RESPONSE)
    assert pair.server.send_data(stream_id, b"\x00\x00\x00\x00\x00") == 5
    pair.server.send_headers(stream_id, http2.header_block([(b"grpc-status", b"0")]),
                             end_stream=True)
    events = pair.to_client()
    (response,) = of(events, h2.events.ResponseReceived)
    assert response.headers == [(b":status", b"200"), (b"content-type", b"application/grpc")]
    assert of(events, h2.events.DataReceived)[0].data == b"\x00\x00\x00\x00\x00"
    assert of(events, h2.events.TrailersReceived)[0].headers == [(b"grpc-status", b"0")]
    assert of(events, h2.events.StreamEnded)


def test_repeated_header_blocks_decode_right_as_the_table_changes() -> None:
    pair = Pair()
    paths = [b"/S/A", b"/S/A", b"/S/B", b"/S/A", b"/S/C", b"/S/B", b"/S/B", b"/S/A"]
    seen = []
    for path in paths:
        stream_id = pair.client.get_next_available_stream_id()
        headers = [(k, path if k == b":path" else v) for k, v in REQUEST]
        pair.client.send_headers(stream_id, headers, end_stream=True)
        (request,) = of(pair.to_server(), http2.Request)
        seen.append(request.headers[b":path"])
        pair.server.reset(stream_id)
        pair.to_client()
    assert seen == paths


def test_header_blocks_decode_to_what_was_given() -> None:
    long = "x" * 300 + " ✓ 100%"
    headers = [(b":status", b"415"), (b"grpc-status", b"8"), (b"grpc-message", long.encode())]
    block = http2.header_block(headers)
    assert hpack.Decoder().decode(block, raw=True) == headers
    # Literals without indexing: decoding them leaves the table as it was.
    decoder = hpack.Decoder()
    decoder.decode(block + block)
    assert len(decoder.header_table.dynamic_entries) == 0


def test_requests_without_a_body_large_headers_and_padding() -> None:
    pair = Pair()
    first = pair.request()
    big = REQUEST + [(b"x-big", b"v" * 40_000)]  # h2 splits it with CONTINUATION frames
    second = pair.client.get_next_available_stream_id()
    pair.client.send_headers(second, big, end_stream=True)
    third = pair.request(b"abc", pad_length=7)
    events = pair.to_server()
    requests = of(events, http2.Request)
    assert [(r.stream_id, r.ended) for r in requests] == [(first, True), (second, True),
                                                         (third, False)]
    assert requests[1].headers[b"x-big"] == b"v" * 40_000
    assert of(events, http2.Data) == [http2.Data(third, b"abc", True)]


def test_sending_waits_for_the_clients_window() -> None:
    pair = Pair()
    stream_id = pair.request(b"x")
    pair.to_server()
    body = b"y" * 100_000
    pair.server.send_headers(stream_id, RESPONSE)
    sent = pair.server.send_data(stream_id, body)
    assert sent == 65_535  # h2's default window
    pair.to_client()
    assert pair.server.send_data(stream_id, body[sent:]) == 0
    pair.client.increment_flow_control_window(50_000)
    pair.client.increment_flow_control_window(50_000, stream_id=stream_id)
    assert of(pair.to_server(), http2.WindowOpened)
    sent += pair.server.send_data(stream_id, body[sent:])
    assert sent == 100_000
    received = of(pair.to_client(), h2.events.DataReceived)
    assert sum(len(e.data) for e in received) == 100_000 - 65_535
    assert all(len(e.data) <= 16_384 for e in received)


def test_a_larger_initial_window_opens_every_stream() -> None:
    pair = Pair()
    stream_id = pair.request(b"x")
    pair.to_server()
    pair.client.increment_flow_control_window(1_000_000)
    pair.client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 200_000})
    assert of(pair.to_server(), http2.WindowOpened)
    assert pair.server.send_window(stream_id) == 200_000


def test_received_data_is_given_back_to_the_client() -> None:
    pair = Pair(window=100_000)
    stream_id = pair.client.get_next_available_stream_id()
    pair.client.send_headers(stream_id, REQUEST)
    received = 0
    for _ in range(20):  # 10 x the window in all: the client is never starved
        chunk = b"z" * min(16_384, pair.client.local_flow_control_window(stream_id))
        pair.client.send_data(stream_id, chunk)
        received += sum(len(e.data) for e in of(pair.to_server(), http2.Data))
        pair.to_client()
    assert received == 20 * 16_384


def test_pings_and_resets() -> None:
    pair = Pair()
    pair.client.ping(b"12345678")
    pair.to_server()
    (ack,) = of(pair.to_client(), h2.events.PingAckReceived)
    assert ack.ping_data == b"12345678"
    stream_id = pair.request(b"x")
    pair.to_server()
    pair.client.reset_stream(stream_id)
    assert of(pair.to_server(), http2.Reset) == [http2.Reset(stream_id)]
    assert pair.server.send_data(stream_id, b"late") == 0


def test_streams_over_the_limit_are_refused() -> None:
    pair = Pair(max_streams=2)
    ids = [pair.request(b"x") for _ in range(2)]
    events = pair.to_server()
    # One too many, which h2 would not send: literals leave the client's table as it was.
    extra = ids[-1] + 2
    block = http2.header_block(REQUEST)
    events += pair.server.receive(len(block).to_bytes(3, "big") + bytes((http2.HEADERS, 0x5))
                                  + extra.to_bytes(4, "big") + block)
    assert [r.stream_id for r in of(events, http2.Request)] == ids
    rst = bytes((0, 0, 4, http2.RST_STREAM, 0)) + extra.to_bytes(4, "big")
    assert pair.server.data_to_send() == rst + http2.REFUSED_STREAM.to_bytes(4, "big")


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\n\r\n",
    http2.PREFACE + b"\x00\x40\x01" + b"\x04\x00\x00\x00\x00\x00" + bytes(0x4001),
])
def test_protocol_errors_close_the_connection_saying_why(data: bytes) -> None:
    server = http2.ServerConnection()
    server.data_to_send()
    with pytest.raises(http2.ProtocolError):
        server.receive(data)
    assert server.data_to_send()[3] == http2.GOAWAY
