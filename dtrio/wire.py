"""A fast protobuf encoder and decoder for the generated betterproto2 messages.

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
from datetime import UTC, datetime, timedelta
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
        value = (
            extra().from_wrapped(value) if kind != _K_TIMESTAMP
            else extra().from_datetime(value)
        )
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


def event_bytes(
    field_number: int, event_id: int, when: datetime, member: betterproto2.Message
) -> bytes:
    """The bytes `encode` makes of a HistoryEvent holding only `event_id`, `when` and `member`
    as its oneof member numbered `field_number`, made without the HistoryEvent: building and
    walking its 31 attributes costs more than encoding the member."""
    out = bytearray()
    if event_id:
        out += b"\x08"
        out += varint(event_id)
    out += b"\x12"
    out += _timestamp(when)
    out += _key(field_number, 2)
    _encode_len_delimited(member, out)
    return bytes(out)


def history_marker(field_number: int, when: datetime) -> bytes:
    """A field-less HistoryEvent (eventId -1, `when`, an empty `field_number` member), such as
    orchestratorStarted (14) and orchestratorCompleted (15): two of every step's events."""
    return b"\x08" + _MINUS_ONE + b"\x12" + _timestamp(when) + _key(field_number, 2) + b"\x00"


# -- decoding ---------------------------------------------------------------------------------
#
# `decode(cls, data)` builds what `cls.parse(data)` builds, field for field (tests/proto/
# test_wire_decode.py checks every message kind), about ten times faster: each class is compiled
# once into a table from field key to a decoding step. Only well-formed input takes this path;
# anything unusual (a truncated field, a wire type the schema does not expect, a group) is handed
# to betterproto2's own parser, so that odd input gets exactly its lenient treatment.

# decoding step kinds
_D_STRING, _D_BYTES, _D_MESSAGE, _D_WRAPPED, _D_TIMESTAMP, _D_STRINGVALUE, _D_MAP, _D_SIGNED, \
    _D_ENUM, _D_UNSIGNED, _D_ZIGZAG, _D_BOOL, _D_FIXED, _D_PACKED = range(14)

_MASK32, _MASK64 = (1 << 32) - 1, (1 << 64) - 1
_SIGN32, _SIGN64 = 1 << 31, 1 << 63


class _Unusual(Exception):
    """Input the fast path leaves to betterproto2."""


# Per message class: (defaults shared by every instance, in declaration order; names whose
# default is a fresh list or dict; field key -> (kind, name, repeated, extra); field numbers).
_Decoder = tuple[dict[str, Any], tuple[tuple[str, type], ...], dict[int, tuple], frozenset[int]]
_DECODERS: dict[type, _Decoder] = {}


def decode(cls: type[Any], data: bytes) -> Any:
    """`cls.parse(data)`, identical in every field (and in unknown fields kept), faster."""
    if type(data) is not bytes:
        data = bytes(data)  # betterproto2 hands out bytes for bytes fields, whatever it was given
    try:
        return _decode(cls, data, 0, len(data))
    except Exception:
        return cls.parse(data)


def new(cls: type[Any], **fields: Any) -> Any:
    """`cls(**fields)`, built as `decode` builds messages: the generated `__init__` takes every
    field as an argument (31 of them for a HistoryEvent), which costs four times as much."""
    plan = _DECODERS.get(cls)
    if plan is None:
        plan = _compile_decoder(cls)
    defaults, fresh, _, _ = plan
    if not fields.keys() <= defaults.keys():
        raise TypeError(f"{cls.__name__} has no field {sorted(fields.keys() - defaults.keys())}")
    message = object.__new__(cls)
    values = message.__dict__
    values.update(defaults)
    for name, factory in fresh:
        values[name] = factory()
    values.update(fields)
    return message


def _decode_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while pos < end and shift < 70:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise _Unusual


