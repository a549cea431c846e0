"""The operators' actions on an instance (terminate, suspend, resume, raise-event, purge,
restart, rewind): which statuses each applies to, and how it is done through the client. The
command line and the dashboard both act through this table."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import _pb as pb
from .client import Client, OrchestrationState
from .errors import DtrioError
from .state import TERMINAL

S = pb.OrchestrationStatus


class Skipped(DtrioError):
    """The action does not apply to the instance as it is (e.g. purging a running one)."""


# (client, instance, parameters) -> what was done. The parameters, each optional: output, data
# (JSON values), event, reason (text), recursive, new_id (flags).
Do = Callable[[Client, OrchestrationState, Mapping[str, Any]], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class Action:
    name: str
    help: str
    do: Do
    # The statuses it applies to (None: any), and why it is skipped otherwise.
    applies: frozenset[int] | None = None
    otherwise: str = ""


_LIVE = frozenset(int(s) for s in S) - TERMINAL


async def _terminate(client: Client, state: OrchestrationState, p: Mapping[str, Any]) -> str:
    await client.terminate_orchestration(state.instance_id, output=p.get("output"),
                                         recursive=p.get("recursive", True))
    return "terminated"


async def _suspend(client: Client, state: OrchestrationState, p: Mapping[str, Any]) -> str:
    await client.suspend_orchestration(state.instance_id, p.get("reason"))
    return "suspended"


async def _resume(client: Client, state: OrchestrationState, p: Mapping[str, Any]) -> str:
    await client.resume_orchestration(state.instance_id, p.get("reason"))
    return "resumed"


async def _raise(client: Client, state: OrchestrationState, p: Mapping[str, Any]) -> str:
    await client.raise_orchestration_event(state.instance_id, p["event"], p.get("data"))
    return f"event {p['event']!r} raised"


async def _purge(client: Client, state: OrchestrationState, p: Mapping[str, Any]) -> str:
    n = await client.purge_orchestration(state.instance_id, recursive=p.get("recursive", True))
    return f"purged ({n} instance{'s' if n != 1 else ''})"


async def _restart(client: Client, state: OrchestrationState, p: Mapping[str, Any]) -> str:
    new = await client.restart_orchestration(
        state.instance_id, restart_with_new_instance_id=bool(p.get("new_id")))
    return f"restarted as {new}" if p.get("new_id") else "restarted"


async def _rewind(client: Client, state: OrchestrationState, p: Mapping[str, Any]) -> str:
    await client.rewind_orchestration(state.instance_id, p.get("reason"))
    return "rewound"


ACTIONS = [
    Action("terminate", "end instances as TERMINATED", _terminate, _LIVE, "it has finished"),
    Action("suspend", "stop processing instances' events until resumed", _suspend,
           frozenset({int(S.RUNNING), int(S.PENDING)}), "it is not running"),
    Action("resume", "resume suspended instances", _resume,
           frozenset({int(S.SUSPENDED)}), "it is not suspended"),
    Action("raise-event", "send an event to instances", _raise, _LIVE, "it has finished"),
    Action("purge", "delete finished instances with their histories", _purge, TERMINAL,
           "only finished instances are purged; terminate it first"),
    Action("restart", "run instances again with their original input", _restart),
    Action("rewind", "resume failed instances from their failed tasks", _rewind,
           frozenset({int(S.FAILED)}), "only failed instances are rewound"),
]




BY_NAME = {action.name: action for action in ACTIONS}


async def attempt(client: Client, action: Action, state: OrchestrationState,
                  params: Mapping[str, Any]) -> str:
    """Do `action` on the instance, or raise `Skipped` if it does not apply as it is."""
    if action.applies is not None and int(state.runtime_status) not in action.applies:
        raise Skipped(f"cannot {action.name} {state.instance_id!r}: it is "
                      f"{state.runtime_status.name}; {action.otherwise}")
    return await action.do(client, state, params)
