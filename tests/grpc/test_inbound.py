"""Strict decoding of requests and skimming of oversized ones, without sockets."""

from __future__ import annotations

import time

import pytest
from durabletask.internal import orchestrator_service_pb2 as sdk
from google.protobuf import wrappers_pb2

from dtrio import _pb as pb
from dtrio.grpc.inbound import MalformedMessage, Skimmer, decode
from dtrio.wire import varint


def sdk_response() -> bytes:
    return sdk.OrchestratorResponse(
        instanceId="i1", completionToken="tok", actions=[sdk.OrchestratorAction(
            id=1, scheduleTask=sdk.ScheduleTaskAction(
                name="a", input=wrappers_pb2.StringValue(value='"x"'), tags={"k": "v"})),
        ]).SerializeToString()


def test_well_formed_messages_decode_as_the_sdk_wrote_them() -> None:
    data = sdk_response()
    assert bytes(decode(pb.OrchestratorResponse, data)) == data


@pytest.mark.parametrize(("data", "says"), [
    (b"\x0a\x05ab", "field 1 runs past the end"),  # a string shorter than its length
    (b"\xff\xff\xff", "runs past the end"),  # a key that never ends
    (b"\x0b", "wire type 3"),  # a group, which proto3 never uses
    (b"\x08\x05", "field 1 (instance_id) has wire type 0, not 2"),
    (b"\x12\x03\x12\x05a", "nested OrchestratorAction"),
    (b"\x0a\x02\xc3\x28", "utf-8"),
])
def test_malformed_messages_say_what_is_wrong(data: bytes, says: str) -> None:
    with pytest.raises(MalformedMessage, match="malformed OrchestratorResponse message") as caught:
        decode(pb.OrchestratorResponse, data)
    assert says in str(caught.value)


@pytest.mark.parametrize("seconds", [2**62, -(2**62), 253402300800, -62135596801, 2**63 - 1])
def test_a_timestamp_beyond_the_years_1_to_9999_is_named(seconds: int) -> None:
    # Found by fuzzing the sidecar: Python's own "date value out of range" or "Python int too
    # large to convert to C int" said nothing of what was wrong.
    request = sdk.CreateInstanceRequest(name="n")
    request.scheduledStartTimestamp.seconds = seconds
    says = (f"field 5 \\(scheduled_start_timestamp\\): a timestamp {seconds} seconds from "
            "1970 is outside the years 1 to 9999")
    with pytest.raises(MalformedMessage, match=says):
        decode(pb.CreateInstanceRequest, request.SerializeToString())


def test_a_number_for_a_packed_list_is_not_a_list() -> None:
    # betterproto2 alone would make maxConcurrentOrchestrationWorkItems the list [97, 98].
    with pytest.raises(MalformedMessage, match="wire type 2, not 0"):
        decode(pb.GetWorkItemsRequest, b"\x0a\x02ab")


def test_nesting_is_bounded() -> None:
    failure = b""
    # innerFailure (field 4) in innerFailure ...: too deep to build via the SDK
    for _ in range(150):
        failure = b"\x22" + varint(len(failure)) + failure
    response = b"\x22" + varint(len(failure)) + failure  # ActivityResponse.failureDetails
    with pytest.raises(MalformedMessage, match="nested more than 100 deep"):
        decode(pb.ActivityResponse, response)


def test_unknown_fields_are_dropped_in_linear_time() -> None:
    action = sdk.OrchestratorAction(id=1, scheduleTask=sdk.ScheduleTaskAction(name="a"))
    nested = action.SerializeToString() + b"\x98\x06\x01"  # field 99 inside the action
    data = b"\x0a\x01i" + b"\x12" + bytes([len(nested)]) + nested + b"\x98\x06\x02"
    message = decode(pb.OrchestratorResponse, data)
    assert message.instance_id == "i" and message.actions[0].schedule_task.name == "a"
    assert not message._unknown_fields and not message.actions[0]._unknown_fields
    # Half a million unknown fields: betterproto2 alone takes minutes over them.
    started = time.perf_counter()
    assert decode(pb.GetInstanceRequest, b"x" * (1 << 20)) == pb.GetInstanceRequest()
    assert time.perf_counter() - started < 10


@pytest.mark.parametrize("piece", [1, 7, 1 << 14])
def test_a_skimmer_keeps_identifying_fields_of_a_message_fed_in_pieces(piece: int) -> None:
    result = wrappers_pb2.StringValue(value="x" * (1 << 20))
    data = sdk.ActivityResponse(
        instanceId="i1", taskId=7, result=result, completionToken="tok"
    ).SerializeToString()
    skimmer = Skimmer(pb.ActivityResponse, ("instance_id", "task_id", "completion_token"))
    for start in range(0, len(data), piece):
        skimmer.feed(data[start:start + piece])
        assert len(skimmer._pending) <= 1100  # never more than a kept field and its key
    kept = skimmer.result()
    assert kept == pb.ActivityResponse(instance_id="i1", task_id=7, completion_token="tok")


def test_a_skimmer_notices_a_message_cut_short() -> None:
    data = sdk.ActivityResponse(instanceId="i1", taskId=7, result=wrappers_pb2.StringValue(
        value="x" * 100)).SerializeToString()
    skimmer = Skimmer(pb.ActivityResponse, ("instance_id",))
    skimmer.feed(data[:-10])
    with pytest.raises(MalformedMessage, match="runs past the end"):
        skimmer.result()
