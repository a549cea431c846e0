"""JSON payloads: every input, output, event and custom status travels as a JSON string.

Values come back as JSON gives them: tuples as lists, dataclasses as objects. A set (or
frozenset) is refused rather than turned into a list, as its type and its order would be lost.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from .errors import SerializationError


def _default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, set | frozenset):
        raise TypeError(
            f"a {type(value).__name__} has no JSON form (it would come back as a list); "
            "pass a list, e.g. sorted(...)"
        )
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


# One encoder for every payload: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(default=_default, separators=(",", ":"), ensure_ascii=False)


def encode(value: Any, what: str) -> str | None:
    """Encode `value` for the wire; `what` names it in the error ("input of activity 'x'")."""
    if value is None:
        return None
    try:
        return _ENCODER.encode(value)
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"{what} cannot be serialized to JSON: {exc}") from None


def decode(data: str | None, what: str = "payload") -> Any:
    if data is None or data == "":
        return None
    try:
        return json.loads(data)
    except ValueError as exc:
        raise SerializationError(f"{what} is not valid JSON: {exc}") from None
