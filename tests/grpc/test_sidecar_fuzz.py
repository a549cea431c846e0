"""Hostile input to every RPC of `python -m dtrio serve`, over a real socket, found by
hypothesis: random bytes, byte-level mutations of valid requests, well-formed requests whose
fields hold random values, and bodies of bad gRPC frames (compressed, lengths that lie, several
messages in a unary call). The sidecar never answers with an internal error (UNKNOWN,
INTERNAL) or drops the connection, never hangs on a call that does not wait by design, never
logs an error, stays up, and a request it refuses changes nothing in the store.

The store is compared without its scheduling columns (leases, visibility times, attempts):
a work-item stream that a fuzzed GetWorkItems opened gives back what it leased when its
deadline ends it, and that may land during a later example.

Examples per property and RPC come from the hypothesis profile (tests/conftest.py): "ci" by
default, deterministic; HYPOTHESIS_PROFILE=long for a longer run, seeded at random.
"""

from __future__ import annotations

import socket
import sqlite3
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
import sdk_app as app
from durabletask import client as sdk_client
from durabletask import worker as sdk_worker
from durabletask.internal import orchestrator_service_pb2 as sdk_pb
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import json_format, symbol_database
from hypothesis import given
from hypothesis import strategies as st
from sidecar_process import listening_port, serve

SERVICE = sdk_pb.DESCRIPTOR.services_by_name["TaskHubSidecarService"]
RPCS = [method.name for method in SERVICE.methods]
# These wait by design (for an instance, or for work): a deadline ends them.
WAITING = {"WaitForInstanceStart", "WaitForInstanceCompletion", "GetWorkItems"}
WAIT_DEADLINE = 0.05
CALL_DEADLINE = 10.0
CODES = {code.value[0]: code for code in grpc.StatusCode}
NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE}
# Columns that say when work may next be leased and by whom, not what is stored.
SCHEDULING = {"ready_at", "lock_owner", "lock_token", "lock_expires", "available_at", "attempt",
              "visible_at"}
# Examples run, per property and RPC: the README's Reliability table records them.
RUN: Counter[tuple[str, str]] = Counter()


