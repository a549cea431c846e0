"""Requests as they arrive, before a servicer sees them: strictly decoded and bounded in size.

betterproto2's parser trusts its input. A truncated field yields a short value, a field sent with
the wrong wire type can leave a list where an int belongs, and every unknown field is appended to
a bytes object, so that a megabyte of them takes minutes on the event loop. `decode` therefore
walks the bytes against the message's schema first: structure, wire types and nesting depth are
checked, and unknown fields are dropped (dtrio could give them no meaning anyway).

Pure: no sockets and no event loop.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import betterproto2

from .. import wire
from .._pb.google import protobuf as google_protobuf
from ..errors import InvalidInput
from ..wire import varint

M = TypeVar("M", bound=betterproto2.Message)

# Per message, at least this much is accepted; the SDKs' own default is 4 MiB.
DEFAULT_MAX_MESSAGE_SIZE = 16 << 20
# protobuf's own default recursion limit.
MAX_DEPTH = 100

_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5
_WIRE = {
    **dict.fromkeys((
        betterproto2.TYPE_ENUM, betterproto2.TYPE_BOOL, betterproto2.TYPE_INT32,
        betterproto2.TYPE_INT64, betterproto2.TYPE_UINT32, betterproto2.TYPE_UINT64,
        betterproto2.TYPE_SINT32, betterproto2.TYPE_SINT64,
    ), _VARINT),
    **dict.fromkeys((
        betterproto2.TYPE_FIXED64, betterproto2.TYPE_SFIXED64, betterproto2.TYPE_DOUBLE,
    ), _FIXED64),
    **dict.fromkeys((
        betterproto2.TYPE_FIXED32, betterproto2.TYPE_SFIXED32, betterproto2.TYPE_FLOAT,
    ), _FIXED32),
    betterproto2.TYPE_STRING: _LEN,
    betterproto2.TYPE_BYTES: _LEN,
}


class MalformedMessage(InvalidInput):
    """Bytes that are not a valid protobuf message of the expected type."""


# field number -> (name, wire type, packed allowed, nested message class or None)
_Plan = dict[int, tuple[str, int, bool, Any]]
_PLANS: dict[type, _Plan] = {}


def _plan(cls: type) -> _Plan:
    proto = cls._betterproto  # type: ignore[attr-defined]
    plan: _Plan = {}
    for name, meta in proto.meta_by_field_name.items():
        if meta.map_meta is not None:  # map entries are messages of their own class
            plan[meta.number] = (name, _LEN, False, proto.cls_by_field[name])
        elif meta.proto_type == betterproto2.TYPE_MESSAGE:
            nested = meta.unwrap() if meta.unwrap is not None else proto.cls_by_field[name]
            plan[meta.number] = (name, _LEN, False, nested)
        else:
            packed = meta.repeated and meta.proto_type in betterproto2.PACKED_TYPES
            plan[meta.number] = (name, _WIRE[meta.proto_type], packed, None)
    _PLANS[cls] = plan
    return plan


def _varint(data: Any, pos: int, end: int) -> tuple[int, int]:
    """(value, position after it) of the varint at `pos`."""
    if pos < end and data[pos] < 0x80:
        return data[pos], pos + 1
    value = shift = 0
    while pos < end and shift < 70:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise MalformedMessage("a number runs past the end of its message or is over 10 bytes long")


def _clean(cls: type, data: memoryview, depth: int) -> bytes | None:
    """None if `data` is a well-formed `cls` as it is; the same without its unknown fields if it
    has some; MalformedMessage if it is not well-formed."""
    if depth > MAX_DEPTH:
        raise MalformedMessage(f"messages are nested more than {MAX_DEPTH} deep")
    plan = _PLANS.get(cls) or _plan(cls)
    out: bytearray | None = None
    pos, end = 0, len(data)
    while pos < end:
        start = pos
        key, pos = _varint(data, pos, end)
        number, wire = key >> 3, key & 7
        body = key_end = pos
        if wire == _VARINT:
            _, pos = _varint(data, pos, end)
        elif wire == _LEN:
            size, body = _varint(data, pos, end)
            pos = body + size
        elif wire == _FIXED64:
            pos += 8
        elif wire == _FIXED32:
            pos += 4
        else:
            raise MalformedMessage(f"field {number}{_of(cls, depth)} has wire type {wire}, "
                                   "which proto3 messages never use")
        if pos > end:
            raise MalformedMessage(
                f"field {number}{_of(cls, depth)} runs past the end of its message"
            )
        field = plan.get(number)
        if field is None:
            if number == 0:
                raise MalformedMessage(f"a field{_of(cls, depth)} has number 0")
            if out is None:
                out = bytearray(data[:start])
            continue
        name, expected, packed, nested = field
        if wire != expected and not (packed and wire == _LEN):
            raise MalformedMessage(
                f"field {number} ({name}){_of(cls, depth)} has wire type {wire}, not {expected}"
            )
        if nested is _Timestamp:
            _check_timestamp(data[body:pos], f"field {number} ({name}){_of(cls, depth)}")
        if nested is not None:
            cleaned = _clean(nested, data[body:pos], depth + 1)
            if cleaned is not None:
                out = bytearray(data[:start]) if out is None else out
                out += data[start:key_end]
                out += varint(len(cleaned))
                out += cleaned
                continue
        if out is not None:
            out += data[start:pos]
    return None if out is None else bytes(out)


_Timestamp = google_protobuf.Timestamp
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _check_timestamp(data: memoryview, what: str) -> None:
    """A timestamp's seconds must name a time in the years 1 to 9999, as Python's datetime
    (what it becomes) can: beyond them Python's own error would name neither field nor range."""
    seconds = nanos = 0
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos, len(data))
        if key in (0x08, 0x10):
            value, pos = _varint(data, pos, len(data))
            value -= (value >> 63 & 1) << 64  # int64 and int32 are sent in two's complement
            if key == 0x08:
                seconds = value
            else:
                nanos = value
        else:
            return  # the walk finds what else is wrong with it
    try:
        _EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1000)
    except OverflowError:
        raise MalformedMessage(f"{what}: a timestamp {seconds} seconds from 1970 is outside the "
                               "years 1 to 9999 that timestamps may name") from None


