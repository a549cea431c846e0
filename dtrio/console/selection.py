"""Which instances a command is about: the filter options, and the instances they select."""

from __future__ import annotations

import argparse
from typing import Any

from ..client import Client, OrchestrationState
from .common import NotFound, moment, statuses


def filters() -> argparse.ArgumentParser:
    found = argparse.ArgumentParser(add_help=False)
    found.add_argument("--status", type=statuses, metavar="S[,S…]",
                       help="only these statuses, e.g. RUNNING,FAILED")
    found.add_argument("--name", help="only instances of this orchestrator")
    found.add_argument("--prefix", help="only instance IDs starting with this")
    found.add_argument("--since", type=moment, metavar="WHEN",
                       help="created at or after: 1h, 30m, 2d ago, or an ISO time")
    found.add_argument("--until", type=moment, metavar="WHEN", help="created before")
    return found


def query(args: argparse.Namespace) -> dict[str, Any]:
    """The client's query arguments for the filter options."""
    return {"statuses": args.status, "name": args.name, "instance_id_prefix": args.prefix,
            "created_from": args.since, "created_to": args.until}


async def existing(client: Client, instance_id: str) -> OrchestrationState:
    state = await client.get_orchestration_state(instance_id)
    if state is None:
        raise NotFound(f"no orchestration instance with ID {instance_id!r}")
    return state


async def children(client: Client, instance_id: str) -> list[OrchestrationState]:
    found: list[OrchestrationState] = []
    token = None
    while True:
        page = await client.query_orchestrations(
            parent_instance_id=instance_id, continuation_token=token, page_size=500)
        found += page.states
        token = page.continuation_token
        if token is None:
            return found
