"""`python -m dtrio`: the command line. Errors become one-line messages and exit codes here."""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
from collections.abc import AsyncIterator
from functools import partial

import trio
from trio_util import wait_any

from .errors import DtrioError
from .logs import configure_logging

log = logging.getLogger("dtrio.cli")


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    trio.run(run_demo, args.db)
    return 0


def _serve(args: argparse.Namespace) -> int:
    trio.run(_run_sidecar, args)
    return 0


async def _run_sidecar(args: argparse.Namespace) -> None:
    from .grpc import serve_sidecar
    from .registry import Registry
    from .services import EngineOptions, open_engine

    options = EngineOptions(
        local_workers=False,
        max_concurrent_orchestrations=args.max_concurrent_orchestrations,
        max_concurrent_activities=args.max_concurrent_activities,
        max_concurrent_entities=args.max_concurrent_entities,
    )
    # Opened first, so that a signal arriving while the store opens is not lost.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_engine(Registry(), db=args.db, options=options) as engine:
            async with trio.open_nursery() as nursery:
                # Unset, the sidecar's own default applies (the gRPC stack is imported late).
                limits = {name: getattr(args, name)
                          for name in ("max_message_size", "max_work_item_size")
                          if getattr(args, name) is not None}
                drained = trio.Event()

                async def sidecar(*, task_status: trio.TaskStatus[int]) -> None:
                    await serve_sidecar(
                        engine, args.host, args.port, task_status=task_status,
                        entity_request_version=args.entity_request_version, **limits)
                    drained.set()

                port = await nursery.start(sidecar)
                where = getattr(engine.backend, "where", args.db)
                print(f"dtrio sidecar listening on {args.host}:{port} (store: {where})", flush=True)
                await _next_signal(signals, "shutting down")
                # Workers finish what they hold (within the grace), the rest is given back and
                # their streams end; a second signal gives everything back at once.
                engine.shutdown()
                await wait_any(drained.wait, partial(
                    _next_signal, signals, "giving back what workers still hold"))
                nursery.cancel_scope.cancel()


async def _next_signal(signals: AsyncIterator[int], what: str) -> None:
    async for signum in signals:
        log.info("%s: %s", signal.Signals(signum).name, what)
        return


def _size(text: str) -> int:
    """A byte count: 16777216, 16MiB, 16M, 512KiB (binary units, whichever way written)."""
    match = re.fullmatch(r"(\d+)\s*(?:([KMG])(?:I?B)?|B)?", text.strip().upper())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 16777216 or 16MiB)")
    size = int(match[1]) << {None: 0, "K": 10, "M": 20, "G": 30}[match[2]]
    if size < 1:
        raise argparse.ArgumentTypeError("must be at least 1 byte")
    return size


def _only_error(exc: BaseException) -> BaseException:
    """The error a nursery wrapped in a group, when it is the only one."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _message(error: BaseException) -> str:
    # An OSError's own text starts with "[Errno N]"; its strerror alone reads better.
    if isinstance(error, OSError) and error.strerror and error.filename is None:
        return error.strerror
    return str(error)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dtrio", description="dtrio durable task engine"
    )
    levels = "debug, info, warning or error"
    parser.add_argument("--log-level", default="warning", help=levels)
    parser.add_argument("--log-format", default="text", choices=("text", "json"),
                        help="log lines as text or as JSON objects (default: text)")
    commands = parser.add_subparsers(dest="command")
    demo = commands.add_parser(
        "demo", help="run an example orchestration on the embedded SQLite store"
    )
    demo.add_argument(
        "--db", default="dtrio.sqlite3", help="SQLite file (default: ./dtrio.sqlite3)"
    )
    demo.set_defaults(run=_demo)
    serve = commands.add_parser(
        "serve", help="serve the Durable Task gRPC protocol to the official SDKs"
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    serve.add_argument("--port", type=int, default=4001, help="port to listen on (default: 4001)")
    serve.add_argument(
        "--db", default="dtrio.sqlite3",
        help="SQLite file (default: ./dtrio.sqlite3; :memory: for a throwaway store)",
    )
    serve.add_argument("--log-level", default=argparse.SUPPRESS, help=f"{levels} (default: info)")
    serve.add_argument("--log-format", default=argparse.SUPPRESS, choices=("text", "json"),
                       help="log lines as text or as JSON objects (default: text)")
    serve.add_argument(
        "--max-concurrent-orchestrations", type=int, default=200, metavar="N",
        help="orchestration steps out with workers at once (default: 200)",
    )
    serve.add_argument(
        "--max-concurrent-activities", type=int, default=200, metavar="N",
        help="activities out with workers at once (default: 200)",
    )
    serve.add_argument(
        "--max-concurrent-entities", type=int, default=200, metavar="N",
        help="entity batches out with workers at once (default: 200)",
    )
    serve.add_argument(
        "--entity-request-version", type=int, default=2, choices=(1, 2),
        help="entity work items as entityRequestV2 (2, default) or entityRequest (1), "
        "for workers that take only the older form",
    )
    serve.add_argument(
        "--max-message-size", type=_size, default=None, metavar="SIZE",
        help="largest request a client or worker may send, e.g. 64MiB (default: 16MiB); "
        "a worker's larger result fails its activity or orchestration",
    )
    serve.add_argument(
        "--max-work-item-size", type=_size, default=None, metavar="SIZE",
        help="largest work item sent to a worker (default: 4MiB, what gRPC clients accept "
        "unless configured for more); an activity or orchestration whose work item is larger "
        "fails",
    )
    serve.set_defaults(run=_serve)
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["demo", *(argv if argv is not None else sys.argv[1:])])
    if args.command == "serve" and "--log-level" not in (argv if argv is not None else sys.argv):
        args.log_level = "info"  # a server says when it starts, stops and who connects
    if args.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        print(
            f"dtrio: --log-level must be one of {levels}, not {args.log_level!r}", file=sys.stderr
        )
        return 2
    configure_logging(args.log_level, args.log_format)
    try:
        return args.run(args)
    except BaseException as exc:
        error = _only_error(exc)
        if isinstance(error, KeyboardInterrupt):
            return 130
        if isinstance(error, (DtrioError, OSError)):
            print(f"dtrio: {_message(error)}", file=sys.stderr)
            return 1
        raise
