"""Durable entities: small stateful actors addressed by name and key.

Names are re-exported lazily: `dtrio.state` imports `entities.ids`, and the executor here
imports `dtrio.state` in turn.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "DurableEntity": "dtrio.entities.context",
    "EntityContext": "dtrio.entities.context",
    "EntityId": "dtrio.entities.ids",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dtrio.entities' has no attribute {name!r}")
    return getattr(import_module(module), name)