@dataclass
class Sidecar:
    process: subprocess.Popen[str]
    address: str
    db: Path
    log: Path
    channel: grpc.Channel

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as conn:
            tables = [r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
            found = {}
            for table in tables:
                columns = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")
                           if r[1] not in SCHEDULING]
                found[table] = sorted(conn.execute(
                    f"SELECT {', '.join(columns)} FROM {table}").fetchall(), key=repr)
        conn.close()
        return found

    def call(self, rpc: str, request: bytes) -> grpc.StatusCode:
        path = f"/TaskHubSidecarService/{rpc}"
        timeout = WAIT_DEADLINE if rpc in WAITING else CALL_DEADLINE
        try:
            if SERVICE.methods_by_name[rpc].server_streaming:
                for _ in self.channel.unary_stream(path)(request, timeout=timeout):
                    pass
            else:
                self.channel.unary_unary(path)(request, timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    where = tmp_path_factory.mktemp("fuzz")
    db, log = where / "store.sqlite3", where / "sidecar.log"
    process = serve(log, "--port", "0", "--db", str(db))
    channel = None
    try:
        address = f"127.0.0.1:{listening_port(process, log)}"
        seed(address)
        channel = grpc.insecure_channel(address)
        yield Sidecar(process, address, db, log, channel)
        assert process.poll() is None, log.read_text()[-3000:]
    finally:
        if channel is not None:
            channel.close()
        process.terminate()
        process.wait(timeout=30)
    total: Counter[str] = Counter()
    for (prop, _), n in RUN.items():
        total[prop] += n
    print(f"\nexamples run, over {len(RPCS)} RPCs: {dict(total)}")
    errors = [line for line in log.read_text().splitlines()
              if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback")]
    assert errors == [], log.read_text()[-5000:]


def seed(address: str) -> None:
    """Instances in each state for valid requests to name: completed, failed, waiting for an
    event; and an entity with a signal waiting. The worker leaves before fuzzing starts, so
    that nothing changes the store but the fuzzed requests."""
    client = sdk_client.TaskHubGrpcClient(host_address=address)
    worker = sdk_worker.TaskHubGrpcWorker(host_address=address)
    for orchestrator in app.ORCHESTRATORS:
        worker.add_orchestrator(orchestrator)
    for activity in app.ACTIVITIES:
        worker.add_activity(activity)
    worker.start()
    try:
        client.schedule_new_orchestration(app.sequence, instance_id="done")
        client.wait_for_orchestration_completion("done", timeout=30)
        client.schedule_new_orchestration(app.fails, input="boom", instance_id="failed")
        client.wait_for_orchestration_completion("failed", timeout=30)
        client.schedule_new_orchestration(app.approval, instance_id="waiting")
        client.wait_for_orchestration_start("waiting", timeout=30)
    finally:
        worker.stop()
    from durabletask.entities import EntityInstanceId

    client.signal_entity(EntityInstanceId("counter", "a"), "add", input=1)


TIME = "2026-01-01T00:00:00Z"
ACTIONS = [
    {"id": 1, "scheduleTask": {"name": "hello", "input": '"x"'}},
    {"id": 2, "createTimer": {"fireAt": TIME}},
    {"id": 3, "createSubOrchestration": {"instanceId": "child", "name": "sequence"}},
    {"id": 4, "sendEvent": {"instance": {"instanceId": "waiting"}, "name": "approval"}},
    {"id": 5, "sendEntityMessage": {"entityOperationSignaled": {
        "requestId": "r1", "operation": "add", "targetInstanceId": "@counter@a"}}},
    {"id": 6, "completeOrchestration": {"orchestrationStatus": "ORCHESTRATION_STATUS_COMPLETED",
                                        "result": '"ok"'}},
]
# Valid requests for each RPC, as the SDKs send them (protobuf JSON).
VALID: dict[str, list[dict[str, Any]]] = {
    "Hello": [{}],
    "StartInstance": [{"name": "sequence", "instanceId": "fresh", "input": '"in"',
                       "scheduledStartTimestamp": TIME, "tags": {"k": "v"},
                       "orchestrationIdReusePolicy": {"replaceableStatus": [
                           "ORCHESTRATION_STATUS_COMPLETED"]}}],
    "GetInstance": [{"instanceId": "done", "getInputsAndOutputs": True}],
    "RewindInstance": [{"instanceId": "failed", "reason": "again"}],
    "RestartInstance": [{"instanceId": "done", "restartWithNewInstanceId": True}],
    "WaitForInstanceStart": [{"instanceId": "waiting"}],
    "WaitForInstanceCompletion": [{"instanceId": "done", "getInputsAndOutputs": True}],
    "RaiseEvent": [{"instanceId": "waiting", "name": "approval", "input": "true"}],
    "TerminateInstance": [{"instanceId": "waiting", "output": '"stop"', "recursive": True}],
    "SuspendInstance": [{"instanceId": "waiting", "reason": "pause"}],
    "ResumeInstance": [{"instanceId": "waiting", "reason": "go"}],
    "QueryInstances": [{"query": {"runtimeStatus": ["ORCHESTRATION_STATUS_RUNNING"],
                                  "createdTimeFrom": TIME, "maxInstanceCount": 10,
                                  "instanceIdPrefix": "d", "fetchInputsAndOutputs": True}}],
    "ListInstanceIds": [{"runtimeStatus": ["ORCHESTRATION_STATUS_COMPLETED"], "pageSize": 5,
                         "completedTimeFrom": TIME}],
    "PurgeInstances": [{"instanceId": "done", "recursive": True},
                       {"purgeInstanceFilter": {"createdTimeFrom": TIME, "runtimeStatus": [
                           "ORCHESTRATION_STATUS_FAILED"]}},
                       {"instanceBatch": {"instanceIds": ["done", "failed"]}}],
    "GetWorkItems": [{"maxConcurrentOrchestrationWorkItems": 1,
                      "maxConcurrentActivityWorkItems": 1}],
    "CompleteActivityTask": [{"instanceId": "waiting", "taskId": 1, "result": '"r"',
                              "completionToken": "tok"},
                             {"instanceId": "failed", "taskId": 0, "completionToken": "tok",
                              "failureDetails": {"errorType": "E", "errorMessage": "m"}}],
    "CompleteOrchestratorTask": [{"instanceId": "waiting", "actions": ACTIONS,
                                  "customStatus": '"s"', "completionToken": "tok"}],
    "CompleteEntityTask": [{"entityState": '"st"', "completionToken": "tok", "results": [
        {"success": {"result": "1", "startTimeUtc": TIME, "endTimeUtc": TIME}},
        {"failure": {"failureDetails": {"errorType": "E", "errorMessage": "m"}}}],
        "actions": [{"sendSignal": {"instanceId": "@counter@b", "name": "add"}}]}],
    "StreamInstanceHistory": [{"instanceId": "done", "forWorkItemProcessing": True}],
    "CreateTaskHub": [{}],
    "DeleteTaskHub": [{}],
    "SignalEntity": [{"instanceId": "@counter@a", "name": "add", "input": "2",
                      "requestId": "req", "scheduledTime": TIME}],
    "GetEntity": [{"instanceId": "@counter@a", "includeState": True}],
    "QueryEntities": [{"query": {"instanceIdStartsWith": "@counter@", "includeState": True,
                                 "pageSize": 3}}],
    "CleanEntityStorage": [{"removeEmptyEntities": True, "releaseOrphanedLocks": True}],
    "AbandonTaskActivityWorkItem": [{"completionToken": "tok"}],
    "AbandonTaskOrchestratorWorkItem": [{"completionToken": "tok"}],
    "AbandonTaskEntityWorkItem": [{"completionToken": "tok"}],
    "SkipGracefulOrchestrationTerminations": [{"instanceBatch": {"instanceIds": ["waiting"]}}],
}
assert set(VALID) == set(RPCS), set(RPCS) ^ set(VALID)


def request_class(rpc: str) -> Any:
    return symbol_database.Default().GetSymbol(
        SERVICE.methods_by_name[rpc].input_type.full_name)


def valid(rpc: str) -> list[bytes]:
    return [json_format.ParseDict(d, request_class(rpc)()).SerializeToString()
            for d in VALID[rpc]]


@st.composite
def mutated(draw: st.DrawFn, rpc: str) -> bytes:
    """A valid request with a few byte-level edits: a byte set, bits flipped, bytes inserted,
    a run deleted or repeated, the end cut off."""
    data = bytearray(draw(st.sampled_from(valid(rpc))))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        edit = draw(st.sampled_from(["set", "flip", "insert", "delete", "repeat", "cut"]))
        if edit in ("set", "flip") and at < len(data):
            if edit == "set":
                data[at] = draw(st.integers(0, 255))
            else:
                data[at] ^= 1 << draw(st.integers(0, 7))
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif edit == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        elif edit == "repeat":
            data[at:at] = data[at:at + draw(st.integers(1, 16))]
        elif edit == "cut":
            del data[at:]
    return bytes(data)


_FD = pb_descriptor.FieldDescriptor
_INTS = {
    _FD.TYPE_INT32: (-(2**31), 2**31 - 1), _FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    _FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1), _FD.TYPE_UINT32: (0, 2**32 - 1),
    _FD.TYPE_FIXED32: (0, 2**32 - 1), _FD.TYPE_INT64: (-(2**63), 2**63 - 1),
    _FD.TYPE_SINT64: (-(2**63), 2**63 - 1), _FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    _FD.TYPE_UINT64: (0, 2**64 - 1), _FD.TYPE_FIXED64: (0, 2**64 - 1),
}
IDS = st.sampled_from(["done", "failed", "waiting", "@counter@a", "", "tok"])


def _scalar(field: pb_descriptor.FieldDescriptor) -> st.SearchStrategy[Any]:
    if field.type == _FD.TYPE_STRING:
        return st.one_of(IDS, st.text(max_size=40), st.text(max_size=300))
    if field.type == _FD.TYPE_BYTES:
        return st.binary(max_size=40)
    if field.type == _FD.TYPE_BOOL:
        return st.booleans()
    if field.type in (_FD.TYPE_DOUBLE, _FD.TYPE_FLOAT):
        return st.floats(width=32 if field.type == _FD.TYPE_FLOAT else 64)
    if field.type == _FD.TYPE_ENUM:
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]),
                         st.integers(-(2**31), 2**31 - 1))
    low, high = _INTS[field.type]
    return st.one_of(st.integers(-2, 200).filter(lambda n: low <= n <= high),
                     st.integers(low, high))