def _decode(cls: type[Any], data: bytes, pos: int, end: int) -> Any:
    plan = _DECODERS.get(cls)
    if plan is None:
        plan = _compile_decoder(cls)
    defaults, fresh, steps, numbers = plan
    message = object.__new__(cls)
    fields = message.__dict__
    fields.update(defaults)
    for name, factory in fresh:
        fields[name] = factory()
    unknown = b""
    while pos < end:
        start = pos
        key = data[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = _decode_varint(data, pos, end)
        step = steps.get(key)
        if step is None:
            if key >> 3 in numbers:  # a known field with a wire type the schema does not use
                raise _Unusual
            pos = _skip(key, data, pos, end)
            unknown += data[start:pos]
            continue
        kind, name, repeated, extra = step
        if key & 7 == 2:
            size = data[pos]
            if size < 0x80:
                pos += 1
            else:
                size, pos = _decode_varint(data, pos, end)
            stop = pos + size
            if stop > end:
                raise _Unusual
            if kind == _D_STRING:
                value = data[pos:stop].decode()
            elif kind == _D_MESSAGE:
                value = _decode(extra, data, pos, stop)
            elif kind == _D_TIMESTAMP:
                value = _decode_timestamp(data, pos, stop)
            elif kind == _D_STRINGVALUE:
                # StringValue{value}: its one field, or "" when empty.
                if pos == stop:
                    value = ""
                elif data[pos] == 0x0A and data[pos + 1] == stop - pos - 2 < 0x80:
                    value = data[pos + 2:stop].decode()
                else:
                    value = _decode(extra, data, pos, stop).to_wrapped()
            elif kind == _D_WRAPPED:
                value = _decode(extra, data, pos, stop).to_wrapped()
            elif kind == _D_BYTES:
                value = data[pos:stop]
            elif kind == _D_MAP:
                entry = _decode(extra, data, pos, stop)
                fields[name][entry.key] = entry.value
                pos = stop
                continue
            else:  # _D_PACKED: repeated scalars in one field
                item_kind, item_extra = extra
                items = fields[name]
                while pos < stop:
                    value, pos = _decode_scalar(item_kind, item_extra, data, pos, stop)
                    items.append(value)
                if pos != stop:
                    raise _Unusual
                continue
            pos = stop
        else:
            value, pos = _decode_scalar(kind, extra, data, pos, end)
        if repeated:
            fields[name].append(value)
        else:
            fields[name] = value
    if pos != end:
        raise _Unusual
    if unknown:
        fields["_unknown_fields"] = unknown
    return message


def _decode_scalar(kind: int, extra: Any, data: bytes, pos: int, end: int) -> tuple[Any, int]:
    if kind == _D_FIXED:
        fmt, size = extra
        if pos + size > end:
            raise _Unusual
        return struct.unpack_from(fmt, data, pos)[0], pos + size
    value = data[pos] if pos < end else 0x80
    if value < 0x80:
        pos += 1
    elif data.startswith(_MINUS_ONE, pos) and pos + 10 <= end:  # every eventId -1
        value, pos = _MASK64, pos + 10
    else:
        value, pos = _decode_varint(data, pos, end)
    # As betterproto2 reads them: signed ints as two's complement of their width, enums as
    # 64-bit ints made members (unknown numbers too), bools as "not zero".
    if kind == _D_SIGNED:
        if extra == 32:
            value = ((value & _MASK32) ^ _SIGN32) - _SIGN32
        else:
            value = ((value & _MASK64) ^ _SIGN64) - _SIGN64
    elif kind == _D_ENUM:
        value = ((value & _MASK64) ^ _SIGN64) - _SIGN64
        member = extra._value2member_map_.get(value)
        value = extra(value) if member is None else member
    elif kind == _D_UNSIGNED:
        value &= _MASK32 if extra == 32 else _MASK64
    elif kind == _D_ZIGZAG:
        value &= _MASK32 if extra == 32 else _MASK64
        value = (value >> 1) ^ (-(value & 1))
    else:  # _D_BOOL
        value = value > 0
    return value, pos


_TIMESTAMPS: dict[bytes, datetime] = {}


def _decode_timestamp(data: bytes, pos: int, end: int) -> datetime:
    """A google.protobuf.Timestamp as the datetime betterproto2 unwraps it to."""
    # The events of a step share one timestamp, and datetimes are immutable: keep recent ones.
    raw = data[pos:end]
    known = _TIMESTAMPS.get(raw)
    if known is not None:
        return known
    if len(_TIMESTAMPS) >= 256:
        _TIMESTAMPS.clear()
    _TIMESTAMPS[raw] = when = _timestamp_value(data, pos, end)
    return when


def _timestamp_value(data: bytes, pos: int, end: int) -> datetime:
    seconds = nanos = 0
    while pos < end:
        key = data[pos]
        if key == 0x08:
            seconds, pos = _decode_scalar(_D_SIGNED, 64, data, pos + 1, end)
        elif key == 0x10:
            nanos, pos = _decode_scalar(_D_SIGNED, 32, data, pos + 1, end)
        else:
            raise _Unusual
    return _EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1000)


