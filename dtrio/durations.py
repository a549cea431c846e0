"""Durations and fire times, taken the same way by every dtrio call.

A duration is a `timedelta` or a number of seconds (an int or a float). Anything else, a
negative duration, NaN or infinity is refused with `InvalidInput` naming the parameter and what
was received, at the call that passed it. Pure: the orchestrator side uses it during replay,
where the same call raises the same error every time.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import TypeAlias

from .errors import InvalidInput

Duration: TypeAlias = timedelta | int | float
"""A `timedelta`, or seconds as an int or a float."""

_DURATION = "a timedelta or seconds (int or float)"


def _received(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def to_timedelta(
    value: object, name: str, *, positive: bool = False, expected: str = _DURATION
) -> timedelta:
    """`value` as a timedelta; `name` is the parameter as the caller wrote it
    ("create_timer(fire_at=...)"). Zero is refused too when `positive`."""
    if isinstance(value, timedelta):
        delta = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise InvalidInput(f"{name} must be a finite number of seconds, not {value!r}")
        try:
            delta = timedelta(seconds=value)
        except OverflowError:
            raise InvalidInput(f"{name} is too long: {value!r} seconds") from None
    else:
        raise InvalidInput(f"{name} takes {expected}, not {_received(value)}")
    if delta < timedelta(0) or (positive and not delta):
        raise InvalidInput(
            f"{name} must be {'positive' if positive else 'zero or more'}, not {value!r}"
        )
    return delta


def to_seconds(
    value: object, name: str, *, positive: bool = False, infinite: bool = False
) -> float:
    """`value` in seconds, as `to_timedelta` takes it; `infinite` also lets `math.inf` through
    (where it means "no limit")."""
    if infinite and isinstance(value, float) and value == math.inf:
        return value
    return to_timedelta(value, name, positive=positive).total_seconds()


def fire_time(value: object, name: str, now: datetime) -> datetime:
    """When something scheduled at `value` is due: a timezone-aware datetime (kept, in UTC, even
    if past), or a duration from `now`."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InvalidInput(f"{name} must be timezone-aware (use UTC), not a naive datetime")
        return value.astimezone(UTC)
    delay = to_timedelta(
        value, name, expected="a timezone-aware datetime, a timedelta or seconds (int or float)"
    )
    try:
        return now + delay
    except OverflowError:
        raise InvalidInput(f"{name} is too far in the future: {value!r} from now") from None
