"""The actions on instances (terminate, suspend, resume, raise-event, purge, restart, rewind), on
instances named by ID or on every instance a filter selects, after a confirmation."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from .. import _pb as pb
from ..client import Client, OrchestrationState
from ..errors import DtrioError
from ..state import TERMINAL
from .common import ERROR, OK, Usage, command, json_value
from .output import Output
from .selection import existing, query

S = pb.OrchestrationStatus


class Skipped(DtrioError):
    """The action does not apply to the instance as it is (e.g. purging a running one)."""


Do = Callable[[Client, OrchestrationState, argparse.Namespace], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class Action:
    name: str
    help: str
    do: Do
    # The statuses it applies to (None: any), and why it is skipped otherwise.
    applies: frozenset[int] | None = None
    otherwise: str = ""


_LIVE = frozenset(int(s) for s in S) - TERMINAL


async def _terminate(client: Client, state: OrchestrationState, args: Any) -> str:
    await client.terminate_orchestration(state.instance_id, output=args.output,
                                         recursive=not args.no_recursive)
    return "terminated"


async def _suspend(client: Client, state: OrchestrationState, args: Any) -> str:
    await client.suspend_orchestration(state.instance_id, args.reason)
    return "suspended"


async def _resume(client: Client, state: OrchestrationState, args: Any) -> str:
    await client.resume_orchestration(state.instance_id, args.reason)
    return "resumed"


async def _raise(client: Client, state: OrchestrationState, args: Any) -> str:
    await client.raise_orchestration_event(state.instance_id, args.event, args.data)
    return f"event {args.event!r} raised"


async def _purge(client: Client, state: OrchestrationState, args: Any) -> str:
    n = await client.purge_orchestration(state.instance_id, recursive=not args.no_recursive)
    return f"purged ({n} instance{'s' if n != 1 else ''})"


async def _restart(client: Client, state: OrchestrationState, args: Any) -> str:
    new = await client.restart_orchestration(
        state.instance_id, restart_with_new_instance_id=args.new_id)
    return f"restarted as {new}" if args.new_id else "restarted"


async def _rewind(client: Client, state: OrchestrationState, args: Any) -> str:
    await client.rewind_orchestration(state.instance_id, args.reason)
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


def add_action_commands(sub: Any, common: argparse.ArgumentParser,
                        filters: argparse.ArgumentParser) -> None:
    for action in ACTIONS:
        parser = sub.add_parser(
            action.name, parents=[common, filters], help=action.help,
            description=f"{action.help.capitalize()}: those named by ID, or every instance "
            "the filters select (after a confirmation).")
        if action.name == "raise-event":
            parser.add_argument("event", metavar="NAME", help="the event's name")
            parser.add_argument("--data", type=json_value, metavar="JSON",
                                help="the event's data, as JSON")
        parser.add_argument("ids", nargs="*", metavar="ID", help="instance IDs")
        if action.name == "terminate":
            parser.add_argument("--output", type=json_value, metavar="JSON",
                                help="the instances' output, as JSON")
        if action.name in ("terminate", "purge"):
            parser.add_argument("--no-recursive", action="store_true",
                                help="leave their sub-orchestrations alone")
        if action.name in ("suspend", "resume", "rewind"):
            parser.add_argument("--reason", help="recorded in the history")
        if action.name == "restart":
            parser.add_argument("--new-id", action="store_true",
                                help="run a copy under a new instance ID")
        parser.add_argument("--yes", "-y", action="store_true",
                            help="do not ask for confirmation (filters only)")
        parser.set_defaults(run=command(_runner(action)))


def _runner(action: Action) -> Callable[[Client, argparse.Namespace, Output], Awaitable[int]]:
    async def run(client: Client, args: argparse.Namespace, out: Output) -> int:
        filtered = any(v is not None for v in query(args).values())
        if args.ids and filtered:
            raise Usage(f"{action.name}: give instance IDs or filters, not both")
        if not args.ids and not filtered:
            raise Usage(f"{action.name}: give instance IDs, or filters (--status, --name, "
                        "--prefix, --since, --until) to act on every instance they select")
        if args.ids:
            if len(args.ids) == 1:
                return await _one(client, action, args, out)
            states = [await existing(client, iid) for iid in args.ids]
        else:
            states = await _selected(client, args)
            if not await _confirmed(action, len(states), args):
                print("dtrio: nothing done", file=sys.stderr)
                return ERROR
        return await _many(client, action, states, args, out)
    return run


async def _attempt(client: Client, action: Action, state: OrchestrationState,
                   args: argparse.Namespace) -> str:
    if action.applies is not None and int(state.runtime_status) not in action.applies:
        raise Skipped(f"cannot {action.name} {state.instance_id!r}: it is "
                      f"{state.runtime_status.name}; {action.otherwise}")
    return await action.do(client, state, args)


async def _one(client: Client, action: Action, args: argparse.Namespace, out: Output) -> int:
    state = await existing(client, args.ids[0])
    result = await _attempt(client, action, state, args)
    if out.as_json:
        out.json({"instance_id": state.instance_id, "action": action.name, "result": result})
    else:
        out.line(f"{state.instance_id}: {result}")
    return OK


async def _selected(client: Client, args: argparse.Namespace) -> list[OrchestrationState]:
    found: list[OrchestrationState] = []
    token = None
    while True:
        page = await client.query_orchestrations(
            **query(args), page_size=500, continuation_token=token)
        found += page.states
        token = page.continuation_token
        if token is None:
            return found


async def _confirmed(action: Action, count: int, args: argparse.Namespace) -> bool:
    if count == 0 or args.yes:
        return True
    print(f"{action.name} {count} instance{'s' if count != 1 else ''}? [y/N] ",
          end="", file=sys.stderr, flush=True)
    answer = await trio.to_thread.run_sync(sys.stdin.readline)
    return answer.strip().lower() in ("y", "yes")


async def _many(client: Client, action: Action, states: list[OrchestrationState],
                args: argparse.Namespace, out: Output) -> int:
    done: dict[str, str] = {}
    skipped: dict[str, str] = {}
    failed: dict[str, str] = {}
    progress = _Progress(action.name, len(states))
    for state in states:
        try:
            done[state.instance_id] = await _attempt(client, action, state, args)
        except Skipped as exc:
            skipped[state.instance_id] = str(exc)
        except DtrioError as exc:
            failed[state.instance_id] = str(exc)
        progress.step()
    progress.close()
    if out.as_json:
        out.json({"action": action.name, "matched": len(states), "done": done,
                  "skipped": skipped, "failed": failed})
    else:
        for iid, why in failed.items():
            print(f"dtrio: {iid}: {why}", file=sys.stderr)
        out.line(f"{action.name}: {len(done)} done, {len(skipped)} skipped, "
                 f"{len(failed)} failed, of {len(states)}")
    return ERROR if failed else OK


class _Progress:
    """A bar on stderr, when stderr is a terminal."""

    WIDTH = 30

    def __init__(self, what: str, total: int) -> None:
        self.what, self.total, self.count = what, total, 0
        self.shown = sys.stderr.isatty() and total > 0

    def step(self) -> None:
        self.count += 1
        if self.shown:
            filled = self.WIDTH * self.count // self.total
            sys.stderr.write(f"\r{self.what} [{'#' * filled}{'.' * (self.WIDTH - filled)}] "
                             f"{self.count}/{self.total}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
