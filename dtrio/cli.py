"""`python -m dtrio`: the command line. Errors become one-line messages and exit codes here."""

from __future__ import annotations

import argparse
import errno
import logging
import math
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from functools import partial
from typing import Any

import trio
from trio_util import wait_any

from . import __version__
from .console import add_commands as add_operator_commands
from .console.dashboard import add_dashboard_options
from .errors import DtrioError
from .logs import configure_logging

log = logging.getLogger("dtrio.cli")


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    trio.run(run_demo, args.db)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .grpc.security import open_door

    _check_listen(args.host, args.port)
    # A missing or empty token file, or a bad certificate, stops the start before the store
    # is created or opened.
    open_door(*(getattr(args, name) for name in _DOOR))
    trio.run(_run_sidecar, args)
    return 0


def _check_listen(host: str, port: int) -> None:
    """Fail before the store is created or opened when the sidecar could not listen: bind a
    plain socket the way the sidecar will, then let it go."""
    where = f"cannot listen on {host}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise OSError(
            exc.errno, f"{where}: unknown host {host!r} ({exc.strerror}); check --host"
        ) from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            hint = (
                "; another process is using the port: choose another with --port "
                "(0: any free port)" if exc.errno == errno.EADDRINUSE else ""
            )
            raise OSError(exc.errno, f"{where}: {exc.strerror}{hint}") from None


async def _run_sidecar(args: argparse.Namespace) -> None:
    from .grpc import serve_sidecar
    from .logs import as_debug
    from .registry import Registry
    from .services import EngineOptions, open_engine

    # The pool's lines on each connection it drops or fails to make: the store says it in one.
    as_debug("psycopg.pool", logging.WARNING)

    options = EngineOptions(
        local_workers=False,
        synchronous=args.synchronous,
        max_concurrent_orchestrations=args.max_concurrent_orchestrations,
        max_concurrent_activities=args.max_concurrent_activities,
        max_concurrent_entities=args.max_concurrent_entities,
        dashboard=args.dashboard, dashboard_token_file=args.dashboard_token_file,
        dashboard_read_only=args.dashboard_read_only,
        max_poll_interval=args.max_poll_interval,
    )
    # Opened first, so that a signal arriving while the store opens is not lost.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_engine(Registry(), db=args.db, options=options) as engine:
            async with trio.open_nursery() as nursery:
                # Unset, the sidecar's own default applies (the gRPC stack is imported late).
                limits = {name: getattr(args, name)
                          for name in ("max_message_size", "max_work_item_size")
                          if getattr(args, name) is not None}
                door = {name: getattr(args, name) for name in _DOOR}
                drained = trio.Event()

                async def sidecar(*, task_status: trio.TaskStatus[int]) -> None:
                    await serve_sidecar(
                        engine, args.host, args.port, task_status=task_status,
                        entity_request_version=args.entity_request_version,
                        max_concurrent_streams=args.max_concurrent_streams, **limits, **door)
                    drained.set()

                port = await nursery.start(sidecar)
                where = getattr(engine.backend, "where", args.db)
                print(f"dtrio sidecar listening on {args.host}:{port} (store: {where})", flush=True)
                if engine.dashboard_url:
                    print(f"dtrio dashboard on {engine.dashboard_url}", flush=True)
                await _next_signal(signals, "shutting down")
                # Workers finish what they hold (within the grace), the rest is given back and
                # their streams end; a second signal gives everything back at once.
                engine.shutdown()
                await wait_any(drained.wait, partial(
                    _next_signal, signals, "giving back what workers still hold"))
                nursery.cancel_scope.cancel()


# serve_sidecar's TLS and token options, named as its flags are.
_DOOR = ("tls_cert", "tls_key", "tls_client_ca", "auth_token_file")


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


def _positive(text: str) -> int:
    """A whole number of at least 1."""
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return number


def _seconds(text: str) -> float:
    """A positive, finite number of seconds."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return seconds


def _port(text: str) -> int:
    """A TCP port, or 0 for any free one."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(
            f"must be a port number from 0 to 65535 (0: any free port), not {text!r}"
        )
    return port


_LEVELS = ("debug", "info", "warning", "error", "critical")
# The flags that exist before the command and after `serve`.
_LOG_FLAGS = ("log_level", "library_log_level", "log_format")
_LIBRARY_LEVEL_HELP = (
    "the libraries' lines (grpclib, h2, hpack, asyncio): a level as for --log-level (default: "
    "warning, or --log-level when higher; at debug, hpack dumps every header, unless a token "
    "is required)")


