"""dtrio.wire.encode must produce exactly the bytes betterproto2 produces, for every message."""

import inspect
from datetime import UTC, datetime, timedelta

import betterproto2
import pytest

from dtrio import _pb as pb
from dtrio.wire import encode

SCALARS = {
    betterproto2.TYPE_STRING: ["", "x", "héllo ✓" * 20],
    betterproto2.TYPE_BYTES: [b"", b"\x00\xff" * 70],
    betterproto2.TYPE_BOOL: [False, True],
    betterproto2.TYPE_INT32: [0, 1, -1, 300, 2**31 - 1],
    betterproto2.TYPE_INT64: [0, -5, 2**40],
    betterproto2.TYPE_UINT32: [0, 7],
    betterproto2.TYPE_UINT64: [0, 2**63],
    betterproto2.TYPE_DOUBLE: [0.0, 1.5],
    betterproto2.TYPE_FLOAT: [0.0, 2.25],
}
MESSAGES = [
    cls for _, cls in inspect.getmembers(pb, inspect.isclass)
    if issubclass(cls, betterproto2.Message) and cls is not betterproto2.Message
]


def sample(meta, variant, depth):
    """A value for one element of a field: variant picks among interesting values."""
    if meta.proto_type == betterproto2.TYPE_MESSAGE:
        if meta.unwrap is not None:
            wrapper = meta.unwrap()
            if wrapper.__name__ == "Timestamp":
                base = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
                return [
                    base, datetime(1970, 1, 1, tzinfo=UTC), base - timedelta(days=30000)
                ][variant % 3]
            if wrapper.__name__ == "Duration":
                return [timedelta(seconds=5, microseconds=3), timedelta(0)][variant % 2]
            if wrapper.__name__ == "StringValue":
                return ["", "wrapped", "ünïcode"][variant % 3]
            if wrapper.__name__ in ("Int32Value", "Int64Value", "UInt32Value", "UInt64Value"):
                return [0, 42][variant % 2]
            if wrapper.__name__ == "BoolValue":
                return [False, True][variant % 2]
            if wrapper.__name__ in ("DoubleValue", "FloatValue"):
                return [0.0, 0.5][variant % 2]
            if wrapper.__name__ == "BytesValue":
                return [b"", b"ab"][variant % 2]
            raise AssertionError(wrapper)
        return None
    if meta.proto_type == betterproto2.TYPE_ENUM:
        return variant % 3
    values = SCALARS[meta.proto_type]
    return values[variant % len(values)]


def fill(cls, variant=1, depth=0):
    msg = cls()
    hints = cls._type_hints()
    seen_groups = set()
    for name, meta in cls._betterproto.meta_by_field_name.items():
        if meta.group:
            # One member per oneof, chosen by the variant so every member is exercised.
            members = [
                n for n, m in cls._betterproto.meta_by_field_name.items() if m.group == meta.group
            ]
            if meta.group in seen_groups or members[variant % len(members)] != name:
                continue
            seen_groups.add(meta.group)
        hint = hints[name]
        if meta.map_meta:
            kmeta, vmeta = meta.map_meta
            value = sample(vmeta, variant, depth)
            if value is None:
                if depth > 2:
                    continue
                value = fill(_message_arg(hint, 1), variant, depth + 1)
            setattr(msg, name, {
                sample(kmeta, variant, depth): value, sample(kmeta, variant + 1, depth): value
            })
            continue
        if meta.proto_type == betterproto2.TYPE_MESSAGE and meta.unwrap is None:
            if depth > 2:
                continue
            target = _message_arg(hint, 0)
            value = fill(target, variant, depth + 1)
            setattr(msg, name, [value, target()] if meta.repeated else value)
            continue
        value = sample(meta, variant, depth)
        if meta.proto_type == betterproto2.TYPE_ENUM:
            enum_cls = _enum_arg(hint)
            value = enum_cls(list(enum_cls)[value % len(list(enum_cls))])
        setattr(msg, name, [value, sample(meta, variant + 1, depth)] if meta.repeated else value)
    return msg


def _message_arg(hint, index):
    args = [a for a in getattr(hint, "__args__", ()) if a is not type(None)]
    if hasattr(hint, "__origin__") and hint.__origin__ is dict:
        return hint.__args__[index]
    if args and hasattr(args[0], "__args__"):
        return args[0].__args__[0]
    return args[0] if args else hint


def _enum_arg(hint):
    args = [a for a in getattr(hint, "__args__", ()) if a is not type(None)]
    if args and hasattr(args[0], "__args__"):
        return args[0].__args__[0]
    return args[0] if args else hint


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("variant", range(4))
def test_encode_matches_betterproto(cls, variant):
    msg = fill(cls, variant)
    assert encode(msg) == bytes(msg)
    assert cls.parse(encode(msg)) == msg


def test_empty_messages_and_defaults():
    for cls in MESSAGES:
        assert encode(cls()) == bytes(cls())


def test_every_history_event_kind_is_covered():
    kinds = {name for name, m in pb.HistoryEvent._betterproto.meta_by_field_name.items() if m.group}
    covered = {
        betterproto2.which_one_of(fill(pb.HistoryEvent, v), "eventType")[0]
        for v in range(len(kinds))
    }
    assert covered == kinds


def test_history_markers_match_full_encoding():
    from datetime import datetime

    from dtrio import history as h
    from dtrio.wire import history_marker

    for when in (datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=UTC),
                 datetime(1970, 1, 1, tzinfo=UTC)):
        assert history_marker(14, when) == encode(h.orchestrator_started(when))
        assert history_marker(15, when) == encode(h.orchestrator_completed(when))