@st.composite
def message(draw: st.DrawFn, descriptor: pb_descriptor.Descriptor, depth: int = 0) -> Any:
    """A well-formed message of `descriptor` with random values in some of its fields (nested
    messages three levels deep at most)."""
    made = symbol_database.Default().GetSymbol(descriptor.full_name)()
    fields = [f for f in descriptor.fields
              if f.type != _FD.TYPE_MESSAGE or depth < 3]
    for field in draw(st.lists(st.sampled_from(fields), unique=True, max_size=6)) if fields else []:
        repeated = field.is_repeated
        if field.type == _FD.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            key, value = field.message_type.fields_by_name["key"], \
                field.message_type.fields_by_name["value"]
            for k in draw(st.lists(_scalar(key), max_size=3, unique=True)):
                if value.type == _FD.TYPE_MESSAGE:
                    getattr(made, field.name)[k].CopyFrom(
                        draw(message(value.message_type, depth + 1)))
                else:
                    getattr(made, field.name)[k] = draw(_scalar(value))
        elif field.type == _FD.TYPE_MESSAGE:
            count = draw(st.integers(0, 3)) if repeated else 1
            for _ in range(count):
                part = draw(message(field.message_type, depth + 1))
                target = getattr(made, field.name)
                if repeated:
                    target.add().CopyFrom(part)
                else:
                    target.CopyFrom(part)
        elif repeated:
            getattr(made, field.name).extend(draw(st.lists(_scalar(field), max_size=3)))
        else:
            setattr(made, field.name, draw(_scalar(field)))
    return made


