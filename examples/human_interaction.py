"""Human interaction: an orchestrator asks for approval, then waits for a person or a deadline.

The orchestrator sends the request through an activity and waits for an external event named
"Approval", racing it against a durable timer. The program plays the approver: it reads a name
and a decision from the terminal, or approves automatically when stdin is not a terminal, so it
also runs unattended.

Run:  python examples/human_interaction.py [--db PATH] [--timeout SECONDS]
"""

import argparse
import sys
from datetime import timedelta

import trio

import dtrio

registry = dtrio.Registry()


@registry.activity
async def request_approval(ctx: dtrio.ActivityContext, order: str) -> None:
    # A real system would send an email or a chat message with a link that raises the event.
    print(f"Approval requested for {order} (instance {ctx.orchestration_id})", flush=True)


@registry.orchestrator
async def approve_order(ctx: dtrio.OrchestrationContext, request: dict) -> str:
    await ctx.call_activity(request_approval, input=request["order"])
    ctx.set_custom_status("waiting for approval")
    approval = ctx.wait_for_external_event("Approval")
    # A durable timer, not trio.sleep: the deadline survives restarts of the process.
    deadline = ctx.create_timer(timedelta(seconds=request["timeout"]))
    winner = await dtrio.when_any([approval, deadline])
    if winner is deadline:
        return f"{request['order']} was not approved within {request['timeout']:g} seconds"
    decision = approval.result()
    verdict = "approved" if decision["approved"] else "rejected"
    return f"{request['order']} was {verdict} by {decision['by']}"


def ask_human() -> dict:
    name = input("Your name: ").strip() or "anonymous"
    answer = input("Approve the order? [y/N] ").strip().lower()
    return {"by": name, "approved": answer in ("y", "yes")}


async def main(db: str, timeout: float) -> None:
    async with dtrio.open_engine(registry, db=db) as engine:
        client = engine.client
        iid = await client.schedule_new_orchestration(
            approve_order, input={"order": "order #1234", "timeout": timeout}
        )
        # Ask only once the request is out, as a person receiving it would.
        while (await client.get_orchestration_state(iid)).custom_status != "waiting for approval":
            await trio.sleep(0.05)
        if sys.stdin.isatty():
            decision = await trio.to_thread.run_sync(ask_human, abandon_on_cancel=True)
        else:
            decision = {"by": "the unattended approver", "approved": True}
        # Event names match case-insensitively: "approval" reaches the wait for "Approval".
        await client.raise_orchestration_event(iid, "approval", decision)
        state = await client.wait_for_orchestration_completion(iid, timeout=timeout + 30)
        print(f"{state.runtime_status.name}: {state.output}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="human_interaction.sqlite3", help="SQLite file to use")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for approval")
    args = parser.parse_args()
    trio.run(main, args.db, args.timeout)
