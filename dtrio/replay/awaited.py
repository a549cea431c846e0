"""What an orchestrator awaited that is not a dtrio task, named as its code wrote it.

`await trio.sleep(1)` hands trio's scheduler an internal object several calls down; the user
wrote `trio.sleep(1)`. The orchestrator's coroutine, suspended, still holds the chain of calls
it is in: the first call into another package than the orchestrator's is what to name. The
same chain, in a traceback, names the call that failed because no event loop runs here
(`asyncio.sleep(1)`: "no running event loop"). Nothing is imported: modules are looked up in
`sys.modules`, where the awaited code has put them.
"""

from __future__ import annotations

import inspect
import reprlib
import sys
from collections.abc import Iterator
from types import CodeType, FrameType, TracebackType
from typing import Any

from ..errors import OrchestratorAwaitError

_ADVICE = (
    "Orchestrators may only await what ctx gives them: ctx.create_timer(...) instead of "
    "trio.sleep/asyncio.sleep, ctx.call_activity(...) for I/O, dtrio.when_all/when_any to combine."
)
# What trio and asyncio raise when the code that awaits them is not run by their event loop.
_NO_EVENT_LOOP = ("must be called from async context", "no running event loop")

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 30


def await_error(orchestrator: str, coro: Any, yielded: object) -> OrchestratorAwaitError:
    """The error for `coro` (the orchestrator's coroutine, still suspended) having yielded
    `yielded`, something other than a dtrio task."""
    what = _describe(_suspended(coro.cr_await), _package(coro.cr_frame), yielded)
    return OrchestratorAwaitError(
        f"orchestrator {orchestrator!r} awaited {what}, which is not a dtrio task. {_ADVICE}"
    )


def no_event_loop_error(
    orchestrator: str, coro: Any, exc: Exception
) -> OrchestratorAwaitError | None:
    """The error for `exc`, when it is trio's or asyncio's refusal to run outside their event
    loop (raised by a call the orchestrator awaited); None for any other exception."""
    if not isinstance(exc, RuntimeError) or str(exc) not in _NO_EVENT_LOOP:
        return None
    frames = list(_traceback(exc.__traceback__, coro.cr_code))
    if not frames:
        return None
    what = _describe(iter(frames), _package(coro.cr_frame), None)
    error = OrchestratorAwaitError(
        f"orchestrator {orchestrator!r} awaited {what}, which needs an event loop that does "
        f"not run orchestrators ({exc}). {_ADVICE}"
    )
    error.__cause__ = exc
    return error


def _suspended(awaitable: Any) -> Iterator[tuple[CodeType, FrameType] | None]:
    """The calls a suspended coroutine is in, outermost first; None for an awaitable that is
    not a coroutine or generator (an asyncio Future's iterator)."""
    while awaitable is not None:
        code = getattr(awaitable, "cr_code", None) or getattr(awaitable, "gi_code", None)
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
        if code is None or frame is None:
            yield None
            return
        yield code, frame
        awaitable = getattr(awaitable, "cr_await", getattr(awaitable, "gi_yieldfrom", None))


def _traceback(tb: TracebackType | None, orchestrator: CodeType) -> Iterator[tuple[CodeType,
                                                                                 FrameType]]:
    """The calls below the orchestrator's own frame in a traceback."""
    below = False
    while tb is not None:
        if below:
            yield tb.tb_frame.f_code, tb.tb_frame
        below = below or tb.tb_frame.f_code is orchestrator
        tb = tb.tb_next


def _describe(
    calls: Iterator[tuple[CodeType, FrameType] | None], home: str, yielded: object
) -> str:
    for call in calls:
        if call is None:
            break
        code, frame = call
        if code.co_name == "__await__":
            # An awaitable object's own __await__: the object is what was awaited.
            return f"a {code.co_qualname.rpartition('.')[0] or 'foreign'} object"
        module = frame.f_globals.get("__name__", "")
        if _package_of(module) != home:
            return _call(code, frame, module)
    return _object(yielded)


def _call(code: CodeType, frame: FrameType, module: str) -> str:
    """`trio.sleep(1)`: the public name when the package exports the function under it, the
    arguments from the frame (those left at their defaults omitted)."""
    top = module.partition(".")[0]
    function = _lookup(sys.modules.get(top), code.co_qualname)
    if getattr(function, "__code__", None) is code:
        name = f"{top}.{code.co_qualname}"
    else:
        function, name = None, f"{module}.{code.co_qualname}"
    try:
        signature = inspect.signature(function) if function is not None else None
    except (TypeError, ValueError):
        signature = None
    local = frame.f_locals
    count = code.co_argcount + code.co_kwonlyargcount
    arguments = []
    by_name = False  # once an argument is left out, the ones after it need their names
    for index, parameter in enumerate(code.co_varnames[:count]):
        if index == 0 and "." in code.co_qualname and parameter in ("self", "cls"):
            continue
        default = signature.parameters[parameter].default if signature else inspect.Parameter.empty
        if parameter not in local or (
            default is not inspect.Parameter.empty and local[parameter] is default
        ):
            by_name = True
            continue
        text = _repr.repr(local[parameter])
        by_name = by_name or index >= code.co_argcount
        arguments.append(f"{parameter}={text}" if by_name else text)
    return f"{name}({', '.join(arguments)})"


def _lookup(namespace: Any, qualname: str) -> Any:
    for part in qualname.split("."):
        namespace = getattr(namespace, part, None)
        if namespace is None:
            return None
    return namespace


def _object(value: object) -> str:
    kind = type(value)
    top = kind.__module__.lstrip("_").partition(".")[0]
    if top in ("trio", "asyncio"):
        public = _lookup(sys.modules.get(top), kind.__qualname__) is kind
        article = "an" if top == "asyncio" else "a"
        return f"{article} {top} {kind.__qualname__}" if public else f"{article} {top} object"
    return f"{_repr.repr(value)} (a {kind.__qualname__})"


def _package(frame: FrameType | None) -> str:
    return _package_of(frame.f_globals.get("__name__", "") if frame is not None else "")


def _package_of(module: str) -> str:
    return module.partition(".")[0]
