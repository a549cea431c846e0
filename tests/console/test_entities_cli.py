"""`python -m dtrio entities …` against the store an engine in this process runs on, and the
output for people on a terminal."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

import trio
from operators_app import dtrio_cli, environment, running_engine


async def _state(engine, entity: str, value) -> None:
    with trio.fail_after(30):
        while True:
            meta = await engine.client.get_entity(entity)
            if meta is not None and meta.state == value:
                return
            await trio.sleep(0.02)


async def test_signal_list_show_and_clean(store: str) -> None:
    async with running_engine(store) as engine:
        done = await dtrio_cli("entities", "signal", "@counter@a", "add", "--input", "5",
                               "--db", store)
        assert (done.returncode, done.stdout) == (0, "@counter@a: 'add' signaled\n"), done.stderr
        await _state(engine, "@counter@a", 5)
        await engine.client.signal_entity("@counter@b", "add", 2)
        await _state(engine, "@counter@b", 2)

        listed = await dtrio_cli("entities", "list", "--name", "counter", "--state", "--db",
                                 store)
        lines = listed.stdout.splitlines()
        assert lines[0].split() == ["ENTITY", "ID", "MODIFIED", "LOCKED", "BY", "BACKLOG",
                                    "STATE"]
        assert [(line.split()[0], line.split()[-1]) for line in lines[1:]] == [
            ("@counter@a", "5"), ("@counter@b", "2")]
        page = json.loads((await dtrio_cli("entities", "list", "--limit", "1", "--json",
                                           "--db", store)).stdout)
        assert [e["id"] for e in page["entities"]] == ["@counter@a"] and page["next_page"]

        shown = json.loads((await dtrio_cli("entities", "show", "@counter@a", "--json",
                                            "--db", store)).stdout)
        assert shown == {**shown, "id": "@counter@a", "state": 5, "backlog": 0,
                         "locked_by": None}
        missing = await dtrio_cli("entities", "show", "@counter@zzz", "--db", store)
        assert missing.returncode == 3
        assert missing.stderr == "dtrio: no entity with ID '@counter@zzz'\n"
        bad = await dtrio_cli("entities", "show", "counter", "--db", store)
        assert bad.returncode == 1 and "entity IDs look like '@name@key'" in bad.stderr

        cleaned = await dtrio_cli("entities", "clean", "--db", store, "--json")
        assert json.loads(cleaned.stdout) == {
            "empty_entities_removed": 0, "orphaned_locks_released": 0}, cleaned.stderr


def test_a_terminal_gets_colour_unless_no_color_and_a_progress_bar(tmp_path) -> None:
    db = tmp_path / "s.sqlite3"

    async def seed() -> None:
        async with running_engine(db) as engine:
            for iid in ("b", "c"):
                await engine.client.schedule_new_orchestration("boom", instance_id=iid, input=1)
                await engine.client.wait_for_orchestration_completion(iid, timeout=30)

    trio.run(seed)
    listing = ["instances", "list", "--db", str(db)]
    coloured = _on_a_terminal(listing, environment())
    assert "\x1b[31mFAILED\x1b[0m" in coloured
    plain = _on_a_terminal(listing, {**environment(), "NO_COLOR": "1"})
    assert "FAILED" in plain and "\x1b[" not in plain
    purged = _on_a_terminal(["instances", "purge", "--status", "FAILED", "--yes", "--db",
                             str(db)], environment())
    assert "\rpurge [" + "#" * 15 + "." * 15 + "] 1/2" in purged
    assert "\rpurge [" + "#" * 30 + "] 2/2\r\n" in purged
    assert "purge: 2 done, 0 skipped, 0 failed, of 2" in purged


def _on_a_terminal(args: list[str], env: dict[str, str]) -> str:
    """What `python -m dtrio ARGS` writes to a terminal (stdout and stderr)."""
    leader, follower = pty.openpty()
    child = subprocess.Popen([sys.executable, "-m", "dtrio", *args],
                             stdout=follower, stderr=follower, env=env)
    os.close(follower)
    data = b""
    try:
        while chunk := os.read(leader, 4096):
            data += chunk
    except OSError:  # the terminal's other end is closed: all was read
        pass
    finally:
        os.close(leader)
    assert child.wait(timeout=60) == 0, data
    return data.decode()
