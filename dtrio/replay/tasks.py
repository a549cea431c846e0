"""Durable tasks: what an orchestrator awaits. Completed only by history events."""

from __future__ import annotations

from collections.abc import Generator, Iterable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Task(Generic[T]):
    """A durable step. Awaiting it suspends the orchestrator until history completes it."""

    __slots__ = ("_done", "_exc", "_parents", "_value")

    def __init__(self) -> None:
        self._done = False
        self._value: Any = None
        self._exc: BaseException | None = None
        self._parents: list[_Composite] = []

    @property
    def is_complete(self) -> bool:
        return self._done

    @property
    def is_failed(self) -> bool:
        return self._exc is not None

    def result(self) -> T:
        if not self._done:
            raise RuntimeError("this task has not completed yet; await it first")
        if self._exc is not None:
            raise self._exc
        return self._value

    def exception(self) -> BaseException | None:
        return self._exc

    def _complete(self, value: Any) -> None:
        if self._done:
            return
        self._done, self._value = True, value
        self._notify()

    def _fail(self, exc: BaseException) -> None:
        if self._done:
            return
        self._done, self._exc = True, exc
        self._notify()

    def _notify(self) -> None:
        parents, self._parents = self._parents, []
        for parent in parents:
            parent._child_done(self)

    def __await__(self) -> Generator[Task[Any], None, T]:
        if not self._done:
            # The replay driver receives the task itself and resumes us once it is done.
            yield self
        return self.result()


class _Composite(Task[T]):
    __slots__ = ("children",)

    def __init__(self, children: Iterable[Task[Any]]) -> None:
        super().__init__()
        self.children = list(children)
        for child in self.children:
            if not isinstance(child, Task):
                raise TypeError(
                    f"when_all/when_any take dtrio tasks, got {type(child).__name__}; "
                    "pass what ctx.call_activity, ctx.create_timer, ... return (without awaiting)"
                )
        for child in self.children:
            if child.is_complete:
                self._child_done(child)
            else:
                child._parents.append(self)

    def _child_done(self, child: Task[Any]) -> None:
        raise NotImplementedError


class WhenAll(_Composite[list[Any]]):
    # Children still running: counted, because checking every child on each completion made a
    # fan-out of n tasks cost n^2 (50 million checks for 10,000 activities).
    __slots__ = ("_pending",)

    def __init__(self, children: Iterable[Task[Any]]) -> None:
        self._pending: int | None = None  # None while the children are being taken in
        super().__init__(children)
        self._pending = sum(1 for c in self.children if not c.is_complete)
        if not self._done and self._pending == 0:
            self._complete([c._value for c in self.children])

    def _child_done(self, child: Task[Any]) -> None:
        if self._done:
            return
        if child.is_failed:
            self._fail(child._exc)  # type: ignore[arg-type]
        elif self._pending is not None:
            self._pending -= 1
            if self._pending == 0:
                self._complete([c._value for c in self.children])


class WhenAny(_Composite[Task[Any]]):
    __slots__ = ()

    def __init__(self, children: Iterable[Task[Any]]) -> None:
        super().__init__(children)
        if not self.children:
            raise ValueError("when_any needs at least one task")

    def _child_done(self, child: Task[Any]) -> None:
        self._complete(child)


def when_all(tasks: Iterable[Task[T]]) -> Task[list[T]]:
    """A task that gives every task's result, in the order given, once all have completed; it
    raises the first failure as soon as one fails (the others keep running)."""
    return WhenAll(tasks)


def when_any(tasks: Iterable[Task[T]]) -> Task[Task[T]]:
    """A task that gives the first of `tasks` to complete: the task itself, so compare it with
    yours and call `.result()` (which raises if it failed). `tasks` must not be empty."""
    return WhenAny(tasks)
