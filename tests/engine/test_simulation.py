"""Deterministic simulation: random orchestrator programs, run under trio's MockClock on a SQLite
file, with the engine stopped at random commits and a new one opened on the same store. Whatever
the restarts, the outcome must be the one the program computes without any (`expected`).

A program is a list of steps (JSON, so that it is the orchestration's input):
- ["activity", v]: an activity returning 2v;  ["timer", s]: a timer of s seconds, giving "t";
- ["event", n]: an event the instance sends itself, then waits for, giving n;
- ["timeout", s]: a wait for an event that never comes, timing out after s seconds;
- ["all", [leaf, ...]]: when_all over activities and timers, giving their results in order;
- ["any", [leaf, ...]]: when_any over one activity and hour-long timers (the activity wins) or
  timers of distinct lengths (the shortest wins); gives the winner's result or index;
- ["sub", [leaf, ...]]: a sub-orchestration running those steps, giving its results;
- ["can"]: continue as new with the results so far, going on at the next step.
"""

from __future__ import annotations

import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import dtrio
from dtrio import OrchestrationStatus as S

registry = dtrio.Registry()
IID = "sim"
HOUR = 3600


@registry.activity
async def double(ctx: dtrio.ActivityContext, v: int) -> int:
    return 2 * v


def _task(ctx: dtrio.OrchestrationContext, leaf: list[Any]) -> dtrio.Task[Any]:
    kind, arg = leaf
    if kind == "activity":
        return ctx.call_activity(double, input=arg)
    return ctx.create_timer(timedelta(seconds=arg))


async def _step(ctx: dtrio.OrchestrationContext, step: list[Any]) -> Any:
    kind, arg = step
    match kind:
        case "activity":
            return await ctx.call_activity(double, input=arg)
        case "timer":
            await ctx.create_timer(timedelta(seconds=arg))
            return "t"
        case "event":
            ctx.send_event(ctx.instance_id, f"e{arg}", arg)
            return await ctx.wait_for_external_event(f"e{arg}")
        case "timeout":
            try:
                await ctx.wait_for_external_event("never", timeout=timedelta(seconds=arg))
            except TimeoutError:
                return "timeout"
            raise AssertionError("an event nobody sends came")
        case "all":
            results = await dtrio.when_all([_task(ctx, leaf) for leaf in arg])
            return ["t" if leaf[0] == "timer" else r for leaf, r in zip(arg, results, strict=True)]
        case "any":
            tasks = [_task(ctx, leaf) for leaf in arg]
            winner = await dtrio.when_any(tasks)
            index = tasks.index(winner)
            return winner.result() if arg[index][0] == "activity" else index
        case "sub":
            return await ctx.call_sub_orchestrator(program, input={"steps": arg, "pos": 0,
                                                                   "acc": []})
    raise AssertionError(f"unknown step {step}")


@registry.orchestrator
async def program(ctx: dtrio.OrchestrationContext, state: dict[str, Any]) -> list[Any] | None:
    steps, acc = state["steps"], state["acc"]
    for pos in range(state["pos"], len(steps)):
        if steps[pos] == ["can"]:
            ctx.continue_as_new({"steps": steps, "pos": pos + 1, "acc": acc})
            return None
        acc.append(await _step(ctx, steps[pos]))
    return acc


def expected(steps: list[Any]) -> list[Any]:
    """What a program gives, computed without running it."""
    def leaf(step: list[Any]) -> Any:
        kind, arg = step
        return {"activity": lambda: 2 * arg, "timer": lambda: "t", "event": lambda: arg,
                "timeout": lambda: "timeout"}[kind]()

    out: list[Any] = []
    for step in steps:
        match step:
            case ["can"]:
                pass
            case ["all", leaves]:
                out.append([leaf(x) for x in leaves])
            case ["any", leaves]:
                kinds = [x[0] for x in leaves]
                if "activity" in kinds:
                    out.append(2 * leaves[kinds.index("activity")][1])
                else:
                    lengths = [x[1] for x in leaves]
                    out.append(lengths.index(min(lengths)))
            case ["sub", leaves]:
                out.append(expected(leaves))
            case _:
                out.append(leaf(step))
    return out


# -- programs ---------------------------------------------------------------------------------

activity = st.tuples(st.just("activity"), st.integers(0, 50)).map(list)
timer = st.tuples(st.just("timer"), st.integers(1, 600)).map(list)
leaf = st.one_of(
    activity, timer,
    st.tuples(st.just("event"), st.integers(0, 3)).map(list),
    st.tuples(st.just("timeout"), st.integers(1, 60)).map(list),
)
race = st.one_of(
    st.tuples(activity, st.lists(st.integers(HOUR, 2 * HOUR), max_size=2)).map(
        lambda t: [t[0], *(["timer", s] for s in t[1])]),
    st.lists(st.integers(1, 600), min_size=1, max_size=3, unique=True).map(
        lambda lengths: [["timer", s] for s in lengths]),
).flatmap(lambda leaves: st.permutations(leaves))
step = st.one_of(
    leaf,
    st.lists(st.one_of(activity, timer), min_size=1, max_size=4).map(lambda xs: ["all", xs]),
    race.map(lambda xs: ["any", list(xs)]),
    st.lists(leaf, max_size=3).map(lambda xs: ["sub", xs]),
    st.just(["can"]),
)
programs = st.lists(step, min_size=1, max_size=8)
# How many commits each engine makes before it is stopped, one engine after another.
restarts = st.lists(st.integers(1, 6), max_size=6)


async def _session(db: Path, steps: list[Any], stop_after: int | None) -> Any:
    """Run an engine on `db` until the program ends (its state) or `stop_after` commits have been
    made (None): the engine is then cancelled, as a process stopped mid-work would be."""
    with trio.CancelScope() as scope:
        async with dtrio.open_engine(registry, db=db, max_poll_interval=None,
                                     shutdown_grace=0) as engine:
            commits = 0

            def count(_notes: object) -> None:
                nonlocal commits
                commits += 1
                if commits == stop_after:
                    scope.cancel()

            engine.backend.listen(count)
            await engine.client.schedule_new_orchestration(
                program, input={"steps": steps, "pos": 0, "acc": []}, instance_id=IID,
                reuse_policy=dtrio.ReusePolicy(ignore=frozenset(S)))
            return await engine.client.wait_for_orchestration_completion(
                IID, timeout=timedelta(days=7))
    return None


async def _run(db: Path, steps: list[Any], stops: list[int]) -> tuple[str, Any]:
    for restarts, stop_after in enumerate([*stops, None]):
        state = await _session(db, steps, stop_after)
        if state is not None:
            event(f"engines stopped mid-program: {restarts}")
            return state.runtime_status.name, state.output
    raise AssertionError("the last engine was stopped")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs, restarts)
def test_a_program_gives_the_same_outcome_however_often_its_engine_restarts(
    steps: list[Any], stops: list[int]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        outcome = trio.run(_run, Path(tmp) / "sim.sqlite3", steps, stops,
                           clock=trio.testing.MockClock(autojump_threshold=0))
    assert outcome == ("COMPLETED", expected(steps))
