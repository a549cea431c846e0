"""The names under which orchestrators and activities are known to the engine."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import InvalidInput, NotRegistered

F = TypeVar("F", bound=Callable[..., Any])

_NAME_ATTR = "__dtrio_name__"


def name_of(target: Callable[..., Any] | str, kind: str) -> str:
    """The registered name of a function (or the string itself)."""
    if isinstance(target, str):
        if not target:
            raise InvalidInput(f"{kind} name must not be empty")
        return target
    name = getattr(target, _NAME_ATTR, None)
    if name is None:
        raise NotRegistered(
            f"{getattr(target, '__qualname__', target)!r} is not a registered {kind}; "
            f"decorate it with @registry.{kind} or pass its name as a string"
        )
    return name


class Registry:
    """Orchestrators and activities by name.

    Orchestrators are `async def f(ctx, input)`. Activities are `async def f(ctx, input)`
    (run on Trio) or plain `def f(ctx, input)` (run in a worker thread).
    """

    def __init__(self) -> None:
        self.orchestrators: dict[str, Callable[..., Any]] = {}
        self.activities: dict[str, Callable[..., Any]] = {}
        # By lowercase name: entity names are case-insensitive, as in the Durable Task SDKs.
        self.entities: dict[str, Any] = {}

    def orchestrator(self, fn: F | None = None, *, name: str | None = None) -> Any:
        def register(f: F) -> F:
            if not inspect.iscoroutinefunction(f):
                raise InvalidInput(f"orchestrator {f.__qualname__!r} must be an async def function")
            return self._add(self.orchestrators, "orchestrator", f, name)

        return register(fn) if fn is not None else register

    def activity(self, fn: F | None = None, *, name: str | None = None) -> Any:
        def register(f: F) -> F:
            return self._add(self.activities, "activity", f, name)

        return register(fn) if fn is not None else register

    def entity(self, target: Any = None, *, name: str | None = None) -> Any:
        """Register an entity: an `async def f(ctx, input)` function (a plain `def` also
        works), or a class whose public methods are its operations (see `DurableEntity`)."""

        def register(t: Any) -> Any:
            if not callable(t):
                raise InvalidInput(f"entity {t!r} must be a function or a class")
            key = (name or t.__name__).lower()
            if not key or "@" in key:
                raise InvalidInput(f"entity name {key!r} must be non-empty and without '@'")
            return self._add(self.entities, "entity", t, key)

        return register(target) if target is not None else register

    @staticmethod
    def _add(table: dict[str, Callable[..., Any]], kind: str, f: F, name: str | None) -> F:
        key = name or f.__name__
        if not key:
            raise InvalidInput(f"{kind} name must not be empty")
        if key in table and table[key] is not f:
            raise InvalidInput(f"another {kind} is already registered as {key!r}")
        table[key] = f
        setattr(f, _NAME_ATTR, key)
        return f

    def get_activity(self, name: str) -> Callable[..., Any]:
        try:
            return self.activities[name]
        except KeyError:
            raise NotRegistered(f"activity {name!r} is not registered with this worker") from None
