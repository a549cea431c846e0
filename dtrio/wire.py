"""A fast protobuf encoder for the generated betterproto2 messages.

betterproto2's own `bytes(msg)` recomputes every field's default inside a
`warnings.catch_warnings()` block, which makes encoding a history event cost tens of
microseconds. Here each message class is compiled once into a plan of pre-encoded field keys.
The output is byte-for-byte what `bytes(msg)` produces (tests/proto/test_wire.py checks this
across every message kind), so either may be used anywhere.
"""

from __future__ import annotations

import dataclasses
import struct
import warnings
from datetime import UTC, datetime
from typing import Any

import betterproto2

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_VARINT = frozenset({betterproto2.TYPE_ENUM, betterproto2.TYPE_BOOL, betterproto2.TYPE_INT32,
                     betterproto2.TYPE_INT64, betterproto2.TYPE_UINT32, betterproto2.TYPE_UINT64})
_ZIGZAG = frozenset({betterproto2.TYPE_SINT32, betterproto2.TYPE_SINT64})
_FIXED = {
    betterproto2.TYPE_FLOAT: ("<f", 5), betterproto2.TYPE_DOUBLE: ("<d", 1),
    betterproto2.TYPE_FIXED32: ("<I", 5), betterproto2.TYPE_SFIXED32: ("<i", 5),
    betterproto2.TYPE_FIXED64: ("<Q", 1), betterproto2.TYPE_SFIXED64: ("<q", 1),
}

# plan step kinds
_K_VARINT, _K_ZIGZAG, _K_FIXED, _K_STRING, _K_BYTES, _K_MESSAGE, _K_WRAPPED, _K_TIMESTAMP, \
    _K_STRINGVALUE, _K_REPEATED, _K_MAP = range(11)