def fields_set(rpc: str) -> st.SearchStrategy[bytes]:
    descriptor = SERVICE.methods_by_name[rpc].input_type
    return message(descriptor).map(lambda m: m.SerializeToString())


def check(sidecar: Sidecar, prop: str, rpc: str, request: bytes) -> None:
    RUN[prop, rpc] += 1
    before = sidecar.snapshot()
    code = sidecar.call(rpc, request)
    assert code not in NEVER, (rpc, request, code)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        assert rpc in WAITING, (rpc, request, "a call that does not wait hung")
        return
    assert sidecar.process.poll() is None, sidecar.log.read_text()[-3000:]
    if code != grpc.StatusCode.OK:
        assert sidecar.snapshot() == before, (rpc, request, code)


@pytest.mark.parametrize("rpc", RPCS)
def test_random_bytes_to_every_rpc(sidecar: Sidecar, rpc: str) -> None:
    @given(st.binary(max_size=300))
    def run(request: bytes) -> None:
        check(sidecar, "random bytes", rpc, request)

    run()


@pytest.mark.parametrize("rpc", RPCS)
def test_mutations_of_valid_requests_to_every_rpc(sidecar: Sidecar, rpc: str) -> None:
    @given(mutated(rpc))
    def run(request: bytes) -> None:
        check(sidecar, "mutated valid requests", rpc, request)

    run()


@pytest.mark.parametrize("rpc", RPCS)
def test_random_field_values_to_every_rpc(sidecar: Sidecar, rpc: str) -> None:
    @given(fields_set(rpc))
    def run(request: bytes) -> None:
        check(sidecar, "random field values", rpc, request)

    run()


