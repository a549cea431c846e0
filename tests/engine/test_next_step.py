"""An orchestration cached in this process runs the step an activity's result wakes in that
activity's task and commit. What is recorded is the same as when the step runs on its own (no
cache: every step is leased from the store), only the result skips the inbox."""

from __future__ import annotations

import trio

import dtrio
from dtrio import _pb as pb
from dtrio import history as h
from dtrio.backend.base import Backend, OrchestrationWorkItem
from dtrio.replay import OrchestrationRun
from dtrio.services.local import NextSteps
from dtrio.testing import open_test_engine

S = dtrio.OrchestrationStatus
registry = dtrio.Registry()


@registry.activity
async def add_one(ctx, n):
    return n + 1


@registry.orchestrator
async def sequence(ctx, n):
    for _ in range(3):
        n = await ctx.call_activity(add_one, input=n)
    return n


@registry.orchestrator
async def pair(ctx, n):
    return sum(await dtrio.when_all([ctx.call_activity(add_one, input=n + i) for i in range(2)]))


@registry.orchestrator
async def fails_after(ctx, n):
    n = await ctx.call_activity(add_one, input=n)
    raise ValueError(f"failed at {n}")


@registry.orchestrator
async def waits_after(ctx, n):
    n = await ctx.call_activity(add_one, input=n)
    return n + await ctx.wait_for_external_event("go")


async def history_kinds(backend: Backend, iid: str) -> list[str]:
    return [dtrio.history.kind(e.event) for e in await backend.load_history(iid)]


async def run_all(cache_size: int) -> dict[str, tuple[object, list[str], int]]:
    """Run each orchestration above in turn: its status and output (or failure message), its
    history's event kinds, and how many events went into its inbox."""
    inserts = 0

    def trace(sql: str) -> None:
        nonlocal inserts
        inserts += sql.startswith("INSERT INTO inbox")

    runs = {}
    async with open_test_engine(registry, cache_size=cache_size) as engine:
        engine.backend._store.conn.set_trace_callback(trace)
        client = engine.client
        for name in ("sequence", "pair", "fails_after", "waits_after"):
            before = inserts
            iid = await client.schedule_new_orchestration(name, input=1, instance_id=name)
            if name == "waits_after":
                # Raised once the activity's result is recorded, so that it never waits in the
                # inbox beside the result.
                while "task_completed" not in await history_kinds(engine.backend, iid):
                    await trio.sleep(0.1)
                await client.raise_orchestration_event(iid, "go", 10)
            state = await client.wait_for_orchestration_completion(iid, timeout=60)
            failure = state.failure_details
            runs[name] = ((state.runtime_status, failure.message if failure else state.output),
                          await history_kinds(engine.backend, iid), inserts - before)
        engine.backend._store.conn.set_trace_callback(None)
    return runs


async def test_steps_run_with_their_activity_record_what_steps_run_apart_record(autojump_clock):
    apart = await run_all(cache_size=0)
    together = await run_all(cache_size=100)
    expected = {
        "sequence": (S.COMPLETED, 4),
        "pair": (S.COMPLETED, 5),
        "fails_after": (S.FAILED, "failed at 2"),
        "waits_after": (S.COMPLETED, 12),
    }
    for name, outcome in expected.items():
        assert apart[name][0] == together[name][0] == outcome, name
        if name != "pair":
            assert apart[name][1] == together[name][1], name
    # The pair's two results may be recorded in one step or in two.
    markers = {"orchestrator_started", "orchestrator_completed"}
    assert ([k for k in apart["pair"][1] if k not in markers]
            == [k for k in together["pair"][1] if k not in markers])
    # Apart, every start, activity result and raised event goes through the inbox; together,
    # the results do not (but the second of the pair's when it arrives in the same commit as
    # the first, whose step then holds the instance).
    assert {name: run[2] for name, run in apart.items()} == {
        "sequence": 4, "pair": 3, "fails_after": 2, "waits_after": 3}
    assert {name: run[2] for name, run in together.items() if name != "pair"} == {
        "sequence": 1, "fails_after": 1, "waits_after": 2}
    assert together["pair"][2] in (1, 2)


class _Broken(OrchestrationRun):
    """A run whose replay fails in the engine itself (not in the orchestrator's code)."""

    def feed(self, past, new):
        raise RuntimeError("replay broke")


async def test_a_step_that_cannot_be_planned_is_declined_and_its_run_dropped(autojump_clock):
    async with open_test_engine(registry) as engine:
        runner = engine.local["orchestration"]
        steps = NextSteps(engine.kinds["orchestration"], runner, engine.owner)
        run = _Broken(registry.orchestrators, "i1")
        run.started = pb.ExecutionStartedEvent(name="sequence")
        runner.cache.put("i1", 3, run)
        offered = steps.offer("i1")
        assert offered is not None and offered.step == 3
        result = h.made(engine.clock.now_dt(), "task_completed",
                        pb.TaskCompletedEvent(task_scheduled_id=0, result="2"))
        item = OrchestrationWorkItem("i1", "e1", "sequence", int(S.RUNNING), "token", 3,
                                     [(0, result)])
        assert offered.plan(item) is None
        assert runner.cache.peek("i1") is None
