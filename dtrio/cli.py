"""`python -m dtrio`: the command line. Errors become one-line messages and exit codes here."""

from __future__ import annotations

import argparse
import logging
import sys

import trio

from .errors import DtrioError


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    trio.run(run_demo, args.db)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dtrio", description="dtrio durable task engine")
    parser.add_argument("--log-level", default="warning", help="debug, info, warning or error")
    commands = parser.add_subparsers(dest="command")
    demo = commands.add_parser("demo", help="run an example orchestration on the embedded SQLite store")
    demo.add_argument("--db", default="dtrio.sqlite3", help="SQLite file (default: ./dtrio.sqlite3)")
    demo.set_defaults(run=_demo)
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["demo", *(argv if argv is not None else sys.argv[1:])])
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except DtrioError as exc:
        print(f"dtrio: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