class RawClient:
    """An HTTP/2 client that writes a request's body as given: the gRPC frame (compression
    flag, declared length) is the fuzzer's to get wrong too."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=CALL_DEADLINE)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())

    def call(self, rpc: str, body: bytes, timeout: str | None = None) -> int:
        """The grpc-status of `rpc` given `body` (and `timeout` as its grpc-timeout)."""
        stream = self.conn.get_next_available_stream_id()
        headers = [(":method", "POST"), (":scheme", "http"), (":authority", "dtrio"),
                   (":path", f"/TaskHubSidecarService/{rpc}"), ("te", "trailers"),
                   ("content-type", "application/grpc")]
        if timeout is None and rpc in WAITING:
            timeout = f"{int(WAIT_DEADLINE * 1000)}m"
        if timeout is not None:
            headers.append(("grpc-timeout", timeout))
        self.conn.send_headers(stream, headers)
        self.conn.send_data(stream, body, end_stream=True)
        self.sock.sendall(self.conn.data_to_send())
        status = None
        while True:
            data = self.sock.recv(65536)
            assert data, "the sidecar closed the connection"
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id)
                if getattr(event, "stream_id", None) != stream:
                    continue
                if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    found = dict(event.headers).get(b"grpc-status")
                    status = int(found) if found is not None else status
                elif isinstance(event, h2.events.StreamReset):
                    raise AssertionError(f"{rpc}: stream reset ({event.error_code!r})")
                elif isinstance(event, h2.events.StreamEnded):
                    self.sock.sendall(self.conn.data_to_send())
                    assert status is not None, f"{rpc}: no grpc-status"
                    return status
            self.sock.sendall(self.conn.data_to_send())


def test_a_header_that_is_not_ascii_ends_that_connection_only(sidecar: Sidecar) -> None:
    # Found by fuzzing: h2 could not decode it, and asyncio logged an error with a traceback
    # (which the module's sidecar fixture looks for in the log).
    client = RawClient(sidecar.address)
    client.conn.config.validate_outbound_headers = False
    stream = client.conn.get_next_available_stream_id()
    client.conn.send_headers(stream, [
        (b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"dtrio"),
        (b":path", b"/TaskHubSidecarService/Hello"), (b"te", b"trailers"),
        (b"content-type", b"application/grpc"), (b"x-note", b"caf\xc3\xa9")])
    client.sock.sendall(client.conn.data_to_send())
    with pytest.raises(OSError):
        while client.sock.recv(65536):
            pass
        raise ConnectionResetError  # an orderly close is as good
    client.sock.close()
    assert sidecar.call("Hello", b"") == grpc.StatusCode.OK


def test_a_call_past_its_deadline_when_it_arrives_is_no_error(
    sidecar: Sidecar, raw: RawClient,
) -> None:
    # Found by fuzzing, on a loaded machine: grpclib logged such a call as an error with a
    # traceback (which the module's sidecar fixture looks for in the log). Its answer is
    # grpclib's, UNKNOWN, which a gRPC client never reads: its own deadline passed first.
    for rpc in ("GetInstance", "WaitForInstanceCompletion"):
        request = json_format.ParseDict({"instanceId": "done"}, request_class(rpc)())
        body = request.SerializeToString()
        assert raw.call(rpc, b"\0" + len(body).to_bytes(4, "big") + body, timeout="0m") == 2
    assert sidecar.call("Hello", b"") == grpc.StatusCode.OK


@st.composite
def framed(draw: st.DrawFn, rpc: str) -> bytes:
    """A body of gRPC frames, each made of a compression flag, a declared length (that of its
    message, or not) and a message (valid, mutated or random)."""
    body = b""
    for _ in range(draw(st.integers(0, 3))):
        payload = draw(st.one_of(st.sampled_from(valid(rpc)), mutated(rpc),
                                 st.binary(max_size=64)))
        flag = draw(st.sampled_from([0, 0, 0, 1, 2, 255]))
        length = draw(st.one_of(st.just(len(payload)), st.integers(0, 2**32 - 1)))
        body += bytes([flag]) + length.to_bytes(4, "big") + payload
    return body + draw(st.binary(max_size=6))


@pytest.fixture(scope="module")
def raw(sidecar: Sidecar) -> Iterator[RawClient]:
    client = RawClient(sidecar.address)
    yield client
    client.sock.close()


@pytest.mark.parametrize("rpc", RPCS)
def test_bad_grpc_frames_to_every_rpc(sidecar: Sidecar, raw: RawClient, rpc: str) -> None:
    @given(framed(rpc))
    def run(body: bytes) -> None:
        RUN["bad gRPC frames", rpc] += 1
        before = sidecar.snapshot()
        status = raw.call(rpc, body)
        code = CODES[status]
        assert code not in NEVER, (rpc, body, code)
        if code not in (grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED):
            assert sidecar.snapshot() == before, (rpc, body, status)

    run()


def test_the_valid_requests_are_served(sidecar: Sidecar) -> None:
    """The seeds of the mutations are requests the sidecar takes (or refuses for the state of
    the store, not their form), and it still answers Hello after all of the above."""
    for rpc in RPCS:
        for request in valid(rpc):
            code = sidecar.call(rpc, request)
            assert code not in NEVER | {grpc.StatusCode.INVALID_ARGUMENT}, (rpc, code)
    assert sidecar.call("Hello", b"") == grpc.StatusCode.OK
