"""`python -m dtrio serve` as a process: where it listens, clean shutdown, one-line errors."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

from durabletask.client import TaskHubGrpcClient

ROOT = Path(__file__).resolve().parents[2]


def serve(*args: str, **popen) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "dtrio", "serve", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **popen,
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


def test_a_port_in_use_is_a_one_line_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # At the default INFO level the store's and engine's start lines come first.
        process = serve("--port", str(port), "--db", ":memory:", "--log-level", "warning")
        _, err = process.communicate(timeout=30)
    assert process.returncode != 0
    assert err.strip().splitlines() == [
        f"dtrio: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]


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