def _of(cls: type, depth: int) -> str:
    return f" of a nested {cls.__name__}" if depth else ""


def decode(cls: type[M], data: bytes) -> M:
    """`data` parsed as a `cls`; MalformedMessage, saying what is wrong, if it is not one."""
    try:
        cleaned = _clean(cls, memoryview(data), 0)
        # betterproto2's parse, field for field, ten times faster.
        return wire.decode(cls, data if cleaned is None else cleaned)
    except Exception as exc:  # the walk's findings, or what it does not check: UTF-8, packed
        raise MalformedMessage(f"malformed {cls.__name__} message: {exc}") from None


# Longest field a Skimmer keeps: identifying fields are short (instance IDs are at most 100
# characters, completion tokens a few dozen).
_KEPT_FIELD_MAX = 1024


class Skimmer:
    """Reads a `cls` message fed to it in pieces, keeping only its short top-level fields named
    in `keep`: what an oversized request was about, without ever holding it whole."""

    def __init__(self, cls: type[M], keep: Collection[str]) -> None:
        meta = cls._betterproto.meta_by_field_name  # type: ignore[attr-defined]
        self._cls = cls
        self._numbers = frozenset(meta[name].number for name in keep if name in meta)
        self._kept = bytearray()
        self._pending = b""  # the start of a field not yet complete (at most a kept one)
        self._skip = 0  # bytes still to come of a field being dropped

    def feed(self, data: bytes) -> None:
        skipped = min(self._skip, len(data))
        self._skip -= skipped
        if skipped == len(data):
            return
        buf = self._pending + data[skipped:]
        pos = 0
        while pos < len(buf):
            after = self._field(buf, pos)
            if after is None:
                break
            pos = after
        self._pending = buf[pos:]

    def result(self) -> M:
        if self._pending or self._skip:
            raise MalformedMessage(f"malformed {self._cls.__name__} message: "
                                   "a field runs past the end of the message")
        return decode(self._cls, bytes(self._kept))

    def _field(self, buf: bytes, pos: int) -> int | None:
        """Where the field at `pos` ends (its value may be still to come, to be skipped), or
        None if too little of it is here to tell."""
        head = _peek_varint(buf, pos)
        if head is None:
            return None
        key, at = head
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value = _peek_varint(buf, at)
            if value is None:
                return None
            end = value[1]
        elif wire in (_FIXED64, _FIXED32):
            end = at + (8 if wire == _FIXED64 else 4)
            if end > len(buf):
                return None
        elif wire == _LEN:
            length = _peek_varint(buf, at)
            if length is None:
                return None
            end = length[1] + length[0]
            if number not in self._numbers or length[0] > _KEPT_FIELD_MAX:
                if end > len(buf):  # dropped as it comes
                    self._skip = end - len(buf)
                    return len(buf)
                return end
            if end > len(buf):
                return None
        else:
            raise MalformedMessage(f"malformed {self._cls.__name__} message: field {number} "
                                   f"has wire type {wire}, which proto3 messages never use")
        if number in self._numbers:
            self._kept += buf[pos:end]
        return end


def _peek_varint(buf: bytes, pos: int) -> tuple[int, int] | None:
    """The varint at `pos` and the position after it; None if it may continue past `buf`."""
    try:
        return _varint(buf, pos, len(buf))
    except MalformedMessage:
        if len(buf) - pos < 10:
            return None
        raise
