"""`python -m dtrio instances …` in a process of its own, against the store an engine in this
process runs on: the output, the exit code, and what the engine then does or the store holds."""

from __future__ import annotations

import json
import re

import pytest
from operators_app import FLAKY, dtrio_cli, environment, running_engine

import dtrio

S = dtrio.OrchestrationStatus


async def _finished(engine, iid: str) -> dtrio.OrchestrationState:
    return await engine.client.wait_for_orchestration_completion(iid, timeout=30)


async def _started(engine, iid: str) -> None:
    """Until the waiter's first step ran (it sets its custom status)."""
    await engine.client.commands.wait(iid, lambda r: r.custom_status is not None, 30,
                                      payloads=False, what="start")


async def _seed(engine) -> None:
    client = engine.client
    await client.schedule_new_orchestration("hello", input="Ada", instance_id="ok-1")
    await client.schedule_new_orchestration("hello", input="Bob", instance_id="ok-2")
    await client.schedule_new_orchestration("boom", input="bad data", instance_id="bad-1")
    for iid in ("ok-1", "ok-2", "bad-1"):
        await _finished(engine, iid)


async def test_list_filters_and_pages(store: str) -> None:
    async with running_engine(store) as engine:
        await _seed(engine)
        done = await dtrio_cli("instances", "list", "--db", store)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[0].split() == ["INSTANCE", "ID", "NAME", "STATUS", "CREATED", "UPDATED"]
        # Newest first, and the columns line up: each status starts under STATUS.
        assert [line.split()[0] for line in lines[1:]] == ["bad-1", "ok-2", "ok-1"]
        column = lines[0].index("STATUS")
        assert [line[column:].split()[0] for line in lines[1:]] == [
            "FAILED", "COMPLETED", "COMPLETED"]
        assert "\x1b" not in done.stdout  # not a terminal: no colour

        failed = await dtrio_cli("instances", "list", "--db", store, "--status", "failed",
                                 "--json")
        assert [i["instance_id"] for i in json.loads(failed.stdout)["instances"]] == ["bad-1"]
        named = await dtrio_cli("instances", "list", "--db", store, "--name", "hello",
                                "--prefix", "ok-", "--since", "1h", "--oldest-first", "--json")
        assert [i["instance_id"] for i in json.loads(named.stdout)["instances"]] == [
            "ok-1", "ok-2"]
        none = await dtrio_cli("instances", "list", "--db", store, "--until", "2h", "--json")
        assert json.loads(none.stdout) == {"instances": [], "next_page": None}

        first = await dtrio_cli("instances", "list", "--db", store, "--limit", "2")
        token = re.search(r"\(more: --page (\S+)\)", first.stdout)[1]
        rest = await dtrio_cli("instances", "list", "--db", store, "--limit", "2", "--page",
                               token, "--json")
        assert [i["instance_id"] for i in json.loads(rest.stdout)["instances"]] == ["ok-1"]
        every = await dtrio_cli("instances", "list", "--db", store, "--limit", "1", "--all",
                                "--json")
        assert len(json.loads(every.stdout)["instances"]) == 3


async def test_show_prints_the_failure_with_its_stack_trace(store: str) -> None:
    async with running_engine(store) as engine:
        await _seed(engine)
        done = await dtrio_cli("instances", "show", "bad-1", "--db", store)
        assert done.returncode == 0, done.stderr
        assert re.search(r"^status: +FAILED$", done.stdout, re.M)
        assert "TaskFailedError" in done.stdout or "ValueError" in done.stdout
        assert "cannot handle bad data" in done.stdout
        assert "Traceback (most recent call last)" in done.stdout
        shown = json.loads((await dtrio_cli("instances", "show", "ok-1", "--db", store,
                                            "--json")).stdout)
        assert shown["status"] == "COMPLETED" and shown["input"] == "Ada"
        assert shown["output"] == "Hello, Ada!" and shown["failure"] is None

        missing = await dtrio_cli("instances", "show", "nobody", "--db", store)
        assert (missing.returncode, missing.stdout) == (3, "")
        assert missing.stderr == "dtrio: no orchestration instance with ID 'nobody'\n"


