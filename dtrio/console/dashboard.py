"""`python -m dtrio dashboard`: the web dashboard on a store, with no engine in this process
(its actions are picked up by whatever engine or sidecar runs on the store)."""

from __future__ import annotations

import argparse
import signal
from typing import Any

import trio

from ..errors import InvalidInput
from .common import command, command_parser, store_options


def add_dashboard_options(parser: argparse.ArgumentParser, *, flag: str) -> list[argparse.Action]:
    """The dashboard's access options (for `dashboard`, and for `serve` beside `flag`)."""
    return [
        parser.add_argument(
            "--dashboard-token-file", metavar="FILE",
            help="require the token in FILE (bearer header, or log in once in the browser); "
            f"needed for {flag} beyond loopback unless read-only"),
        parser.add_argument(
            "--dashboard-read-only", action="store_true",
            help="show, but refuse every action"),
    ]


def add_commands(commands: Any) -> None:
    parser = command_parser(
        commands, "dashboard", parents=[store_options(command_line=False)],
        help="serve the web dashboard on a store",
        description="Serve the web dashboard on a store. An engine or sidecar running on the "
        "same store carries out its actions.")
    parser.add_argument(
        "--listen", default="127.0.0.1:8233", metavar="[HOST:]PORT",
        help="address to serve on (default: 127.0.0.1:8233; 0 as the port: any free port)")
    add_dashboard_options(parser, flag="--listen")
    parser.set_defaults(run=command(_serve))


def access_from(args: argparse.Namespace) -> Any:
    from ..dashboard.security import Access, read_token

    token = read_token(args.dashboard_token_file) if args.dashboard_token_file else None
    return Access(token=token, read_only=args.dashboard_read_only)


async def _serve(client: Any, args: argparse.Namespace, out: Any) -> None:
    from ..dashboard.security import parse_address
    from ..dashboard.service import serve_dashboard

    try:
        host, port = parse_address(args.listen)
    except InvalidInput as exc:
        raise InvalidInput(f"--listen: {exc}") from None
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(lambda task_status: serve_dashboard(
                client, host, port, access=access_from(args), task_status=task_status))
            print(f"dtrio dashboard on {url}", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
