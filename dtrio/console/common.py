"""What every operators' command shares: the options that name the store and the output, the
types of their arguments, and running a command against the store with its exit code
(0 ok, 1 error, 2 usage, 3 not found)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import trio

from .. import _pb as pb
from .. import inspection
from ..backend import is_postgres_url, open_backend
from ..client import Client
from ..clock import Clock
from ..errors import DtrioError, InstanceNotFound, InvalidInput
from .output import Output

OK, ERROR, USAGE, NOT_FOUND = 0, 1, 2, 3


class NotFound(DtrioError, LookupError):
    """What a command was asked about does not exist (exit code 3)."""


class Usage(DtrioError):
    """The arguments make no sense together (exit code 2)."""


# Handlers get a store's client, or a sidecar's (RemoteClient, with the same methods).
Handler = Callable[[Client, argparse.Namespace, Output], Awaitable[int | None]]


class OneLineParser(argparse.ArgumentParser):
    """A usage error in one line on stderr, exit code 2 (argparse prints the usage first)."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        one_line_error(self, message)


def one_line_error(parser: argparse.ArgumentParser, message: str) -> Any:
    parser.exit(USAGE, f"{parser.prog}: error: {message} (see --help)\n")


def command_parser(commands: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A command under `python -m dtrio` whose usage errors take one line, as its
    subcommands' do (the commands beside it are made by argparse's own class)."""
    parser: argparse.ArgumentParser = commands.add_parser(name, **kwargs)
    parser.error = partial(one_line_error, parser)  # type: ignore[method-assign]
    return parser


def store_options(*, command_line: bool = True) -> argparse.ArgumentParser:
    """--db, and for the command line's subcommands --sidecar and --json too."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db", default=os.environ.get("DTRIO_DB") or "dtrio.sqlite3",
        help="the store: a SQLite file or a postgresql:// URL (default: $DTRIO_DB, else "
        "./dtrio.sqlite3)")
    if command_line:
        common.add_argument(
            "--sidecar", metavar="HOST:PORT",
            help="instead of a store, a Durable Task sidecar (dtrio's or another engine's), "
            "through the gRPC client protocol; lists then come oldest first, and --name "
            "filters each page the sidecar returns")
        common.add_argument("--json", action="store_true", help="print JSON for scripts")
    return common


def paging(what: str) -> argparse.ArgumentParser:
    """--limit, --page and --all, for a listing of `what`."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--limit", type=positive, default=50, metavar="N",
                         help=f"{what} per page (default: 50)")
    options.add_argument("--page", metavar="TOKEN",
                         help="the page after the one that printed this token")
    options.add_argument("--all", action="store_true", help="every page")
    return options


def command(handler: Handler) -> Callable[[argparse.Namespace], int]:
    """An argparse `run` that opens the store, runs `handler` on a client and closes it."""
    def run(args: argparse.Namespace) -> int:
        try:
            return trio.run(_run, handler, args)
        except BaseException as exc:
            error = exc
            # A nursery (the sidecar client's loop) wraps a command's error in a group.
            while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
                error = error.exceptions[0]
            codes = {NotFound: NOT_FOUND, InstanceNotFound: NOT_FOUND, Usage: USAGE}
            code = next((c for kind, c in codes.items() if isinstance(error, kind)), None)
            if code is None:
                raise
            print(f"dtrio: {error}", file=sys.stderr)
            return code
    return run


async def _run(handler: Handler, args: argparse.Namespace) -> int:
    if getattr(args, "sidecar", None):
        from ..grpc.remote_client import open_remote_client

        async with open_remote_client(args.sidecar) as remote:
            return await handler(remote, args, Output(as_json=args.json)) or OK  # type: ignore
    if not is_postgres_url(args.db) and not Path(args.db).is_file():
        # Opening would create an empty store, and every answer from it would be wrong.
        raise NotFound(f"no store at {args.db!r}: give --db (a SQLite file or a "
                       "postgresql:// URL) or set DTRIO_DB")
    clock = Clock()
    backend = open_backend(args.db, clock)
    try:
        client = Client(backend, clock, poll_interval=1.0)
        return await handler(client, args, Output(as_json=getattr(args, "json", False))) or OK
    finally:
        await backend.aclose()


# -- argument types -------------------------------------------------------------------------

def moment(text: str) -> datetime:
    """A time: `1h`, `30m`, `2d` ago, or an ISO 8601 time (UTC unless it says otherwise)."""
    try:
        return inspection.moment(text)
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_STATUSES = {s.name: s for s in pb.OrchestrationStatus}


def statuses(text: str) -> list[pb.OrchestrationStatus]:
    """RUNNING,FAILED (any case)."""
    names = [part.strip().upper() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in _STATUSES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown status {', '.join(unknown) or repr(text)}; one or more of "
            f"{', '.join(_STATUSES)}, comma-separated")
    return [_STATUSES[n] for n in names]


def json_value(text: str) -> Any:
    """A JSON text's value."""
    try:
        return json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text!r}") from None
    return text


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1, not {text!r}")
    return value