async def test_raise_event_reaches_the_running_engine(store: str) -> None:
    async with running_engine(store) as engine:
        await engine.client.schedule_new_orchestration("waiter", instance_id="w")
        await _started(engine, "w")
        done = await dtrio_cli("instances", "raise-event", "go", "w", "--data",
                               '{"answer": 42}', "--db", store)
        assert (done.returncode, done.stdout) == (0, "w: event 'go' raised\n"), done.stderr
        state = await _finished(engine, "w")
        assert (state.runtime_status, state.output) == (S.COMPLETED, {"answer": 42})

        bad = await dtrio_cli("instances", "raise-event", "go", "w", "--data", "{nope",
                              "--db", store)
        assert bad.returncode == 2 and "not valid JSON" in bad.stderr
        assert len(bad.stderr.splitlines()) == 1


async def test_terminate_one_and_refuse_a_finished_one(store: str) -> None:
    async with running_engine(store) as engine:
        await engine.client.schedule_new_orchestration("waiter", instance_id="w")
        await _started(engine, "w")
        done = await dtrio_cli("instances", "terminate", "w", "--output", '"stopped"',
                               "--db", store, "--json")
        assert json.loads(done.stdout) == {
            "instance_id": "w", "action": "terminate", "result": "terminated"}
        state = await _finished(engine, "w")
        assert (state.runtime_status, state.output) == (S.TERMINATED, "stopped")
        again = await dtrio_cli("instances", "terminate", "w", "--db", store)
        assert again.returncode == 1
        assert again.stderr == "dtrio: cannot terminate 'w': it is TERMINATED; it has finished\n"


async def test_purge_by_filter_asks_first(store: str) -> None:
    async with running_engine(store) as engine:
        await _seed(engine)
        args = ("instances", "purge", "--status", "COMPLETED", "--db", store)
        declined = await dtrio_cli(*args, stdin=b"n\n")
        assert declined.returncode == 1
        assert declined.stderr == "purge 2 instances? [y/N] dtrio: nothing done\n"
        assert await engine.client.get_orchestration_state("ok-1") is not None

        done = await dtrio_cli(*args, stdin=b"y\n")
        assert done.returncode == 0, done.stderr
        assert done.stdout == "purge: 2 done, 0 skipped, 0 failed, of 2\n"
        for iid in ("ok-1", "ok-2"):
            assert await engine.client.get_orchestration_state(iid) is None
        assert await engine.client.get_orchestration_state("bad-1") is not None


async def test_history_shows_each_event_with_durations(db: str) -> None:
    async with running_engine(db) as engine:
        await _seed(engine)
        done = await dtrio_cli("instances", "history", "ok-1", "--db", db)
        assert done.returncode == 0, done.stderr
        kinds = [line.split()[3] for line in done.stdout.splitlines()[1:]]
        assert {"ExecutionStarted", "TaskScheduled", "TaskCompleted",
                "ExecutionCompleted"} <= set(kinds)
        rows = json.loads((await dtrio_cli("instances", "history", "ok-1", "--db", db,
                                           "--json")).stdout)
        scheduled = next(r for r in rows if r["kind"] == "TaskScheduled")
        completed = next(r for r in rows if r["kind"] == "TaskCompleted")
        assert (scheduled["name"], scheduled["data"]) == ("greet", "Ada")
        assert completed["data"] == "Hello, Ada!" and completed["duration"] >= 0
        assert [r["index"] for r in rows] == list(range(len(rows)))
        missing = await dtrio_cli("instances", "history", "nobody", "--db", db)
        assert missing.returncode == 3


async def test_tree_draws_the_sub_orchestrations(db: str) -> None:
    async with running_engine(db) as engine:
        await engine.client.schedule_new_orchestration(
            "family", input=["a", "b"], instance_id="fam")
        await _finished(engine, "fam")
        done = await dtrio_cli("instances", "tree", "fam", "--db", db)
        assert done.stdout == (
            "fam  family  COMPLETED\n"
            "├─ fam-a  hello  COMPLETED\n"
            "└─ fam-b  hello  COMPLETED\n"), done.stderr
        tree = json.loads((await dtrio_cli("instances", "tree", "fam", "--db", db,
                                           "--json")).stdout)
        assert [c["instance_id"] for c in tree["children"]] == ["fam-a", "fam-b"]


