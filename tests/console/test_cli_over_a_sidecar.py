"""The operators' commands with `--sidecar HOST:PORT`: through `python -m dtrio serve` in a
process of its own, speaking the Durable Task gRPC client protocol, while an engine in this
process runs the orchestrations on the sidecar's store."""

from __future__ import annotations

import json
import re
import sys

import trio
from operators_app import dtrio_cli, environment, running_engine

import dtrio

S = dtrio.OrchestrationStatus


async def test_instances_and_entities_through_a_sidecar(tmp_path) -> None:
    db = tmp_path / "s.db"
    async with running_engine(db) as engine, trio.open_nursery() as nursery:
        client = engine.client
        await client.schedule_new_orchestration("hello", input="Ada", instance_id="ok-1")
        await client.schedule_new_orchestration("boom", input="bad data", instance_id="bad-1")
        await client.schedule_new_orchestration("family", input=["a"], instance_id="fam")
        for iid in ("ok-1", "bad-1", "fam"):
            await client.wait_for_orchestration_completion(iid, timeout=30)
        await client.schedule_new_orchestration("waiter", instance_id="w")

        sidecar = await nursery.start(lambda task_status: trio.run_process(
            [sys.executable, "-m", "dtrio", "serve", "--port", "0", "--db", str(db)],
            stdout=-1, stderr=-1, env=environment(), check=False, task_status=task_status))
        line = b""
        with trio.fail_after(30):
            while not line.endswith(b"\n"):
                line += await sidecar.stdout.receive_some(1)
        where = "127.0.0.1:" + re.search(r"listening on 127\.0\.0\.1:(\d+)", line.decode())[1]

        async def cli(*args: str, stdin: bytes = b""):
            return await dtrio_cli(*args, "--sidecar", where, stdin=stdin)

        listed = json.loads((await cli("instances", "list", "--json")).stdout)
        assert [i["instance_id"] for i in listed["instances"]] == [  # oldest first
            "ok-1", "bad-1", "fam", "fam-a", "w"]
        failed = json.loads((await cli("instances", "list", "--status", "FAILED",
                                       "--json")).stdout)
        assert [i["instance_id"] for i in failed["instances"]] == ["bad-1"]
        named = json.loads((await cli("instances", "list", "--name", "hello", "--json")).stdout)
        assert [i["instance_id"] for i in named["instances"]] == ["ok-1", "fam-a"]

        shown = await cli("instances", "show", "bad-1")
        assert "Traceback (most recent call last)" in shown.stdout, shown.stderr
        assert "cannot handle bad data" in shown.stdout
        rows = json.loads((await cli("instances", "history", "ok-1", "--json")).stdout)
        assert [r["kind"] for r in rows if r["kind"].startswith("Task")] == [
            "TaskScheduled", "TaskCompleted"]
        assert (await cli("instances", "tree", "fam")).stdout == (
            "fam  family  COMPLETED\n└─ fam-a  hello  COMPLETED\n")
        missing = await cli("instances", "history", "nobody")
        assert (missing.returncode, missing.stderr) == (
            3, "dtrio: no orchestration instance with ID 'nobody'\n")

        await client.commands.wait("w", lambda r: r.custom_status is not None, 30,
                                   payloads=False, what="start")
        raised = await cli("instances", "raise-event", "go", "w", "--data", "5")
        assert raised.stdout == "w: event 'go' raised\n", raised.stderr
        assert (await client.wait_for_orchestration_completion("w", timeout=30)).output == 5

        purged = await cli("instances", "purge", "--status", "COMPLETED", "--yes")
        # fam-a went with its parent fam (recursive), and purging it again deletes nothing.
        assert purged.stdout == "purge: 4 done, 0 skipped, 0 failed, of 4\n", purged.stderr
        for iid in ("ok-1", "w", "fam", "fam-a"):
            assert await client.get_orchestration_state(iid) is None

        signaled = await cli("entities", "signal", "@counter@x", "add", "--input", "4")
        assert signaled.returncode == 0, signaled.stderr
        with trio.fail_after(30):
            while (meta := await client.get_entity("@counter@x")) is None or meta.state != 4:
                await trio.sleep(0.02)
        shown = json.loads((await cli("entities", "show", "@counter@x", "--json")).stdout)
        assert (shown["id"], shown["state"]) == ("@counter@x", 4)
        listed = json.loads((await cli("entities", "list", "--json")).stdout)
        assert [e["id"] for e in listed["entities"]] == ["@counter@x"]

        unreachable = await dtrio_cli("instances", "list", "--sidecar", "127.0.0.1:1")
        assert unreachable.returncode == 1
        assert unreachable.stderr.startswith("dtrio: cannot reach the sidecar at 127.0.0.1:1")
        sidecar.terminate()
        await sidecar.wait()
