"""What users' editors and type checkers see of `ctx` and `dtrio`: documented calls whose tasks
carry the type of what they give."""

import inspect
import typing
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import dtrio
from dtrio.replay.context import OrchestrationContext, R
from dtrio.replay.tasks import T, Task

CALLS = (
    "call_activity", "call_sub_orchestrator", "call_entity", "signal_entity", "lock_entities",
    "wait_for_external_event", "create_timer", "send_event", "set_custom_status",
    "continue_as_new", "new_uuid",
)


def test_every_context_call_is_documented_and_annotated():
    for name in CALLS:
        method = getattr(OrchestrationContext, name)
        assert method.__doc__ and len(method.__doc__.split()) >= 12, name
        hints = typing.get_type_hints(method)
        parameters = [p for p in inspect.signature(method).parameters if p != "self"]
        assert set(parameters) | {"return"} <= set(hints), name


def test_tasks_carry_the_type_of_what_they_give():
    hints = {
        name: typing.get_type_hints(getattr(OrchestrationContext, name))["return"]
        for name in ("create_timer", "wait_for_external_event", "call_entity")
    }
    assert hints == {"create_timer": Task[None], "wait_for_external_event": Task[Any],
                     "call_entity": Task[Any]}
    activity = [typing.get_type_hints(f) for f in
                typing.get_overloads(OrchestrationContext.call_activity)]
    assert [h["return"] for h in activity] == [Task[R], Task[R], Task[Any]]
    assert activity[0]["activity"] == Callable[..., Awaitable[R]]
    child = [typing.get_type_hints(f)["return"] for f in
             typing.get_overloads(OrchestrationContext.call_sub_orchestrator)]
    assert child == [Task[R], Task[Any]]
    assert typing.get_type_hints(dtrio.when_all)["return"] == Task[list[T]]
    assert typing.get_type_hints(dtrio.when_any)["return"] == Task[Task[T]]


def test_durations_are_in_the_signatures():
    timer = typing.get_type_hints(OrchestrationContext.create_timer)["fire_at"]
    assert set(typing.get_args(timer)) == {datetime, timedelta, int, float}


def test_the_client_says_what_it_is_and_how_to_get_one():
    assert "engine.client" in dtrio.Client.__doc__
    assert "open_engine" in dtrio.Client.__doc__


def test_type_checkers_see_every_public_name_of_dtrio():
    # Public names are imported lazily, which type checkers cannot follow: dtrio/__init__.py
    # imports each one again under TYPE_CHECKING, as `from module import name as name`.
    import ast
    from pathlib import Path

    tree = ast.parse(Path(dtrio.__file__).read_text())
    (block,) = [node for node in tree.body if isinstance(node, ast.If)
                and getattr(node.test, "id", None) == "TYPE_CHECKING"]
    seen = {
        alias.name: f"dtrio.{node.module}"
        for node in block.body for alias in node.names if alias.asname == alias.name
    }
    assert seen == dtrio._EXPORTS
