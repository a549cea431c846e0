"""History events encoded without building the whole HistoryEvent (`wire.event_bytes`,
`wire.history_marker`) and with it (`wire.encode`) are byte for byte what betterproto2 writes,
for every kind of event and field values drawn by hypothesis; and events built without their
generated `__init__` (`wire.new`) are what it builds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import betterproto2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dtrio import _pb as pb
from dtrio import history as h
from dtrio.wire import encode, event_bytes, history_marker

# Deprecated fields (TraceContext.span_id) are drawn too: they are still on the wire.
pytestmark = pytest.mark.filterwarnings("ignore:.* is deprecated:DeprecationWarning")

_META = pb.HistoryEvent._betterproto.meta_by_field_name
KINDS = sorted(name for name, meta in _META.items() if meta.group == "eventType")

_I32, _I64 = (-(2**31), 2**31 - 1), (-(2**63), 2**63 - 1)
_U32, _U64 = (0, 2**32 - 1), (0, 2**64 - 1)
_T = betterproto2
_INTS = {
    _T.TYPE_INT32: _I32, _T.TYPE_SINT32: _I32, _T.TYPE_SFIXED32: _I32,
    _T.TYPE_INT64: _I64, _T.TYPE_SINT64: _I64, _T.TYPE_SFIXED64: _I64,
    _T.TYPE_UINT32: _U32, _T.TYPE_FIXED32: _U32, _T.TYPE_UINT64: _U64, _T.TYPE_FIXED64: _U64,
}
# Timestamps as betterproto2 writes them: microseconds, from long before the epoch to far after.
TIMES = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1),
                     timezones=st.just(UTC))
_WRAPPED = {
    "Timestamp": TIMES,
    "Duration": st.timedeltas(min_value=timedelta(days=-3000), max_value=timedelta(days=3000)),
    "StringValue": st.text(), "BytesValue": st.binary(), "BoolValue": st.booleans(),
    "Int32Value": st.integers(-(2**31), 2**31 - 1), "Int64Value": st.integers(-(2**63), 2**63 - 1),
    "UInt32Value": st.integers(0, 2**32 - 1), "UInt64Value": st.integers(0, 2**64 - 1),
    "DoubleValue": st.floats(allow_nan=False), "FloatValue": st.floats(allow_nan=False, width=32),
}


def _element(cls: type, name: str, meta, depth: int) -> st.SearchStrategy:
    """Values of one element of field `name` of `cls`."""
    kind = meta.proto_type
    if kind in _INTS:
        return st.integers(*_INTS[kind])
    if kind == betterproto2.TYPE_STRING:
        return st.text(max_size=20)
    if kind == betterproto2.TYPE_BYTES:
        return st.binary(max_size=20)
    if kind == betterproto2.TYPE_BOOL:
        return st.booleans()
    if kind == betterproto2.TYPE_DOUBLE:
        return st.floats(allow_nan=False)
    if kind == betterproto2.TYPE_FLOAT:
        return st.floats(allow_nan=False, width=32)
    if kind == betterproto2.TYPE_ENUM:
        return st.sampled_from(list(cls._betterproto.cls_by_field[name]))
    assert kind == betterproto2.TYPE_MESSAGE, kind
    if meta.unwrap is not None:
        return _WRAPPED[meta.unwrap().__name__]
    return messages(cls._betterproto.cls_by_field[name], depth + 1)


def messages(cls: type, depth: int = 0) -> st.SearchStrategy:
    """Messages of `cls` with any of their fields set (one member of each oneof at most),
    nested three deep at most."""
    if depth > 2:
        return st.just(cls())
    proto = cls._betterproto
    fields: dict[str, st.SearchStrategy] = {}
    groups: dict[str, list[str]] = {}
    for name, meta in proto.meta_by_field_name.items():
        if meta.map_meta:
            kmeta, vmeta = meta.map_meta
            entry = proto.cls_by_field[name]
            values = st.dictionaries(_element(entry, "key", kmeta, depth),
                                     _element(entry, "value", vmeta, depth), max_size=3)
        elif meta.repeated:
            values = st.lists(_element(cls, name, meta, depth), max_size=3)
        else:
            values = _element(cls, name, meta, depth)
        if meta.group:
            groups.setdefault(meta.group, []).append(name)
        fields[name] = values
    chosen = {group: st.sampled_from([None, *names]) for group, names in groups.items()}

    @st.composite
    def build(draw: st.DrawFn) -> betterproto2.Message:
        members = {group: draw(pick) for group, pick in chosen.items()}
        kwargs = {}
        for name, values in fields.items():
            group = proto.meta_by_field_name[name].group
            if group is not None and members[group] != name:
                continue
            if group is not None or draw(st.booleans()):
                kwargs[name] = draw(values)
        return cls(**kwargs)

    return build()


EVENT_IDS = st.one_of(st.just(-1), st.integers(-(2**31), 2**31 - 1))
_SETTINGS = settings(max_examples=60, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.parametrize("kind", KINDS)
@_SETTINGS
@given(data=st.data(), event_id=EVENT_IDS, when=TIMES)
def test_event_bytes_are_betterprotos(kind: str, data: st.DataObject, event_id: int,
                                      when: datetime) -> None:
    body = data.draw(messages(pb.HistoryEvent._betterproto.cls_by_field[kind]))
    event = pb.HistoryEvent(event_id=event_id, timestamp=when, **{kind: body})
    expected = bytes(event)
    assert event_bytes(_META[kind].number, event_id, when, body) == expected
    assert encode(event) == expected
    assert pb.HistoryEvent.parse(expected) == event
    assert h.recorded(when, kind, body, event_id).data == expected
    built = h.event(when, event_id, **{kind: body})  # without HistoryEvent's __init__
    assert built == event and list(vars(built)) == list(vars(event)) and bytes(built) == expected
    if event_id == -1:
        made = h.made(when, kind, body)
        assert made.data == expected and made.event == event


@_SETTINGS
@given(event=messages(pb.HistoryEvent))
def test_whole_history_events_are_betterprotos(event: pb.HistoryEvent) -> None:
    assert encode(event) == bytes(event)


@pytest.mark.parametrize("kind", ["orchestrator_started", "orchestrator_completed"])
@_SETTINGS
@given(when=TIMES)
def test_history_markers_are_betterprotos(kind: str, when: datetime) -> None:
    empty = pb.HistoryEvent._betterproto.cls_by_field[kind]()
    event = pb.HistoryEvent(event_id=-1, timestamp=when, **{kind: empty})
    assert history_marker(_META[kind].number, when) == bytes(event)



def test_new_refuses_a_field_the_message_lacks() -> None:
    from dtrio.wire import new

    with pytest.raises(TypeError, match="no field \\['task'\\]"):
        new(pb.HistoryEvent, task=pb.TaskScheduledEvent())
