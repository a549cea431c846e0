"""The orchestrations the operators' tools are tried on (CLI and dashboard tests): an engine on
a real store, running these in the test process, while the tools act on the same store."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

import dtrio

ROOT = Path(__file__).resolve().parents[1]
registry = dtrio.Registry()
# What `flaky` does: fail until a test lets it succeed (to rewind an instance).
FLAKY = {"fail": True}


@registry.activity
async def greet(ctx, name):
    return f"Hello, {name}!"


@registry.activity
async def explode(ctx, what):
    raise ValueError(f"cannot handle {what}")


@registry.activity
async def flaky(ctx, what):
    if FLAKY["fail"]:
        raise RuntimeError(f"flaky failure on {what}")
    return f"{what} done"


@registry.orchestrator
async def hello(ctx, name):
    return await ctx.call_activity(greet, input=name)


@registry.orchestrator
async def three_greetings(ctx, names):
    return [await ctx.call_activity(greet, input=n) for n in names]


@registry.orchestrator
async def boom(ctx, what):
    return await ctx.call_activity(explode, input=what)


@registry.orchestrator
async def mending(ctx, what):
    return await ctx.call_activity(flaky, input=what)


@registry.orchestrator
async def waiter(ctx, _):
    ctx.set_custom_status("waiting for go")
    return await ctx.wait_for_external_event("go")


@registry.orchestrator
async def family(ctx, names):
    kids = [ctx.call_sub_orchestrator(hello, input=n, instance_id=f"{ctx.instance_id}-{n}")
            for n in names]
    return [await k for k in kids]


@registry.activity
async def pack(ctx, box):
    await trio.sleep(0.05 * (box + 1))  # bars of different lengths on the timeline
    return f"box {box} packed"


@registry.orchestrator
async def ship_order(ctx, order):
    """A bit of everything a timeline draws: activities in sequence and fanned out, a timer,
    a sub-orchestration, an external event; then a failure with a stack trace."""
    await ctx.call_activity(greet, input=order["customer"])
    await ctx.create_timer(0.2)
    await dtrio.when_all([ctx.call_activity(pack, input=i) for i in range(3)])
    await ctx.call_sub_orchestrator(hello, input="billing", instance_id=f"{ctx.instance_id}-bill")
    await ctx.wait_for_external_event("approved")
    return await ctx.call_activity(explode, input=order["id"])


@registry.entity
async def counter(ctx: dtrio.EntityContext, amount):
    ctx.set_state(ctx.get_state(0) + (amount or 0))
    return ctx.get_state()


@asynccontextmanager
async def running_engine(db: str | Path, **options: object) -> AsyncIterator[dtrio.Engine]:
    """An engine on `db` that notices other processes' writes within 50 ms."""
    async with dtrio.open_engine(registry, db=str(db), max_poll_interval=0.05,
                                 **options) as engine:
        yield engine


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DTRIO_", "NO_COLOR"))}
    return {**env, "PYTHONPATH": str(ROOT)}


async def dtrio_cli(*args: str, stdin: bytes = b"",
                    env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m dtrio ARGS` in a process of its own, while this process's engine runs."""
    done = await trio.run_process(
        [sys.executable, "-m", "dtrio", *args], stdin=stdin, capture_stdout=True,
        capture_stderr=True, check=False, env=env or environment())
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(),
                                       done.stderr.decode())
