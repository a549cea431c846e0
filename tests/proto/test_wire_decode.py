"""dtrio.wire.decode must build exactly what betterproto2's parse builds, for every message:
the same fields with the same values and types, in the same order (the encoder walks them in
that order), and the same unknown fields kept. Odd input gets betterproto2's own treatment."""

import warnings

import betterproto2
import pytest
from durabletask.internal import orchestrator_service_pb2 as sdk_pb2
from google.protobuf import wrappers_pb2
from test_wire import MESSAGES, fill

from dtrio import _pb as pb
from dtrio.wire import decode, encode, varint

pytestmark = pytest.mark.filterwarnings(r"ignore:.* is deprecated:DeprecationWarning")

HISTORY_KINDS = sum(1 for m in pb.HistoryEvent._betterproto.meta_by_field_name.values() if m.group)


def same(decoded, parsed) -> None:
    """Field for field, recursively: values, their types and the order of the fields."""
    assert type(decoded) is type(parsed)
    if isinstance(parsed, betterproto2.Message):
        assert list(decoded.__dict__) == list(parsed.__dict__)
        for name, value in parsed.__dict__.items():
            same(decoded.__dict__[name], value)
    elif isinstance(parsed, list):
        assert len(decoded) == len(parsed)
        for a, b in zip(decoded, parsed, strict=True):
            same(a, b)
    elif isinstance(parsed, dict):
        assert list(decoded) == list(parsed)
        for key, value in parsed.items():
            same(decoded[key], value)
    else:
        assert decoded == parsed


def check(cls, data: bytes):
    decoded = decode(cls, data)
    same(decoded, cls.parse(data))
    return decoded


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("variant", range(4))
def test_decode_matches_betterproto(cls, variant):
    data = encode(fill(cls, variant))
    assert encode(check(cls, data)) == data


def test_every_history_event_kind():
    for variant in range(HISTORY_KINDS):
        check(pb.HistoryEvent, encode(fill(pb.HistoryEvent, variant)))


def test_empty_messages():
    for cls in MESSAGES:
        check(cls, b"")


def test_bytes_the_official_sdk_writes():
    # protobuf (not betterproto2) writes repeated numbers packed, and defaults not at all.
    request = sdk_pb2.OrchestratorResponse(
        instanceId="i", completionToken="t",
        actions=[sdk_pb2.OrchestratorAction(id=-7, scheduleTask=sdk_pb2.ScheduleTaskAction(
            name="work", input=wrappers_pb2.StringValue(value="x" * 200), tags={"a": "b"}))],
    )
    check(pb.OrchestratorResponse, request.SerializeToString())
    query = sdk_pb2.QueryInstancesRequest(query=sdk_pb2.InstanceQuery(
        runtimeStatus=[sdk_pb2.ORCHESTRATION_STATUS_COMPLETED, sdk_pb2.ORCHESTRATION_STATUS_FAILED],
        maxInstanceCount=-1))
    decoded = check(pb.QueryInstancesRequest, query.SerializeToString())
    assert decoded.query.runtime_status == [pb.OrchestrationStatus.COMPLETED,
                                            pb.OrchestrationStatus.FAILED]


def test_repeated_numbers_packed_or_not():
    status = pb.InstanceQuery._betterproto.meta_by_field_name["runtime_status"].number
    unpacked = varint(status << 3) + b"\x01" + varint(status << 3) + b"\x03"
    packed = varint(status << 3 | 2) + b"\x02\x01\x03"
    for data in (unpacked, packed, packed + unpacked):
        check(pb.InstanceQuery, data)


def test_numbers_at_their_limits_and_unknown_enum_numbers():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for value in (-1, -(2**31), 2**31 - 1):
            check(pb.OrchestratorAction, encode(pb.OrchestratorAction(id=value)))
    # 99 is no orchestration status: both make it an unnamed member.
    decoded = check(pb.CompleteOrchestrationAction, b"\x08\x63")
    assert decoded.orchestration_status == 99
    for seconds, nanos in ((-(10**9), 999_999_999), (0, 1000), (2**33, 0)):
        stamp = b"\x08" + varint(seconds % 2**64) + b"\x10" + varint(nanos)
        check(pb.HistoryEvent, b"\x12" + varint(len(stamp)) + stamp)


def test_unknown_fields_are_kept_as_betterproto_keeps_them():
    unknown = b"\xa8\x1f\x05" + b"\xb2\x1f\x03abc" + b"\xbd\x1f\x01\x02\x03\x04" + \
        b"\xb9\x1f" + bytes(8)
    event = encode(pb.HistoryEvent(event_id=3, task_completed=pb.TaskCompletedEvent(
        task_scheduled_id=1, result="r")))
    decoded = check(pb.HistoryEvent, event + unknown)
    assert decoded._unknown_fields == unknown
    assert encode(decoded) == event + unknown


@pytest.mark.parametrize("data", [
    b"\x0a\x05ab",  # a string shorter than its declared length
    b"\x0a\x02\xc3\x28",  # not UTF-8
    b"\x08\x01",  # a number where a string belongs
    b"\xff\xff\xff",  # a key that never ends
    b"\x0b\x0c",  # a group
    b"\x00\x01",  # field number 0
])
def test_odd_input_gets_betterproto_treatment(data):
    try:
        expected = pb.GetInstanceRequest.parse(data)
    except Exception as exc:
        with pytest.raises(type(exc)):
            decode(pb.GetInstanceRequest, data)
    else:
        same(decode(pb.GetInstanceRequest, data), expected)


def test_any_bytes_like_input_gives_bytes_values():
    data = encode(pb.CompleteTaskResponse()) + b"\x1a\x02hi"
    for given in (bytearray(data), memoryview(data)):
        decoded = decode(pb.CompleteTaskResponse, given)
        assert type(decoded._unknown_fields) is bytes