def _varint_slow(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = [_varint_slow(i) for i in range(1 << 14)]


_MINUS_ONE = _varint_slow(-1)  # every event's eventId that names no action


def varint(value: int) -> bytes:
    if 0 <= value < 16384:
        return _SMALL[value]
    if value == -1:
        return _MINUS_ONE
    return _varint_slow(value)


def _key(number: int, wire: int) -> bytes:
    return varint((number << 3) | wire)


# Per message class: field name -> (kind, key, default, extra), in declaration order.
_PLANS: dict[type, dict[str, tuple[Any, ...]]] = {}


def encode(message: betterproto2.Message) -> bytes:
    """The message's protobuf bytes, identical to `bytes(message)`."""
    out = bytearray()
    _encode_into(message, out)
    return bytes(out)


def _encode_into(message: betterproto2.Message, out: bytearray) -> None:
    plan = _PLANS.get(type(message))
    if plan is None:
        plan = _compile(type(message))
    # Instance attributes are in field declaration order (dataclass __init__ order), which is
    # the order betterproto2 writes; walking them skips unset oneof members cheaply.
    for name, value in message.__dict__.items():
        if value is None:
            continue
        step = plan.get(name)
        if step is None:
            continue
        kind, key, default, extra = step
        if value == default:
            continue
        if kind == _K_STRING:
            data = value.encode()
            out += key
            out += varint(len(data))
            out += data
        elif kind == _K_VARINT:
            out += key
            out += varint(int(value))
        elif kind == _K_MESSAGE:
            out += key
            _encode_len_delimited(value, out)
        elif kind == _K_STRINGVALUE:
            out += key
            if value:
                data = value.encode()
                inner = varint(len(data))
                out += varint(1 + len(inner) + len(data))
                out += b"\n"
                out += inner
                out += data
            else:
                out += b"\x00"
        elif kind == _K_TIMESTAMP:
            out += key
            out += _timestamp(value)
        else:
            _encode_other(kind, key, value, extra, out)
    out += message._unknown_fields


def _encode_len_delimited(message: betterproto2.Message, out: bytearray) -> None:
    body = bytearray()
    _encode_into(message, body)
    out += varint(len(body))
    out += body


_last_timestamp: tuple[datetime, bytes] | None = None


def _timestamp(when: datetime) -> bytes:
    # The events of one step share one timestamp: remember the last one encoded.
    global _last_timestamp
    last = _last_timestamp
    if last is not None and last[0] is when:
        return last[1]
    if when.tzinfo is None:
        raise ValueError("datetime must be timezone aware")
    offset = when - _EPOCH
    offset_us = (offset.days * 86_400 + offset.seconds) * 1_000_000 + offset.microseconds
    seconds, us = divmod(offset_us, 1_000_000)
    body = bytearray()
    if seconds:
        body += b"\x08"
        body += varint(seconds)
    if us:
        body += b"\x10"
        body += varint(us * 1000)
    data = varint(len(body)) + body
    _last_timestamp = (when, data)
    return data


def _single(kind: int, value: Any, extra: Any) -> bytes:
    """One value's payload (without key) for repeated and map fields."""
    if kind == _K_VARINT:
        return varint(int(value))
    if kind == _K_ZIGZAG:
        return varint(value << 1 if value >= 0 else (value << 1) ^ ~0)
    if kind == _K_FIXED:
        return struct.pack(extra, value)
    if kind == _K_STRING:
        data = value.encode()
        return varint(len(data)) + data
    if kind == _K_BYTES:
        return varint(len(value)) + bytes(value)
    if kind == _K_STRINGVALUE or kind == _K_TIMESTAMP or kind == _K_WRAPPED:
        value = extra().from_wrapped(value) if kind != _K_TIMESTAMP else extra().from_datetime(value)
    body = bytearray()
    _encode_into(value, body)
    return varint(len(body)) + body


def _encode_other(kind: int, key: bytes, value: Any, extra: Any, out: bytearray) -> None:
    if kind == _K_REPEATED:
        item_kind, item_key, item_extra, packed = extra
        if packed:
            body = b"".join(_single(item_kind, v, item_extra) for v in value)
            out += key
            out += varint(len(body))
            out += body
        else:
            for v in value:
                out += item_key
                out += _single(item_kind, v, item_extra)
    elif kind == _K_MAP:
        (kkind, kextra, kkey), (vkind, vextra, vkey) = extra
        for k, v in value.items():
            entry = kkey + _single(kkind, k, kextra) + vkey + _single(vkind, v, vextra)
            out += key
            out += varint(len(entry))
            out += entry
    elif kind == _K_WRAPPED:
        out += key
        _encode_len_delimited(extra().from_wrapped(value), out)
    else:
        out += key
        out += _single(kind, value, extra)


def _field_kind(meta: Any) -> tuple[int, int, Any]:
    """(plan kind, wire type, extra) for one field's element type."""
    proto_type = meta.proto_type
    if proto_type in _VARINT:
        return _K_VARINT, 0, None
    if proto_type in _ZIGZAG:
        return _K_ZIGZAG, 0, None
    if proto_type in _FIXED:
        fmt, wire = _FIXED[proto_type]
        return _K_FIXED, wire, fmt
    if proto_type == betterproto2.TYPE_STRING:
        return _K_STRING, 2, None
    if proto_type == betterproto2.TYPE_BYTES:
        return _K_BYTES, 2, None
    if proto_type == betterproto2.TYPE_MESSAGE:
        if meta.unwrap is None:
            return _K_MESSAGE, 2, None
        wrapper = meta.unwrap()
        if wrapper.__name__ == "Timestamp" and hasattr(wrapper, "from_datetime"):
            return _K_TIMESTAMP, 2, meta.unwrap
        if wrapper.__name__ == "StringValue":
            return _K_STRINGVALUE, 2, meta.unwrap
        return _K_WRAPPED, 2, meta.unwrap
    raise NotImplementedError(f"protobuf type {proto_type}")


def _compile(cls: type) -> dict[str, tuple[Any, ...]]:
    proto = cls._betterproto  # type: ignore[attr-defined]
    plan: dict[str, tuple[Any, ...]] = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        defaults = {name: gen() for name, gen in proto.default_gen.items()}
    declared = [f.name for f in dataclasses.fields(cls)]
    if declared != list(proto.meta_by_field_name):
        raise TypeError(f"{cls.__name__}: field order differs from its protobuf metadata")
    for name, meta in proto.meta_by_field_name.items():
        default = defaults[name]
        if meta.map_meta:
            (kmeta, vmeta) = meta.map_meta
            kkind, kwire, kextra = _field_kind(kmeta)
            vkind, vwire, vextra = _field_kind(vmeta)
            extra = ((kkind, kextra, _key(1, kwire)), (vkind, vextra, _key(2, vwire)))
            plan[name] = (_K_MAP, _key(meta.number, 2), default, extra)
        elif meta.repeated:
            kind, wire, item_extra = _field_kind(meta)
            packed = meta.proto_type in betterproto2.PACKED_TYPES
            plan[name] = (_K_REPEATED, _key(meta.number, 2), default,
                          (kind, _key(meta.number, wire), item_extra, packed))
        else:
            kind, wire, extra = _field_kind(meta)
            plan[name] = (kind, _key(meta.number, wire), default, extra)
    _PLANS[cls] = plan
    return plan


_GROUPS: dict[tuple[type, str], frozenset[str]] = {}


def one_of(message: betterproto2.Message, group: str) -> tuple[str, Any]:
    """(field name, value) of the set member of a oneof, like `betterproto2.which_one_of`
    but without a getattr per member."""
    members = _GROUPS.get((type(message), group))
    if members is None:
        members = frozenset(
            f.name for f in message._betterproto.oneof_field_by_group[group]  # type: ignore[attr-defined]
        )
        _GROUPS[(type(message), group)] = members
    for name, value in message.__dict__.items():
        if value is not None and name in members:
            return name, value
    return "", None


def history_marker(field_number: int, when: datetime) -> bytes:
    """A field-less HistoryEvent (eventId -1, `when`, an empty `field_number` member), such as
    orchestratorStarted (14) and orchestratorCompleted (15): two of every step's events."""
    return b"\x08" + _MINUS_ONE + b"\x12" + _timestamp(when) + _key(field_number, 2) + b"\x00"