def _skip(key: int, data: bytes, pos: int, end: int) -> int:
    """The position after an unknown field's value."""
    wire = key & 7
    if wire == 0:
        _, pos = _decode_varint(data, pos, end)
    elif wire == 2:
        size, pos = _decode_varint(data, pos, end)
        pos += size
    elif wire == 1:
        pos += 8
    elif wire == 5:
        pos += 4
    else:
        raise _Unusual  # groups, or no wire type at all
    if pos > end or key >> 3 == 0:
        raise _Unusual
    return pos


def _scalar_step(meta: Any) -> tuple[int, int, Any]:
    """(kind, wire type, extra) for a scalar field's values."""
    proto_type = meta.proto_type
    if proto_type in _FIXED:
        fmt, wire = _FIXED[proto_type]
        return _D_FIXED, wire, (fmt, 4 if wire == 5 else 8)
    bits = 32 if proto_type in (betterproto2.TYPE_INT32, betterproto2.TYPE_UINT32,
                                betterproto2.TYPE_SINT32) else 64
    if proto_type in (betterproto2.TYPE_INT32, betterproto2.TYPE_INT64):
        return _D_SIGNED, 0, bits
    if proto_type in (betterproto2.TYPE_UINT32, betterproto2.TYPE_UINT64):
        return _D_UNSIGNED, 0, bits
    if proto_type in _ZIGZAG:
        return _D_ZIGZAG, 0, bits
    if proto_type == betterproto2.TYPE_BOOL:
        return _D_BOOL, 0, None
    raise NotImplementedError(f"protobuf type {proto_type}")


def _compile_decoder(cls: type) -> _Decoder:
    proto = cls._betterproto  # type: ignore[attr-defined]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        initial = {name: gen() for name, gen in proto.default_gen.items()}
    declared = [f.name for f in dataclasses.fields(cls)]
    defaults = {name: initial[name] for name in declared}
    defaults["_unknown_fields"] = b""  # as Message.__post_init__ leaves it
    fresh = tuple((name, type(value)) for name, value in defaults.items()
                  if type(value) in (list, dict))
    steps: dict[int, tuple] = {}
    for name, meta in proto.meta_by_field_name.items():
        number, proto_type = meta.number, meta.proto_type
        if meta.map_meta:
            steps[number << 3 | 2] = (_D_MAP, name, False, proto.cls_by_field[name])
        elif proto_type == betterproto2.TYPE_MESSAGE:
            if meta.unwrap is None:
                step = (_D_MESSAGE, name, meta.repeated, proto.cls_by_field[name])
            else:
                wrapper = meta.unwrap()
                if wrapper.__name__ == "Timestamp" and hasattr(wrapper, "from_datetime"):
                    kind = _D_TIMESTAMP
                elif wrapper.__name__ == "StringValue":
                    kind = _D_STRINGVALUE
                else:
                    kind = _D_WRAPPED
                step = (kind, name, meta.repeated, wrapper)
            steps[number << 3 | 2] = step
        elif proto_type == betterproto2.TYPE_STRING:
            steps[number << 3 | 2] = (_D_STRING, name, meta.repeated, None)
        elif proto_type == betterproto2.TYPE_BYTES:
            steps[number << 3 | 2] = (_D_BYTES, name, meta.repeated, None)
        else:
            if proto_type == betterproto2.TYPE_ENUM:
                kind, wire, extra = _D_ENUM, 0, proto.cls_by_field[name]
            else:
                kind, wire, extra = _scalar_step(meta)
            steps[number << 3 | wire] = (kind, name, meta.repeated, extra)
            if meta.repeated:  # packed, as proto3 writes them, or not: both are read
                steps[number << 3 | 2] = (_D_PACKED, name, True, (kind, extra))
    numbers = frozenset(meta.number for meta in proto.meta_by_field_name.values())
    _DECODERS[cls] = plan = (defaults, fresh, steps, numbers)
    return plan
