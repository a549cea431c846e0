"""Activity chaining: an orchestrator calls three activities one after another.

Each step is recorded in SQLite, so if the process dies midway a restart resumes after the
last finished step instead of starting over.

Run:  python examples/activity_sequence.py [--db PATH]
"""

import argparse

import trio

import dtrio

registry = dtrio.Registry()


@registry.activity
async def say_hello(ctx: dtrio.ActivityContext, city: str) -> str:
    return f"Hello, {city}!"


@registry.orchestrator
async def sequence(ctx: dtrio.OrchestrationContext, _input: None) -> list[str]:
    return [await ctx.call_activity(say_hello, input=c) for c in ("Tokyo", "London", "Seattle")]


async def main(db: str) -> None:
    async with dtrio.open_engine(registry, db=db) as engine:
        iid = await engine.client.schedule_new_orchestration(sequence)
        state = await engine.client.wait_for_orchestration_completion(iid, timeout=30)
        print(f"{state.runtime_status.name}: {state.output}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="activity_sequence.sqlite3", help="SQLite file to use")
    trio.run(main, parser.parse_args().db)
