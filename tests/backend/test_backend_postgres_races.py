"""Races between transactions of different processes on one PostgreSQL database, which SQLite's
one-writer-at-a-time never meets. The other process is played by a raw connection holding its
transaction open at the point where the race happens."""

from __future__ import annotations

import psycopg
import trio
from backend_contract import Kit

from dtrio import _pb as pb
from dtrio.backend import open_backend
from dtrio.clock import Clock


def waiting_for_a_lock(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database()").fetchone()[0]


async def test_replacing_an_instance_while_a_step_of_it_commits_leaves_no_history_behind(
    postgres_db,
):
    backend = open_backend(postgres_db, Clock())
    kit = Kit(backend, Clock())
    try:
        await kit.start("x")
        with psycopg.connect(postgres_db) as step:
            # Another process's step on "x": it has checked its lease (the row is locked) and
            # is about to write the step's history.
            step.execute("SELECT 1 FROM instances WHERE instance_id = 'x' FOR UPDATE")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(replace_x, backend, kit)
                with trio.fail_after(30):
                    while not await trio.to_thread.run_sync(waiting_for_a_lock, postgres_db):
                        await trio.sleep(0.01)
                step.execute("INSERT INTO history (instance_key, seq, event) "
                             "SELECT id, 0, %s FROM instances WHERE instance_id = 'x'", (b"\x00",))
                step.execute("UPDATE instances SET history_len = 1 WHERE instance_id = 'x'")
                step.commit()
        with psycopg.connect(postgres_db) as conn:
            left = conn.execute("SELECT count(*) FROM history").fetchone()
        # The new instance starts with no history; the old step's rows went with the old one.
        assert left[0] == 0
        record = await backend.get_instance("x")
        assert record is not None and record.name == "replacement"
    finally:
        await backend.aclose()


async def replace_x(backend, kit: Kit) -> None:
    new = kit.new_instance("x", name="replacement")
    assert await backend.create_instance(
        new, replace=frozenset({int(pb.OrchestrationStatus.PENDING)}))


async def test_a_start_that_may_replace_only_pending_instances_sees_one_finished_meanwhile(
    postgres_db,
):
    backend = open_backend(postgres_db, Clock())
    kit = Kit(backend, Clock())
    try:
        await kit.start("x")
        refused: list[BaseException] = []

        async def start_again() -> None:
            try:
                await backend.create_instance(
                    kit.new_instance("x", name="replacement"),
                    replace=frozenset({int(pb.OrchestrationStatus.PENDING)}))
            except Exception as exc:
                refused.append(exc)

        with psycopg.connect(postgres_db) as other:
            # Another process finishes "x" and has not committed yet.
            other.execute("SELECT 1 FROM instances WHERE instance_id = 'x' FOR UPDATE")
            other.execute("UPDATE instances SET status = %s WHERE instance_id = 'x'",
                          (int(pb.OrchestrationStatus.COMPLETED),))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(start_again)
                with trio.fail_after(30):
                    while not await trio.to_thread.run_sync(waiting_for_a_lock, postgres_db):
                        await trio.sleep(0.01)
                other.commit()
        # The policy replaces pending instances only: the finished one stays.
        assert [type(e).__name__ for e in refused] == ["InstanceAlreadyExists"]
        record = await backend.get_instance("x")
        assert record is not None and record.name != "replacement"
        assert record.status == pb.OrchestrationStatus.COMPLETED
    finally:
        await backend.aclose()
