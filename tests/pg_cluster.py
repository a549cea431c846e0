"""A throwaway PostgreSQL server for tests: `DTRIO_TEST_POSTGRES` (a URL) if set, else a cluster
initialised in a temporary directory from the local binaries and stopped at the end.

Without either, tests that need PostgreSQL are skipped with the reason; under CI=true a missing
server is a failure, never a skip.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

_USER = "postgres"  # the unprivileged user the server runs as when the tests run as root
_ids = itertools.count()


def _binaries() -> str | None:
    found = shutil.which("initdb")
    if found:
        return os.path.dirname(found)
    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(bindir, "initdb")):
            return bindir
    return None


def unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL is required under CI: {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_server_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", _USER], check=True)
    return ["runuser", "-u", _USER, "--"]


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield the URL of a server the tests may create databases on."""
    url = os.environ.get("DTRIO_TEST_POSTGRES")
    if url:
        _need_psycopg()
        yield url
        return
    with own_cluster() as cluster:
        yield cluster.url


def _need_psycopg() -> None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        unavailable("psycopg is not installed (pip install -e '.[postgres]')")


class Cluster:
    """A server these tests started, and may restart."""

    def __init__(self, bindir: str, prefix: list[str], data: str, log: str, port: int) -> None:
        self._pg_ctl = [*prefix, f"{bindir}/pg_ctl", "-D", data, "-l", log]
        self.log = log  # the server's log file
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def restart(self) -> None:
        """`pg_ctl restart`: every connection is closed, and the server is back on return."""
        subprocess.run([*self._pg_ctl, "-w", "restart"], check=True, capture_output=True)

    def stop(self) -> None:
        subprocess.run([*self._pg_ctl, "-m", "immediate", "stop"], capture_output=True)


@contextmanager
def own_cluster() -> Iterator[Cluster]:
    """A cluster of its own from the local binaries (never DTRIO_TEST_POSTGRES's server, which
    the tests must not restart)."""
    _need_psycopg()
    bindir = _binaries()
    if bindir is None:
        unavailable("no PostgreSQL server binaries (initdb) to start a cluster with")
    prefix = _as_server_user()
    root = tempfile.mkdtemp(prefix="dtrio-pg-")
    data = os.path.join(root, "data")
    if prefix:
        shutil.chown(root, _USER)
    port = _free_port()
    log = os.path.join(root, "server.log")
    try:
        subprocess.run([*prefix, f"{bindir}/initdb", "-D", data, "-U", "postgres",
                        "--auth=trust", "--locale=C", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True)
        options = (f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        subprocess.run([*prefix, f"{bindir}/pg_ctl", "-D", data, "-o", options, "-l", log,
                        "-w", "start"], check=True, capture_output=True)
    except subprocess.CalledProcessError as exc:
        text = exc.stderr.decode(errors="replace") if exc.stderr else ""
        if os.path.exists(log):
            with open(log) as f:
                text += f.read()
        shutil.rmtree(root, ignore_errors=True)
        unavailable(f"could not start a PostgreSQL cluster: {text.strip()[-500:]}")
    cluster = Cluster(bindir, prefix, data, log, port)
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def fresh_database(server: str) -> Iterator[str]:
    """A new, empty database on `server` for one test, dropped afterwards."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = f"dtrio_test_{os.getpid()}_{next(_ids)}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(server)
    params["dbname"] = name
    # Back to a URL: what the backend is selected by.
    user, host, port = params.get("user", ""), params.get("host", ""), params.get("port", "")
    password = f":{params['password']}" if params.get("password") else ""
    url = f"postgresql://{user}{password}@{host}:{port}/{name}" if host else make_conninfo(
        **params)
    try:
        yield url
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
