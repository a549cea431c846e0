"""The orchestration `python -m dtrio demo` runs: a durable three-city greeting sequence."""

from __future__ import annotations

from . import ActivityContext, OrchestrationContext, Registry, open_engine

registry = Registry()


@registry.activity
async def say_hello(ctx: ActivityContext, city: str) -> str:
    return f"Hello, {city}!"


@registry.orchestrator
async def greet_cities(ctx: OrchestrationContext, cities: list[str]) -> list[str]:
    return [await ctx.call_activity(say_hello, input=city) for city in cities]


async def run_demo(db: str) -> None:
    async with open_engine(registry, db=db) as engine:
        print(f"dtrio engine running on {db}")
        iid = await engine.client.schedule_new_orchestration(
            greet_cities, input=["Tokyo", "London", "Seattle"]
        )
        state = await engine.client.wait_for_orchestration_completion(iid, timeout=30)
        print(f"orchestration {iid}: {state.runtime_status.name} {state.output}")
