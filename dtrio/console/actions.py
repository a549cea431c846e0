"""The actions on instances (terminate, suspend, resume, raise-event, purge, restart, rewind), on
instances named by ID or on every instance a filter selects, after a confirmation."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from ..client import Client, OrchestrationState
from ..errors import DtrioError
from ..operations import ACTIONS, Action, Skipped, attempt
from .common import ERROR, OK, Usage, command, json_value
from .output import Output
from .selection import existing, query


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


def _params(args: argparse.Namespace) -> dict[str, Any]:
    names = ("output", "reason", "event", "data", "new_id")
    params = {name: getattr(args, name) for name in names if hasattr(args, name)}
    params["recursive"] = not getattr(args, "no_recursive", False)
    return params


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
            if not _confirmed(action, len(states), args):
                print("dtrio: nothing done", file=sys.stderr)
                return ERROR
        return await _many(client, action, states, args, out)
    return run


async def _one(client: Client, action: Action, args: argparse.Namespace, out: Output) -> int:
    state = await existing(client, args.ids[0])
    result = await attempt(client, action, state, _params(args))
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


def _confirmed(action: Action, count: int, args: argparse.Namespace) -> bool:
    if count == 0 or args.yes:
        return True
    print(f"{action.name} {count} instance{'s' if count != 1 else ''}? [y/N] ",
          end="", file=sys.stderr, flush=True)
    # Read while nothing else runs in the command: blocking here holds nothing up.
    return sys.stdin.readline().strip().lower() in ("y", "yes")


async def _many(client: Client, action: Action, states: list[OrchestrationState],
                args: argparse.Namespace, out: Output) -> int:
    done: dict[str, str] = {}
    skipped: dict[str, str] = {}
    failed: dict[str, str] = {}
    progress = _Progress(action.name, len(states))
    for state in states:
        try:
            done[state.instance_id] = await attempt(client, action, state, _params(args))
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