async def test_suspend_and_resume(db: str) -> None:
    async with running_engine(db) as engine:
        client = engine.client
        await client.schedule_new_orchestration("waiter", instance_id="w")
        await _started(engine, "w")
        assert (await dtrio_cli("instances", "suspend", "w", "--reason", "look",
                                "--db", db)).stdout == "w: suspended\n"
        await client.commands.wait("w", lambda r: r.status == int(S.SUSPENDED), 30,
                                   payloads=False, what="suspend")
        resumed = await dtrio_cli("instances", "resume", "w", "--db", db)
        assert resumed.stdout == "w: resumed\n", resumed.stderr
        await client.commands.wait("w", lambda r: r.status == int(S.RUNNING), 30,
                                   payloads=False, what="resume")
        again = await dtrio_cli("instances", "resume", "w", "--db", db)
        assert again.returncode == 1 and "it is not suspended" in again.stderr


async def test_restart_and_rewind(db: str) -> None:
    async with running_engine(db) as engine:
        client = engine.client
        await _seed(engine)
        copy = await dtrio_cli("instances", "restart", "ok-1", "--new-id", "--db", db)
        new_id = re.fullmatch(r"ok-1: restarted as (\w+)\n", copy.stdout)[1]
        assert (await _finished(engine, new_id)).output == "Hello, Ada!"

        await client.schedule_new_orchestration("mending", input="job", instance_id="m")
        assert (await _finished(engine, "m")).runtime_status == S.FAILED
        FLAKY["fail"] = False
        try:
            done = await dtrio_cli("instances", "rewind", "m", "--reason", "fixed", "--db", db)
            assert done.stdout == "m: rewound\n", done.stderr
            await client.commands.wait("m", lambda r: r.status == int(S.COMPLETED), 30,
                                       payloads=False, what="complete")
        finally:
            FLAKY["fail"] = True
        assert (await client.get_orchestration_state("m")).output == "job done"


async def test_actions_on_several_ids_and_filters_with_yes(db: str) -> None:
    async with running_engine(db) as engine:
        client = engine.client
        for iid in ("w1", "w2", "w3"):
            await client.schedule_new_orchestration("waiter", instance_id=iid)
            await _started(engine, iid)
        two = await dtrio_cli("instances", "terminate", "w1", "w2", "--db", db, "--json")
        result = json.loads(two.stdout)
        assert result["done"] == {"w1": "terminated", "w2": "terminated"}, two.stderr
        for iid in ("w1", "w2"):
            assert (await _finished(engine, iid)).runtime_status == S.TERMINATED
        rest = await dtrio_cli("instances", "terminate", "--name", "waiter", "--yes",
                               "--db", db)
        assert rest.stdout == "terminate: 1 done, 2 skipped, 0 failed, of 3\n", rest.stderr
        assert (await _finished(engine, "w3")).runtime_status == S.TERMINATED


@pytest.mark.parametrize("args, message", [
    (["instances", "purge"], "give instance IDs, or filters"),
    (["instances", "purge", "x", "--status", "FAILED"], "not both"),
    (["instances", "list", "--since", "yesterday"], "not a time: 'yesterday'"),
    (["instances", "list", "--limit", "0"], "must be a whole number from 1"),
    (["instances", "frobnicate"], "invalid choice: 'frobnicate'"),
])
async def test_usage_errors_exit_2_in_one_line(db: str, args, message) -> None:
    async with running_engine(db):
        done = await dtrio_cli(*args, "--db", db)
    assert done.returncode == 2 and done.stdout == ""
    assert message in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr


async def test_a_missing_store_is_not_created(tmp_path) -> None:
    db = tmp_path / "absent.sqlite3"
    done = await dtrio_cli("instances", "list", "--db", str(db))
    assert done.returncode == 3 and "no store at" in done.stderr
    assert not db.exists()
    env_db = await dtrio_cli("instances", "list", env={**environment(), "DTRIO_DB": str(db)})
    assert env_db.returncode == 3 and str(db) in env_db.stderr
