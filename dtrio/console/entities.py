"""`python -m dtrio entities …`: list, show, signal and clean durable entities."""

from __future__ import annotations

import argparse
from typing import Any

from .. import inspection
from ..client import Client, EntityMetadata
from .common import NotFound, OneLineParser, command, command_parser, json_value, moment, paging
from .output import Output, cell


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = command_parser(
        commands, "entities", help="list, inspect, signal and clean durable entities",
        description="List, inspect, signal and clean the durable entities in a store. Exit "
        "codes: 0 ok, 1 error, 2 usage, 3 not found.")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True,
                                parser_class=OneLineParser)

    listing = sub.add_parser("list", parents=[common, paging("entities")],
                             help="list entities",
                             description="Entities ordered by ID, a page at a time.")
    which = listing.add_mutually_exclusive_group()
    which.add_argument("--name", help="only entities of this name (any key)")
    which.add_argument("--prefix", help="only IDs starting with this, e.g. @counter@a")
    listing.add_argument("--since", type=moment, metavar="WHEN",
                         help="modified at or after: 1h, 30m, 2d ago, or an ISO time")
    listing.add_argument("--until", type=moment, metavar="WHEN", help="modified before")
    listing.add_argument("--state", action="store_true", help="show their states")
    listing.add_argument("--transient", action="store_true",
                         help="also entities with no state yet (only messages waiting)")
    listing.set_defaults(run=command(_list))

    show = sub.add_parser("show", parents=[common], help="an entity's state, lock and backlog")
    show.add_argument("entity_id", metavar="ID", help="@name@key")
    show.set_defaults(run=command(_show))

    signal = sub.add_parser("signal", parents=[common], help="send an operation to an entity")
    signal.add_argument("entity_id", metavar="ID", help="@name@key")
    signal.add_argument("operation", metavar="OPERATION")
    signal.add_argument("--input", type=json_value, metavar="JSON",
                        help="the operation's input, as JSON")
    signal.set_defaults(run=command(_signal))

    clean = sub.add_parser(
        "clean", parents=[common],
        help="release orphaned locks and delete empty entities",
        description="Release locks held by orchestrations that no longer run, and delete "
        "entities with no state, lock or waiting messages.")
    clean.add_argument("--keep-empty", action="store_true", help="do not delete empty entities")
    clean.add_argument("--keep-locks", action="store_true", help="do not release orphaned locks")
    clean.set_defaults(run=command(_clean))


async def _list(client: Client, args: argparse.Namespace, out: Output) -> None:
    found: list[EntityMetadata] = []
    token = args.page
    while True:
        page = await client.query_entities(
            name=args.name, instance_id_prefix=args.prefix, last_modified_from=args.since,
            last_modified_to=args.until, include_state=args.state,
            include_transient=args.transient, page_size=args.limit, continuation_token=token)
        found += page.entities
        token = page.continuation_token
        if not args.all or token is None:
            break
    if out.as_json:
        out.json({"entities": [inspection.entity(e) for e in found], "next_page": token})
        return
    headers = ["ENTITY ID", "MODIFIED", "LOCKED BY", "BACKLOG"]
    rows = [[str(e.id), f"{e.last_modified:%Y-%m-%d %H:%M:%S}", e.locked_by or "",
             str(e.backlog_queue_size)] for e in found]
    if args.state:
        headers.append("STATE")
        for row, e in zip(rows, found, strict=True):
            row.append(cell(e.serialized_state))
    out.table(headers, rows)
    if token is not None:
        out.line(f"(more: --page {token})")


async def _show(client: Client, args: argparse.Namespace, out: Output) -> None:
    meta = await client.get_entity(args.entity_id)
    if meta is None:
        raise NotFound(f"no entity with ID {args.entity_id!r}")
    if out.as_json:
        out.json(inspection.entity(meta))
        return
    out.fields([
        ("entity", str(meta.id)), ("modified", f"{meta.last_modified:%Y-%m-%d %H:%M:%S}"),
        ("locked by", meta.locked_by or "-"), ("backlog", str(meta.backlog_queue_size)),
        ("state", inspection.pretty(meta.serialized_state)),
    ])


async def _signal(client: Client, args: argparse.Namespace, out: Output) -> None:
    await client.signal_entity(args.entity_id, args.operation, args.input)
    if out.as_json:
        out.json({"entity_id": args.entity_id, "operation": args.operation, "signaled": True})
    else:
        out.line(f"{args.entity_id}: {args.operation!r} signaled")


async def _clean(client: Client, args: argparse.Namespace, out: Output) -> None:
    result = await client.clean_entity_storage(
        remove_empty_entities=not args.keep_empty, release_orphaned_locks=not args.keep_locks)
    if out.as_json:
        out.json({"empty_entities_removed": result.empty_entities_removed,
                  "orphaned_locks_released": result.orphaned_locks_released})
    else:
        out.line(f"{result.empty_entities_removed} empty entities removed, "
                 f"{result.orphaned_locks_released} orphaned locks released")
