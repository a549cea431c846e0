"""`python -m dtrio instances …`: list, show, history, tree, and the actions on instances."""

from __future__ import annotations

import argparse
from typing import Any

from .. import inspection, timeline
from ..client import Client, OrchestrationState
from .actions import add_action_commands
from .common import OneLineParser, command, command_parser, paging
from .output import Output, cell
from .selection import children, existing, filters, query


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = command_parser(
        commands, "instances", help="list, inspect and control orchestration instances",
        description="List, inspect and control the orchestration instances in a store, while "
        "an engine or sidecar runs on it or not. Exit codes: 0 ok, 1 error, 2 usage, "
        "3 not found.")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True,
                                parser_class=OneLineParser)

    listing = sub.add_parser("list", parents=[common, filters(), paging("instances")],
                             help="list instances",
                             description="Instances, newest first, a page at a time.")
    listing.add_argument("--oldest-first", action="store_true", help="oldest first")
    listing.set_defaults(run=command(_list))

    for name, handler, text in (
        ("show", _show, "an instance's fields, payloads and failure"),
        ("history", _history, "an instance's history events with times and durations"),
        ("tree", _tree, "an instance and its sub-orchestrations"),
    ):
        one = sub.add_parser(name, parents=[common], help=text, description=text.capitalize())
        one.add_argument("instance_id", metavar="ID")
        one.set_defaults(run=command(handler))
    add_action_commands(sub, common, filters())


async def _list(client: Client, args: argparse.Namespace, out: Output) -> None:
    found: list[OrchestrationState] = []
    token = args.page
    while True:
        page = await client.query_orchestrations(
            **query(args), page_size=args.limit, continuation_token=token,
            newest_first=not (args.oldest_first or args.sidecar))
        found += page.states
        token = page.continuation_token
        if not args.all or token is None:
            break
    if out.as_json:
        out.json({"instances": [inspection.instance(s, payloads=False) for s in found],
                  "next_page": token})
        return
    out.table(["INSTANCE ID", "NAME", "STATUS", "CREATED", "UPDATED"], [
        [s.instance_id, s.name, s.runtime_status.name, _time(s.created_at),
         _time(s.last_updated_at)] for s in found], status_column=2)
    if token is not None:
        out.line(f"(more: --page {token})")


def _time(at: Any) -> str:
    return f"{at:%Y-%m-%d %H:%M:%S}" if at is not None else ""


async def _show(client: Client, args: argparse.Namespace, out: Output) -> None:
    state = await existing(client, args.instance_id)
    if out.as_json:
        out.json(inspection.instance(state))
        return
    pairs = [
        ("instance", state.instance_id), ("name", state.name),
        ("version", state.version or ""), ("status", out.status(state.runtime_status.name)),
        ("created", _time(state.created_at)), ("updated", _time(state.last_updated_at)),
        ("completed", _time(state.completed_at)),
        ("parent", state.parent_instance_id or ""),
        ("tags", ", ".join(f"{k}={v}" for k, v in sorted((state.tags or {}).items()))),
        ("custom status", inspection.pretty(state.serialized_custom_status)),
        ("input", inspection.pretty(state.serialized_input)),
        ("output", inspection.pretty(state.serialized_output)),
    ]
    failure = state.failure_details
    while failure is not None:
        pairs.append(("failure", f"{failure.error_type}: {failure.message}"))
        if failure.stack_trace:
            pairs.append(("stack trace", failure.stack_trace.rstrip()))
        failure = failure.inner
    out.fields([(name, value) for name, value in pairs if value])


async def _history(client: Client, args: argparse.Namespace, out: Output) -> None:
    rows, _ = timeline.read(await client.get_orchestration_history(args.instance_id))
    if out.as_json:
        out.json([inspection.event_row(r) for r in rows])
        return
    out.table(["#", "TIME", "ELAPSED", "EVENT", "NAME", "TOOK", "DATA"], [
        [str(r.index), f"{r.timestamp:%H:%M:%S.%f}"[:-3], inspection.seconds(r.elapsed),
         r.kind, cell(r.name, 40), inspection.seconds(r.duration), cell(r.data, 50)]
        for r in rows])


async def _tree(client: Client, args: argparse.Namespace, out: Output) -> None:
    root = await existing(client, args.instance_id)

    async def node(state: OrchestrationState) -> dict[str, Any]:
        kids = [await node(c) for c in await children(client, state.instance_id)]
        return {"instance_id": state.instance_id, "name": state.name,
                "status": state.runtime_status.name, "children": kids}

    tree = await node(root)
    if out.as_json:
        out.json(tree)
        return

    def draw(n: dict[str, Any], lead: str, branch: str) -> None:
        out.line(f"{lead}{branch}{n['instance_id']}  {n['name']}  {out.status(n['status'])}")
        below = lead + ("" if not branch else "   " if branch == "└─ " else "│  ")
        for i, kid in enumerate(n["children"]):
            draw(kid, below, "└─ " if i == len(n["children"]) - 1 else "├─ ")

    draw(tree, "", "")

