"""`python -m dtrio serve` as a process: where it listens, clean shutdown, one-line errors."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from durabletask.client import TaskHubGrpcClient

ROOT = Path(__file__).resolve().parents[2]


def serve(
    *args: str, env: dict[str, str] | None = None, before: tuple[str, ...] = (), **popen
) -> subprocess.Popen[str]:
    """`python -m dtrio [before] serve [args]`, with `env` added to an environment cleared of
    DTRIO_* variables."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DTRIO_")}
    return subprocess.Popen(
        [sys.executable, "-m", "dtrio", *before, "serve", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**environ, "PYTHONPATH": str(ROOT), **(env or {})}, **popen,
    )


def test_serve_prints_where_it_listens_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    db = tmp_path / "sidecar.sqlite3"
    process = serve("--port", "0", "--db", str(db))
    try:
        line = process.stdout.readline()  # type: ignore[union-attr]
        found = re.search(r"listening on 127\.0\.0\.1:(\d+) \(store: (.+)\)", line)
        assert found, line
        assert found.group(2) == str(db)
        client = TaskHubGrpcClient(host_address=f"127.0.0.1:{found.group(1)}")
        assert client.get_orchestration_state("nobody") is None
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        process.kill()
        process.wait()
    assert db.exists()


def test_a_port_in_use_is_found_before_the_store_is_created(tmp_path: Path) -> None:
    db = tmp_path / "new.sqlite3"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = serve("--port", str(port), "--db", str(db))  # at the default INFO level
        _, err = process.communicate(timeout=30)
    assert process.returncode == 1
    assert err.strip().splitlines() == [
        f"dtrio: cannot listen on 127.0.0.1:{port}: Address already in use; another process is "
        "using the port: choose another with --port (0: any free port)"
    ]
    assert not db.exists() and list(tmp_path.iterdir()) == []


def test_an_unknown_host_is_named_before_the_store_is_created(tmp_path: Path) -> None:
    db = tmp_path / "new.sqlite3"
    process = serve("--host", "nosuch.invalid", "--port", "0", "--db", str(db))
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1
    (line,) = err.strip().splitlines()
    assert line.startswith("dtrio: cannot listen on nosuch.invalid:0: unknown host "
                           "'nosuch.invalid' (") and line.endswith("); check --host"), line
    assert not db.exists()


@pytest.mark.parametrize("port", ["99999", "65536", "-1", "http"])
def test_a_port_out_of_range_is_a_usage_error(port: str) -> None:
    process = serve("--port", port, "--db", ":memory:")
    _, err = process.communicate(timeout=30)
    assert process.returncode == 2
    assert err.strip().splitlines()[-1] == (
        "python -m dtrio serve: error: argument --port: must be a port number from 0 to 65535 "
        f"(0: any free port), not '{port}'"
    )


def test_serve_reads_its_flags_from_dtrio_variables(tmp_path: Path) -> None:
    db = tmp_path / "from-env.sqlite3"
    process = serve(env={"DTRIO_PORT": "0", "DTRIO_DB": str(db), "DTRIO_SYNCHRONOUS": "full",
                         "DTRIO_LOG_LEVEL": "INFO", "DTRIO_HOST": "127.0.0.1"})
    try:
        line = process.stdout.readline()  # type: ignore[union-attr]
        found = re.search(r"listening on 127\.0\.0\.1:(\d+) \(store: (.+)\)", line)
        assert found and found.group(2) == str(db), line
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        err = process.stderr.read()  # type: ignore[union-attr]
    finally:
        process.kill()
        process.wait()
    assert f"started on {db} (synchronous=FULL)" in err


def test_a_flag_wins_over_its_variable_and_a_bad_variable_it_overrides_is_not_read(
    tmp_path: Path,
) -> None:
    flag_db, env_db = tmp_path / "flag.sqlite3", tmp_path / "env.sqlite3"
    # DTRIO_PORT as a container platform may set it for a service called dtrio.
    process = serve("--port", "0", "--db", str(flag_db), "--synchronous", "normal",
                    env={"DTRIO_PORT": "tcp://10.0.0.1:4001", "DTRIO_DB": str(env_db),
                         "DTRIO_SYNCHRONOUS": "FULL", "DTRIO_LOG_LEVEL": "debug"},
                    before=("--log-level", "info"))
    try:
        line = process.stdout.readline()  # type: ignore[union-attr]
        assert f"(store: {flag_db})" in line, line + process.stderr.read()  # type: ignore
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        err = process.stderr.read()  # type: ignore[union-attr]
    finally:
        process.kill()
        process.wait()
    assert "(synchronous=NORMAL)" in err and " DEBUG " not in err
    assert not env_db.exists()


@pytest.mark.parametrize("variable, value, message", [
    ("DTRIO_PORT", "99999", "DTRIO_PORT='99999' (for --port): must be a port number from 0 to "
     "65535 (0: any free port), not '99999'"),
    ("DTRIO_SYNCHRONOUS", "off", "DTRIO_SYNCHRONOUS='off' (for --synchronous): must be one of "
     "NORMAL, FULL"),
    ("DTRIO_MAX_CONCURRENT_ACTIVITIES", "many", "DTRIO_MAX_CONCURRENT_ACTIVITIES='many' (for "
     "--max-concurrent-activities): not a valid int"),
    ("DTRIO_LOG_LEVEL", "loud", "DTRIO_LOG_LEVEL='loud' (for --log-level): must be one of "
     "debug, info, warning, error, critical"),
])
def test_a_bad_variable_is_a_usage_error_naming_it(
    tmp_path: Path, variable: str, value: str, message: str
) -> None:
    db = tmp_path / "new.sqlite3"
    process = serve("--db", str(db), env={variable: value})
    _, err = process.communicate(timeout=30)
    assert process.returncode == 2
    assert err.strip().splitlines() == [
        f"python -m dtrio serve: error: environment variable {message}"
    ]
    assert not db.exists()


def test_an_unusable_store_is_a_one_line_error(tmp_path: Path) -> None:
    process = serve("--port", "0", "--db", str(tmp_path / "missing" / "x.sqlite3"),
                    "--log-level", "warning")
    _, err = process.communicate(timeout=30)
    assert process.returncode != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dtrio: cannot open"), err


def test_entity_options_are_taken_and_entity_rpcs_answer() -> None:
    from durabletask.entities import EntityInstanceId

    process = serve("--port", "0", "--db", ":memory:", "--entity-request-version", "1",
                    "--max-concurrent-entities", "5")
    try:
        line = process.stdout.readline()  # type: ignore[union-attr]
        found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert found, line + process.stderr.read()  # type: ignore[union-attr]
        client = TaskHubGrpcClient(host_address=f"127.0.0.1:{found.group(1)}")
        assert client.get_entity(EntityInstanceId("counter", "x")) is None
        client.signal_entity(EntityInstanceId("counter", "x"), "add", 1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        process.kill()
        process.wait()


def test_an_unknown_entity_request_version_is_refused() -> None:
    process = serve("--port", "0", "--db", ":memory:", "--entity-request-version", "3")
    assert process.wait(timeout=15) == 2
    assert "invalid choice: 3" in process.stderr.read()  # type: ignore[union-attr]


def test_a_log_level_given_with_equals_is_taken() -> None:
    process = serve("--port", "0", "--db", ":memory:", "--log-level=warning")
    try:
        assert "listening on" in process.stdout.readline()  # type: ignore[union-attr]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        err = process.stderr.read()  # type: ignore[union-attr]
    finally:
        process.kill()
        process.wait()
    assert " INFO " not in err, err
