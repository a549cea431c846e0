"""Payloads are JSON: a set would come back as a list, so it is refused where it is passed,
naming the payload; tuples come back as lists."""

import pytest

import dtrio
from dtrio.testing import open_test_engine

S = dtrio.OrchestrationStatus
registry = dtrio.Registry()
SET_REFUSED = "a {} has no JSON form (it would come back as a list)"


@registry.activity
async def echo(ctx, value):
    return value


@registry.activity
async def returns_a_set(ctx, _):
    return {"b", "a"}


@registry.orchestrator
async def passes_sets(ctx, _):
    refused = []
    for call in (
        lambda: ctx.call_activity(echo, input={"tags": {"a"}}),
        lambda: ctx.call_sub_orchestrator(returns_its_input, input=frozenset({1})),
        lambda: ctx.send_event("elsewhere", "go", {1, 2}),
        lambda: ctx.set_custom_status({"seen": {3}}),
        lambda: ctx.call_entity("@bag@x", "add", {4}),
        lambda: ctx.signal_entity("@bag@x", "add", {5}),
    ):
        try:
            call()
        except dtrio.SerializationError as exc:
            refused.append(str(exc))
    echoed = await ctx.call_activity(echo, input=(1, [2, (3,)]))
    return {"refused": refused, "echoed": echoed}


@registry.orchestrator
async def returns_its_input(ctx, value):
    return value


@registry.orchestrator
async def awaits_a_set_from_an_activity(ctx, _):
    try:
        await ctx.call_activity(returns_a_set)
    except dtrio.TaskFailedError as exc:
        return {"type": exc.details.error_type, "message": exc.details.message}


@registry.orchestrator
async def calls_the_bag(ctx, value):
    try:
        await ctx.call_entity("@bag@x", "put_as_set", value)
    except dtrio.TaskFailedError as exc:
        return {"failure": exc.details.message, "after": await ctx.call_entity("@bag@x", "get")}


@registry.entity
async def bag(ctx, value):
    if ctx.operation == "put":
        ctx.set_state(value)
    elif ctx.operation == "put_as_set":
        ctx.set_state({"items": set(value)})  # refused: the state stays what it was
    return ctx.get_state()


async def run(engine, orchestrator, input=None):
    iid = await engine.client.schedule_new_orchestration(orchestrator, input=input)
    return await engine.client.wait_for_orchestration_completion(iid, timeout=60)


async def test_orchestrators_cannot_pass_sets_and_tuples_come_back_as_lists(autojump_clock):
    async with open_test_engine(registry) as engine:
        state = await run(engine, passes_sets)
    assert state.runtime_status == S.COMPLETED
    assert state.output["refused"] == [
        f"input of activity 'echo' cannot be serialized to JSON: {SET_REFUSED.format('set')}; "
        "pass a list, e.g. sorted(...)",
        "input of sub-orchestration 'returns_its_input' cannot be serialized to JSON: "
        f"{SET_REFUSED.format('frozenset')}; pass a list, e.g. sorted(...)",
        f"data of event 'go' cannot be serialized to JSON: {SET_REFUSED.format('set')}; "
        "pass a list, e.g. sorted(...)",
        f"custom status cannot be serialized to JSON: {SET_REFUSED.format('set')}; "
        "pass a list, e.g. sorted(...)",
        "input of operation 'add' of entity @bag@x cannot be serialized to JSON: "
        f"{SET_REFUSED.format('set')}; pass a list, e.g. sorted(...)",
        "input of operation 'add' of entity @bag@x cannot be serialized to JSON: "
        f"{SET_REFUSED.format('set')}; pass a list, e.g. sorted(...)",
    ]
    assert state.output["echoed"] == [1, [2, [3]]]


async def test_a_set_output_fails_the_activity_or_the_orchestration(autojump_clock):
    async with open_test_engine(registry) as engine:
        from_activity = await run(engine, awaits_a_set_from_an_activity)
        iid = await engine.client.schedule_new_orchestration(echo_back_as_set, input=["a"])
        as_set = await engine.client.wait_for_orchestration_completion(iid, timeout=60)
    assert from_activity.output == {
        "type": "SerializationError",
        "message": "output of activity 'returns_a_set' cannot be serialized to JSON: "
        f"{SET_REFUSED.format('set')}; pass a list, e.g. sorted(...)",
    }
    assert as_set.runtime_status == S.FAILED
    assert as_set.failure_details.error_type == "SerializationError"
    assert as_set.failure_details.message.startswith(
        "output of orchestrator 'echo_back_as_set' cannot be serialized to JSON: a set has no"
    )


@registry.orchestrator
async def echo_back_as_set(ctx, value):
    return set(value)


async def test_a_set_in_entity_state_fails_the_operation_and_keeps_the_state(autojump_clock):
    async with open_test_engine(registry) as engine:
        await engine.client.signal_entity("@bag@x", "put", ["kept"])
        output = (await run(engine, calls_the_bag, ["lost"])).output
        kept = await engine.client.get_entity("@bag@x")
    assert output["failure"].startswith(
        "state of entity @bag@x cannot be serialized to JSON: a set has no JSON form"
    )
    assert output["after"] == kept.state == ["kept"]


async def test_clients_cannot_pass_sets_and_nothing_is_created(autojump_clock):
    async with open_test_engine(registry) as engine:
        client = engine.client
        with pytest.raises(dtrio.SerializationError,
                           match=r"input of orchestrator 'returns_its_input' .* a set has no JSON"):
            await client.schedule_new_orchestration(returns_its_input, input={1}, instance_id="s")
        assert await client.get_orchestration_state("s") is None
        iid = await client.schedule_new_orchestration(returns_its_input, input=(1, 2))
        assert (await client.wait_for_orchestration_completion(iid)).output == [1, 2]
        with pytest.raises(dtrio.SerializationError, match="data of event 'go' .* a frozenset"):
            await client.raise_orchestration_event(iid, "go", frozenset())
        with pytest.raises(dtrio.SerializationError, match="output of terminate .* a set"):
            await client.terminate_orchestration(iid, output={"x"})
        with pytest.raises(dtrio.SerializationError,
                           match="input of operation 'add' of entity @bag@y .* a set"):
            await client.signal_entity("@bag@y", "add", {1})
        assert await client.get_entity("@bag@y") is None