class _BadVariable(Exception):
    """An environment variable whose value its flag would refuse."""


def _environment(
    actions: Sequence[argparse.Action], environ: Mapping[str, str]
) -> dict[str, object]:
    """Defaults for `actions` from DTRIO_<FLAG> variables (`--max-message-size`:
    DTRIO_MAX_MESSAGE_SIZE), read as the flag reads its value. An empty variable is unset."""
    defaults: dict[str, object] = {}
    for action in actions:
        flag = action.option_strings[-1]
        variable = "DTRIO_" + flag.lstrip("-").upper().replace("-", "_")
        text = environ.get(variable, "")
        if not text:
            continue
        try:
            value = action.type(text) if callable(action.type) else text
        except (argparse.ArgumentTypeError, ValueError) as exc:
            reason = (str(exc) if isinstance(exc, argparse.ArgumentTypeError)
                      else f"not a valid {getattr(action.type, '__name__', 'value')}")
            raise _BadVariable(f"{variable}={text!r} (for {flag}): {reason}") from None
        if action.choices is not None and value not in action.choices:
            choices = ", ".join(map(str, action.choices))
            raise _BadVariable(f"{variable}={text!r} (for {flag}): must be one of {choices}")
        defaults[action.dest] = value
    return defaults


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


def _parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser,
                       list[argparse.Action]]:
    parser = argparse.ArgumentParser(
        prog="python -m dtrio", description="dtrio durable task engine",
        epilog="Run 'python -m dtrio COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"dtrio {__version__}")
    log_level: dict[str, Any] = {"type": str.lower, "choices": _LEVELS, "metavar": "LEVEL"}
    parser.add_argument("--log-level", default=None, **log_level,
                        help=f"dtrio's own lines: {', '.join(_LEVELS)} "
                        "(default: warning; info for serve)")
    parser.add_argument("--library-log-level", default=None, **log_level,
                        help=_LIBRARY_LEVEL_HELP)
    parser.add_argument("--log-format", default="text", choices=("text", "json"),
                        help="log lines as text or as JSON objects (default: text)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="run an example orchestration on the embedded SQLite store"
    )
    demo.add_argument(
        "--db", default="dtrio-demo.sqlite3",
        help="SQLite file (default: ./dtrio-demo.sqlite3, apart from the sidecar's store)",
    )
    demo.set_defaults(run=_demo)
    serve = commands.add_parser(
        "serve", help="serve the Durable Task gRPC protocol to the official SDKs",
        description="Serve the Durable Task gRPC protocol to the official SDKs. Every flag "
        "can also be set by an environment variable: DTRIO_ and the flag's name in capitals, "
        "dashes as underscores (--port: DTRIO_PORT); a flag given wins over its variable.",
    )
    flags = [
        serve.add_argument(
            "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
        ),
        serve.add_argument(
            "--port", type=_port, default=4001,
            help="port to listen on, 0 for any free port (default: 4001)",
        ),
        serve.add_argument(
            "--db", default="dtrio.sqlite3",
            help="SQLite file (default: ./dtrio.sqlite3; :memory: for a throwaway store), or a "
            "postgresql:// URL",
        ),
        serve.add_argument(
            "--synchronous", type=str.upper, default="NORMAL", choices=("NORMAL", "FULL"),
            help="SQLite durability: NORMAL survives a process crash, FULL also a power loss "
            "(default: NORMAL)",
        ),
        # Given after `serve`; the defaults belong to the same flags before it.
        serve.add_argument("--log-level", default=argparse.SUPPRESS, **log_level,
                           help=f"dtrio's own lines: {', '.join(_LEVELS)} (default: info)"),
        serve.add_argument("--library-log-level", default=argparse.SUPPRESS, **log_level,
                           help=_LIBRARY_LEVEL_HELP),
        serve.add_argument("--log-format", default=argparse.SUPPRESS, choices=("text", "json"),
                           help="log lines as text or as JSON objects (default: text)"),
        serve.add_argument(
            "--max-concurrent-orchestrations", type=int, default=200, metavar="N",
            help="orchestration steps out with workers at once (default: 200)",
        ),
        serve.add_argument(
            "--max-concurrent-activities", type=int, default=200, metavar="N",
            help="activities out with workers at once (default: 200)",
        ),
        serve.add_argument(
            "--max-concurrent-entities", type=int, default=200, metavar="N",
            help="entity batches out with workers at once (default: 200)",
        ),
        serve.add_argument(
            "--max-poll-interval", type=_seconds, default=1.0, metavar="SECONDS",
            help="longest wait before looking for work other processes on the store wrote "
            "(default: 1); on PostgreSQL their commits wake the sidecar at once, and this is "
            "the safety net",
        ),
        serve.add_argument(
            "--entity-request-version", type=int, default=2, choices=(1, 2),
            help="entity work items as entityRequestV2 (2, default) or entityRequest (1), "
            "for workers that take only the older form",
        ),
        serve.add_argument(
            "--max-message-size", type=_size, default=None, metavar="SIZE",
            help="largest request a client or worker may send, e.g. 64MiB (default: 16MiB); "
            "a worker's larger result fails its activity or orchestration",
        ),
        serve.add_argument(
            "--max-work-item-size", type=_size, default=None, metavar="SIZE",
            help="largest work item sent to a worker (default: 4MiB, what gRPC clients accept "
            "unless configured for more); an activity or orchestration whose work item is "
            "larger fails",
        ),
        serve.add_argument(
            "--max-concurrent-streams", type=_positive, default=100, metavar="N",
            help="calls one connection may have open at once; a client opening more waits for "
            "its turn (default: 100)",
        ),
        serve.add_argument(
            "--tls-cert", default=None, metavar="FILE",
            help="serve over TLS with this PEM certificate (with its chain); needs --tls-key",
        ),
        serve.add_argument(
            "--tls-key", default=None, metavar="FILE", help="the PEM private key of --tls-cert",
        ),
        serve.add_argument(
            "--tls-client-ca", default=None, metavar="FILE",
            help="mutual TLS: accept only clients whose certificate this PEM CA signed",
        ),
        serve.add_argument(
            "--auth-token-file", default=None, metavar="FILE",
            help="every call but Hello must carry 'authorization: Bearer <token>', the token "
            "being this file's text (whitespace around it ignored)",
        ),
        serve.add_argument(
            "--dashboard", metavar="[HOST:]PORT", default=None,
            help="also serve the web dashboard, e.g. 8233 or 127.0.0.1:8233 (default: none)"),
        # A flag alone, with no variable: its presence is its value.
        *add_dashboard_options(serve, flag="--dashboard")[:1],
    ]
    serve.set_defaults(run=_serve)
    add_operator_commands(commands)
    return parser, serve, flags


def _given(argv: list[str]) -> set[str]:
    """Which of serve's flags `argv` gives (before or after `serve`, abbreviated or not): their
    variables are not read at all, so a stray DTRIO_PORT cannot stop `--port 4001`."""
    parser, serve, flags = _parser()
    unset = object()
    parser.set_defaults(**dict.fromkeys(_LOG_FLAGS, unset))
    serve.set_defaults(**{a.dest: unset for a in flags if a.default is not argparse.SUPPRESS})
    args = parser.parse_args(argv)
    return {a.dest for a in flags if getattr(args, a.dest) is not unset}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser, serve, flags = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        # Nothing to run is a usage error, as argparse treats a missing command: help on
        # stderr and exit code 2, so a script that forgot the command does not pass silently.
        parser.print_help(sys.stderr)
        return 2
    if args.command == "serve":
        given = _given(argv)
        try:
            defaults = _environment([a for a in flags if a.dest not in given], os.environ)
        except _BadVariable as exc:
            print(f"python -m dtrio serve: error: environment variable {exc}", file=sys.stderr)
            return 2
        # The logging flags exist before `serve` too: their variables set the outer defaults,
        # so that either spelling of the flag wins over the variable.
        outer = {dest: defaults.pop(dest) for dest in _LOG_FLAGS if dest in defaults}
        parser.set_defaults(**outer)
        serve.set_defaults(**defaults)
        args = parser.parse_args(argv)
    if args.log_level is None:
        # A server says when it starts, stops and who connects.
        args.log_level = "info" if args.command == "serve" else "warning"
    configure_logging(args.log_level, args.log_format, others=args.library_log_level)
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
