"""`python -m dtrio serve --db postgresql://...` when the database cannot be used at start: one
line naming the database (its password masked), and exit code 1."""

from __future__ import annotations

import socket

import pytest
from test_cli import dtrio_cli


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _refusal(url: str) -> str:
    done = dtrio_cli("serve", "--port", "0", "--db", url)
    assert done.returncode == 1, done
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "secret" not in done.stderr
    return lines[0]


def test_an_unreachable_database_is_one_line_and_exit_code_1():
    port = _closed_port()
    line = _refusal(f"postgresql://app:secret@127.0.0.1:{port}/jobs")
    assert line.startswith(f"dtrio: cannot use postgresql://app:***@127.0.0.1:{port}/jobs: ")
    assert "Connection refused" in line


@pytest.mark.parametrize("what", ["user", "database"])
def test_bad_credentials_or_an_unknown_database_are_one_line_and_exit_code_1(
    postgres_url, what
):
    host = postgres_url.split("@", 1)[1].split("/", 1)[0]
    url = (f"postgresql://nobody:secret@{host}/postgres" if what == "user"
           else f"postgresql://postgres:secret@{host}/no_such_db")
    line = _refusal(url)
    assert f":***@{host}/" in line
    assert ("role \"nobody\" does not exist" if what == "user"
            else "database \"no_such_db\" does not exist") in line
