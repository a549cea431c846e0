"""Scale-out on PostgreSQL with embedded engines: three processes running `dtrio.open_engine`
on one database (see scale_engine.py), the third also the client.

They poll only every two minutes, so work and waits cross between them by the announcements of
`LISTEN`/`NOTIFY` alone. Partway through, one process is SIGKILLed, or the PostgreSQL server is
restarted (`pg_ctl restart`): every instance still completes exactly once, every activity's side
effect is in the `effects` table, and the entity counter counts each instance once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest
from pg_cluster import fresh_database, own_cluster

from dtrio import history as h
from dtrio.events import StoredEvent

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("scale_engine.py")
COUNT = 300
WAIT = 60.0


class Engine:
    """One scale_engine.py process."""

    def __init__(self, url: str, name: str, log: Path) -> None:
        with log.open("w") as err:
            self.process = subprocess.Popen(
                [sys.executable, str(SCRIPT), url, name], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=err, text=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.log = log

    def line(self) -> str:
        text = self.process.stdout.readline()
        assert text, f"the engine process ended: {self.log.read_text()[-2000:]}"
        return text.strip()

    def ask(self, command: str, until: str) -> list[str]:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        lines = []
        while (text := self.line()) != until:
            lines.append(text)
        return lines

    def wait(self, first: int, last: int) -> list[dict]:
        return [json.loads(text) for text in self.ask(f"wait {first} {last}", "waited")]

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def expected_total(iid: str, n: int) -> int:
    return sum(len(f"{iid}:fan{i}") for i in range(3)) + len(f"{iid}:child") + n % 7


@pytest.fixture(scope="module")
def cluster():
    with own_cluster() as cluster:
        yield cluster


@pytest.mark.parametrize("fault", ["kill", "restart"])
def test_three_engines_share_the_work_and_survive(cluster, tmp_path, fault):
    with fresh_database(cluster.url) as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE effects (key text NOT NULL, sidecar text NOT NULL)")
        engines = {name: Engine(url, name, tmp_path / f"{name}.log") for name in "ABC"}
        try:
            for engine in engines.values():
                assert engine.line() == "ready"
            client = engines["C"]
            client.ask(f"start {COUNT}", "started")
            half = COUNT // 2
            client.ask(f"go 0 {half}", "raised")
            first = client.wait(0, half)
            assert {r["status"] for r in first} == {"COMPLETED"}
            finished_by = Counter(r["output"]["finished_by"] for r in first)
            # Waits in C ended for instances whose last step A ran.
            assert finished_by["A"] > 0 and finished_by["B"] > 0

            client.ask(f"go {half} {COUNT}", "raised")

            def children_done() -> int:
                with psycopg.connect(url) as conn:
                    return conn.execute(
                        "SELECT count(*) FROM effects WHERE key LIKE %s AND key >= %s",
                        ("%:child", f"m{half:03d}")).fetchone()[0]

            deadline = time.monotonic() + WAIT
            while children_done() < (COUNT - half) // 8:
                assert time.monotonic() < deadline, "the second half did not get under way"
                time.sleep(0.02)
            if fault == "kill":
                engines["A"].process.send_signal(signal.SIGKILL)
                engines["A"].process.wait()
            else:
                cluster.restart()

            every = client.wait(0, COUNT)
            assert [r for r in every if r["status"] != "COMPLETED"] == []
            for n, result in enumerate(every):
                assert result["output"]["total"] == expected_total(result["id"], n)

            deadline = time.monotonic() + WAIT
            while _count(client) < COUNT:
                assert time.monotonic() < deadline, "the counter did not reach the count"
                time.sleep(0.1)
            assert _count(client) == COUNT
        finally:
            for engine in engines.values():
                engine.stop()

        with psycopg.connect(url) as conn:
            rows = conn.execute("SELECT key, sidecar FROM effects").fetchall()
            events = conn.execute(
                "SELECT i.instance_id, h.event FROM history h JOIN instances i "
                "ON i.id = h.instance_key").fetchall()
    ids = [f"m{n:03d}" for n in range(COUNT)]
    runs = Counter(key for key, _ in rows)
    assert set(runs) == {f"{iid}:{part}" for iid in ids
                         for part in ("fan0", "fan1", "fan2", "child")}
    if fault == "kill":
        # Run twice only when the killed process had it out.
        by_a = {key for key, name in rows if name == "A"}
        assert {key for key, times in runs.items() if times > 1} <= by_a
        assert any(key >= f"m{COUNT // 2:03d}" for key in by_a)  # A was killed mid-work
    completed = Counter(iid for iid, data in events
                        if h.kind(StoredEvent.read(data).event) == "execution_completed")
    assert completed == Counter({iid: 1 for iid in ids} | {f"{iid}-child": 1 for iid in ids})


def _count(client: Engine) -> int:
    client.process.stdin.write("count\n")
    client.process.stdin.flush()
    return int(client.line())
