"""Fan-out/fan-in: an orchestrator starts ten activities at once and sums their results.

The activities run concurrently; `when_all` resumes the orchestrator once every one has
finished, with the results in the order the tasks were given.

Run:  python examples/fan_out_fan_in.py [--db PATH]
"""

import argparse

import trio

import dtrio

registry = dtrio.Registry()


@registry.activity
async def count_words(ctx: dtrio.ActivityContext, line: str) -> int:
    await trio.sleep(0.1)  # stands in for real I/O; ten of these overlap rather than add up
    return len(line.split())


@registry.orchestrator
async def word_count(ctx: dtrio.OrchestrationContext, lines: list[str]) -> dict[str, int]:
    counts = await dtrio.when_all([ctx.call_activity(count_words, input=line) for line in lines])
    return {"lines": len(counts), "words": sum(counts)}


LINES = [" ".join(["word"] * n) for n in range(1, 11)]  # 1 + 2 + ... + 10 = 55 words


async def main(db: str) -> None:
    async with dtrio.open_engine(registry, db=db) as engine:
        iid = await engine.client.schedule_new_orchestration(word_count, input=LINES)
        state = await engine.client.wait_for_orchestration_completion(iid, timeout=30)
        result = state.output
        print(f"{state.runtime_status.name}: {result['words']} words in {result['lines']} lines")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="fan_out_fan_in.sqlite3", help="SQLite file to use")
    trio.run(main, parser.parse_args().db)
