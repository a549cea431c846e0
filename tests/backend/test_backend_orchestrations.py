"""Orchestration work items: leases, completion, and what a committed step changes."""

from __future__ import annotations

import pytest
import trio
from backend_contract import LEASE, SECOND, S, kinds, parse

from dtrio import _pb as pb
from dtrio import history as h
from dtrio.errors import FailureDetails, LeaseLost
from dtrio.events import StoredEvent
from dtrio.state import Message, OrchestrationStep, apply_step, new_execution_id
from dtrio.times import from_us

# -- leasing ----------------------------------------------------------------------------------


async def test_lease_returns_execution_started(kit):
    new = await kit.start("i1", name="wf", input='"x"')
    items = await kit.backend.lease_orchestrations("w1", 10, LEASE)
    assert len(items) == 1
    item = items[0]
    assert (item.instance_id, item.execution_id, item.name) == ("i1", new.execution_id, "wf")
    assert item.status == int(S.PENDING)
    assert item.lock_token
    assert [e for _, e in item.events] == [new.started]
    started = parse(item.events[0][1]).execution_started
    assert started.name == "wf" and started.input == '"x"'


async def test_second_lease_while_leased_returns_nothing(kit):
    await kit.start("i1")
    await kit.lease_one("i1", owner="w1")
    assert await kit.backend.lease_orchestrations("w2", 10, LEASE) == []
    # New events do not make a leased instance leasable either.
    await kit.backend.add_event("i1", kit.event_raised())
    assert await kit.backend.lease_orchestrations("w2", 10, LEASE) == []


async def test_lease_respects_limit(kit):
    for n in range(5):
        await kit.start(f"i{n}")
    first = await kit.backend.lease_orchestrations("w1", 2, LEASE)
    second = await kit.backend.lease_orchestrations("w2", 10, LEASE)
    assert len(first) == 2 and len(second) == 3
    assert {i.instance_id for i in first + second} == {f"i{n}" for n in range(5)}


async def test_expired_lease_can_be_taken_and_stale_completion_changes_nothing(kit, autojump_clock):
    await kit.start("i1")
    old = await kit.lease_one("i1", owner="w1", lease_us=10 * SECOND)
    await trio.sleep(5)
    assert await kit.backend.lease_orchestrations("w2", 10, LEASE) == []  # not yet expired
    await trio.sleep(6)
    new = await kit.lease_one("i1", owner="w2")
    assert new.lock_token != old.lock_token
    assert new.events == old.events  # nothing was consumed
    before = await kit.backend.get_instance("i1")

    step = kit.step(old, h.task_scheduled(kit.clock.now_dt(), 1, "act"), status=S.RUNNING,
                    custom_status='"stale"', activities=[kit.activity(old, 1)],
                    messages=[Message("i1", kit.event_raised("self"), kit.now())])
    with pytest.raises(LeaseLost):
        await kit.backend.complete_orchestration(old, step)

    assert await kit.backend.load_history("i1") == []
    assert await kit.backend.get_instance("i1") == before
    assert await kit.backend.lease_activities("a", 10, LEASE) == []
    # The new owner's lease still holds and its step commits; the inbox is what it leased.
    await kit.backend.complete_orchestration(new, kit.step(new))
    assert kinds(await kit.backend.load_history("i1")) == [
        "execution_started", "orchestrator_started", "orchestrator_completed"]
    assert await kit.lease() == {}


async def test_stale_token_after_commit_raises_lease_lost(kit):
    _, item = await kit.started_and_leased("i1")
    await kit.backend.complete_orchestration(item, kit.step(item))
    history = await kit.backend.load_history("i1")
    with pytest.raises(LeaseLost):
        await kit.backend.complete_orchestration(item, kit.step(item))
    assert await kit.backend.load_history("i1") == history


# -- what a step commits ----------------------------------------------------------------------


async def test_complete_appends_history_in_order_and_updates_instance(kit, autojump_clock):
    new, item = await kit.started_and_leased("i1")
    step = kit.step(item, h.timer_created(kit.clock.now_dt(), 1, kit.clock.now_dt()),
                    custom_status='"busy"')
    await trio.sleep(1)
    await kit.backend.complete_orchestration(item, step)
    assert await kit.backend.load_history("i1") == step.history
    record = await kit.backend.get_instance("i1")
    assert record.status == int(S.RUNNING)
    assert record.custom_status == '"busy"'
    assert record.updated_at == kit.now() > record.created_at
    assert record.completed_at is None

    await kit.backend.add_event("i1", kit.event_raised("e"))
    item2 = await kit.lease_one("i1")
    assert item2.step > item.step
    assert item2.status == int(S.RUNNING)
    assert kinds(item2.events) == ["event_raised"]  # the executionStarted row was consumed
    step2 = kit.step(item2)
    await kit.backend.complete_orchestration(item2, step2)
    assert await kit.backend.load_history("i1") == step.history + step2.history


async def test_events_that_arrive_during_a_lease_survive_completion(kit):
    _, item = await kit.started_and_leased("i1")
    await kit.backend.add_event("i1", kit.event_raised("late"))
    await kit.backend.complete_orchestration(item, kit.step(item))
    item2 = await kit.lease_one("i1")
    assert kinds(item2.events) == ["event_raised"]
    assert parse(item2.events[0][1]).event_raised.name == "late"


async def test_complete_without_new_work_leaves_nothing_leasable(kit):
    _, item = await kit.started_and_leased("i1")
    await kit.backend.complete_orchestration(item, kit.step(item))
    assert await kit.lease() == {}
    assert await kit.backend.next_due() is None


async def test_complete_schedules_activities(kit):
    _, item = await kit.started_and_leased("i1")
    now = kit.clock.now_dt()
    step = kit.step(item, h.task_scheduled(now, 1, "a1"), h.task_scheduled(now, 2, "a2"),
                    activities=[kit.activity(item, 1, "a1", '"x"'),
                                kit.activity(item, 2, "a2", None)])
    await kit.backend.complete_orchestration(item, step)
    acts = await kit.backend.lease_activities("aw", 10, LEASE)
    assert [(a.instance_id, a.execution_id, a.task_id, a.name, a.version, a.input, a.attempt)
            for a in acts] == [
        ("i1", item.execution_id, 1, "a1", "1.0", '"x"', 1),
        ("i1", item.execution_id, 2, "a2", "1.0", None, 1),
    ]


async def test_timer_message_is_not_leasable_until_due(kit, autojump_clock):
    _, item = await kit.started_and_leased("i1")
    fire_us = kit.now() + 3600 * SECOND
    fire_dt = from_us(fire_us)
    fired = StoredEvent.of(h.timer_fired(fire_dt, 1, fire_dt))
    step = kit.step(item, h.timer_created(kit.clock.now_dt(), 1, fire_dt),
                    messages=[Message("i1", fired, fire_us, item.execution_id)])
    await kit.backend.complete_orchestration(item, step)
    assert await kit.lease() == {}
    assert await kit.backend.next_due() == fire_us
    await trio.sleep(1800)
    assert await kit.lease() == {}
    await trio.sleep(1801)
    item2 = await kit.lease_one("i1")
    assert [e for _, e in item2.events] == [fired]
    assert await kit.backend.next_due() is not None  # only the lease's expiry is left
    await kit.backend.complete_orchestration(item2, kit.step(item2))
    assert await kit.backend.next_due() is None


async def test_next_due_is_the_earliest_future_item(kit, autojump_clock):
    assert await kit.backend.next_due() is None
    now = kit.now()
    await kit.start("late", visible_at=now + 50 * SECOND)
    await kit.start("soon", visible_at=now + 20 * SECOND)
    assert await kit.backend.next_due() == now + 20 * SECOND
    await kit.start("now")
    assert await kit.backend.next_due() == now + 20 * SECOND  # due work is not "next"


async def test_messages_to_other_instances(kit):
    target = await kit.start("target")
    tgt_item = await kit.lease_one("target")
    await kit.backend.complete_orchestration(tgt_item, kit.step(tgt_item))
    _, item = await kit.started_and_leased("sender")

    to_target = kit.event_raised("hello", '"hi"')
    stale = kit.event_raised("stale")
    step = kit.step(item, messages=[
        Message("target", to_target, kit.now()),
        Message("target", stale, kit.now(), execution_id="not-the-current-execution"),
        Message("target", kit.event_raised("exact"), kit.now(), execution_id=target.execution_id),
        Message("nobody", kit.event_raised("lost"), kit.now()),  # dropped, not an error
    ])
    await kit.backend.complete_orchestration(item, step)
    items = await kit.lease()
    assert list(items) == ["target"]
    names = [parse(e).event_raised.name for _, e in items["target"].events]
    assert names == ["hello", "exact"]
    assert items["target"].events[0][1] == to_target
    assert await kit.backend.get_instance("nobody") is None


async def test_new_instances_are_created_with_their_parent(kit):
    _, item = await kit.started_and_leased("parent")
    child = kit.new_instance("child", name="sub", input='"c"', parent_instance_id="parent",
                             conflict=Message("parent", StoredEvent.read(b"unused"), kit.now(),
                                              item.execution_id))
    step = kit.step(item, h.sub_orchestration_created(kit.clock.now_dt(), 1, "sub", "child"),
                    new_instances=[child])
    await kit.backend.complete_orchestration(item, step)
    record = await kit.backend.get_instance("child")
    assert record.parent_instance_id == "parent"
    assert (record.name, record.input, record.status) == ("sub", '"c"', int(S.PENDING))
    items = await kit.lease()
    assert list(items) == ["child"]  # no conflict message went to the parent
    assert [e for _, e in items["child"].events] == [child.started]


async def test_new_instance_conflict_is_delivered_to_the_parent(kit):
    _, item = await kit.started_and_leased("parent")
    existing = await kit.start("taken", name="other", input='"orig"')
    before = await kit.backend.get_instance("taken")
    conflict = StoredEvent.of(h.sub_orchestration_failed(
        kit.clock.now_dt(), 1, FailureDetails("InstanceAlreadyExists", "taken exists")))
    child = kit.new_instance("taken", name="sub", input='"new"', parent_instance_id="parent",
                             conflict=Message("parent", conflict, kit.now(), item.execution_id))
    await kit.backend.complete_orchestration(item, kit.step(item, new_instances=[child]))

    record = await kit.backend.get_instance("taken")
    assert record == before
    assert record.execution_id == existing.execution_id and record.input == '"orig"'
    items = await kit.lease()
    assert set(items) == {"parent", "taken"}
    assert [e for _, e in items["parent"].events] == [conflict]
    assert kinds(items["taken"].events) == ["execution_started"]  # untouched inbox
    assert [e for _, e in items["taken"].events] == [existing.started]


async def test_completed_instance_drops_later_events(kit):
    _, item = await kit.started_and_leased("i1")
    await kit.backend.add_event("i1", kit.event_raised("during-lease"))
    now = kit.clock.now_dt()
    done = h.event(now, 2, execution_completed=pb.ExecutionCompletedEvent(
        orchestration_status=S.COMPLETED, result='"out"'))
    to_self = Message("i1", kit.event_raised("self"), kit.now(), item.execution_id)
    step = kit.step(item, done, status=S.COMPLETED, output='"out"', messages=[to_self])
    await kit.backend.complete_orchestration(item, step)
    record = await kit.backend.get_instance("i1")
    assert record.status == int(S.COMPLETED)
    assert record.output == '"out"'
    assert record.completed_at is not None and record.completed_at == record.updated_at
    assert await kit.backend.load_history("i1") == step.history

    await kit.backend.add_event("i1", kit.event_raised("after"))  # silently dropped
    assert await kit.lease() == {}  # inbox is empty: nothing from during or after the step
    assert await kit.backend.next_due() is None
    assert await kit.backend.get_instance("i1") == record


async def test_failed_instance_keeps_failure_details(kit):
    _, item = await kit.started_and_leased("i1")
    failure = bytes(h.failure_to_pb(FailureDetails("Boom", "it broke")))
    await kit.backend.complete_orchestration(item, kit.step(item, status=S.FAILED, failure=failure))
    record = await kit.backend.get_instance("i1")
    assert record.status == int(S.FAILED)
    assert record.failure == failure
    await kit.backend.add_event("i1", kit.event_raised())
    assert await kit.lease() == {}


async def test_continue_as_new_replaces_history_and_keeps_only_new_execution(kit, autojump_clock):
    _, item = await kit.started_and_leased("i1", input='"gen1"')
    # Generation 1 sets a timer for its own execution and schedules an activity.
    fire = kit.now() + 100 * SECOND
    timer = Message("i1", kit.event_raised("gen1-timer"), fire, item.execution_id)
    step1 = kit.step(item, custom_status='"g1"', messages=[timer])
    await kit.backend.complete_orchestration(item, step1)
    gen1_history = await kit.backend.load_history("i1")
    assert gen1_history == step1.history

    await kit.backend.add_event("i1", kit.event_raised("wake"))
    item = await kit.lease_one("i1")
    await kit.backend.add_event("i1", kit.event_raised("external-during-lease"))
    new_exec = new_execution_id()
    new_start = StoredEvent.of(
        h.execution_started(kit.clock.now_dt(), "wf", "i1", new_exec, '"gen2"'))
    carried = kit.event_raised("carried")
    step2 = OrchestrationStep(
        [], new_exec, int(S.RUNNING), None, reset_history=True, new_input='"gen2"',
        messages=[
            Message("i1", new_start, kit.now(), new_exec),
            Message("i1", carried, kit.now(), new_exec),
            Message("i1", kit.event_raised("old-exec"), kit.now(), item.execution_id),
        ],
    )
    await kit.backend.complete_orchestration(item, step2)

    assert await kit.backend.load_history("i1") == []
    record = await kit.backend.get_instance("i1")
    assert record.execution_id == new_exec
    assert record.input == '"gen2"'
    assert record.status == int(S.RUNNING)

    await trio.sleep(101)  # well past the old execution's timer
    item = await kit.lease_one("i1")
    assert item.execution_id == new_exec
    names = []
    for _, data in item.events:
        event = parse(data)
        names.append(h.kind(event) if h.kind(event) != "event_raised" else event.event_raised.name)
    # The external event (no execution ID) survives; the old execution's timer does not.
    assert sorted(names) == sorted(["external-during-lease", "execution_started", "carried"])
    assert [e for _, e in item.events if kinds([e]) == ["execution_started"]] == [new_start]

    step3 = kit.step(item)
    await kit.backend.complete_orchestration(item, step3)
    assert await kit.backend.load_history("i1") == step3.history  # seq numbering restarted


async def test_continue_as_new_opens_with_its_start_then_carried_then_newer_events(kit):
    """Events raised while a continue-as-new step is out come after the new execution's
    executionStarted and the events it carries over, as the SDKs' reference backend orders
    them (a worker that sees them first waits for ever)."""
    _, item = await kit.started_and_leased("i1")
    started = parse(item.events[0][1]).execution_started
    await kit.backend.complete_orchestration(item, kit.step(item))
    for n in (1, 2):
        await kit.backend.add_event("i1", kit.event_raised("tick", str(n)))
    item = await kit.lease_one("i1")
    for n in (3, 4):
        await kit.backend.add_event("i1", kit.event_raised("tick", str(n)))
    now = kit.clock.now_dt()
    new_events = [StoredEvent.of(h.orchestrator_started(now))] + [e for _, e in item.events]
    step = apply_step("i1", item.execution_id, started, new_events, [pb.OrchestratorAction(
        id=0, complete_orchestration=pb.CompleteOrchestrationAction(
            orchestration_status=S.CONTINUED_AS_NEW, result='"gen2"',
            carryover_events=[parse(item.events[1][1])],
        ),
    )], now)
    await kit.backend.complete_orchestration(item, step)

    item = await kit.lease_one("i1")
    events = [parse(e) for _, e in item.events]
    assert [h.kind(e) for e in events] == ["execution_started"] + ["event_raised"] * 3
    assert events[0].execution_started.input == '"gen2"'
    assert [e.event_raised.input for e in events[1:]] == ["2", "3", "4"]


async def test_activity_result_for_stale_execution_is_dropped(kit):
    _, item = await kit.started_and_leased("i1")
    await kit.backend.complete_orchestration(item, kit.step(
        item, h.task_scheduled(kit.clock.now_dt(), 1, "act"), activities=[kit.activity(item, 1)]))
    [act] = await kit.backend.lease_activities("aw", 10, LEASE)

    # The orchestration continues as new while the activity runs.
    await kit.backend.add_event("i1", kit.event_raised("restart"))
    item = await kit.lease_one("i1")
    new_exec = new_execution_id()
    new_start = StoredEvent.of(h.execution_started(kit.clock.now_dt(), "wf", "i1", new_exec))
    await kit.backend.complete_orchestration(item, OrchestrationStep(
        [], new_exec, int(S.RUNNING), None, reset_history=True,
        messages=[Message("i1", new_start, kit.now(), new_exec)]))

    await kit.backend.complete_activity(act, kit.task_completed(1))  # accepted, then dropped
    item = await kit.lease_one("i1")
    assert [e for _, e in item.events] == [new_start]
    assert await kit.backend.lease_activities("aw", 10, LEASE) == []


# -- release and abandon ----------------------------------------------------------------------


async def test_release_makes_the_instance_leasable_again_unchanged(kit):
    new, item = await kit.started_and_leased("i1")
    await kit.backend.release_orchestration(item)
    again = await kit.lease_one("i1", owner="w2")
    assert again.lock_token != item.lock_token
    assert again.events == item.events
    assert await kit.backend.load_history("i1") == []
    with pytest.raises(LeaseLost):
        await kit.backend.complete_orchestration(item, kit.step(item))


async def test_release_with_empty_inbox_leaves_nothing_leasable(kit):
    _, item = await kit.started_and_leased("i1")
    await kit.backend.complete_orchestration(item, kit.step(item))
    await kit.backend.add_event("i1", kit.event_raised())
    item = await kit.lease_one("i1")
    await kit.backend.release_orchestration(item)
    again = await kit.lease_one("i1")
    assert again.events == item.events
    await kit.backend.complete_orchestration(again, kit.step(again))
    assert await kit.lease() == {}


async def test_release_with_stale_token_does_not_touch_the_new_lease(kit, autojump_clock):
    await kit.start("i1")
    old = await kit.lease_one("i1", lease_us=SECOND)
    await trio.sleep(2)
    new = await kit.lease_one("i1", owner="w2")
    await kit.backend.release_orchestration(old)
    await kit.backend.abandon_orchestration(old, 0)
    assert await kit.lease(owner="w3") == {}
    await kit.backend.complete_orchestration(new, kit.step(new))


async def test_abandon_hides_the_instance_for_the_delay(kit, autojump_clock):
    _, item = await kit.started_and_leased("i1")
    await kit.backend.abandon_orchestration(item, 10 * SECOND)
    retry_at = kit.now() + 10 * SECOND
    assert await kit.lease(owner="w2") == {}
    assert await kit.backend.next_due() == retry_at
    with pytest.raises(LeaseLost):
        await kit.backend.complete_orchestration(item, kit.step(item))
    await trio.sleep(9)
    assert await kit.lease(owner="w2") == {}
    await trio.sleep(2)
    again = await kit.lease_one("i1", owner="w2")
    assert again.events == item.events
    assert again.lock_token != item.lock_token
    assert await kit.backend.load_history("i1") == []


async def test_abandon_without_delay_is_leasable_at_once(kit):
    _, item = await kit.started_and_leased("i1")
    await kit.backend.abandon_orchestration(item, 0)
    again = await kit.lease_one("i1", owner="w2")
    assert again.events == item.events


async def test_lease_takes_only_due_events_and_completion_deletes_only_those(kit, autojump_clock):
    _, item = await kit.started_and_leased("i1")
    timer = kit.event_raised("timer")
    fire = kit.now() + 60 * SECOND
    await kit.backend.complete_orchestration(item, kit.step(
        item, messages=[Message("i1", timer, fire, item.execution_id)]))
    await kit.backend.add_event("i1", kit.event_raised("now"))
    item = await kit.lease_one("i1")
    assert [parse(e).event_raised.name for _, e in item.events] == ["now"]
    await kit.backend.complete_orchestration(item, kit.step(item))
    assert await kit.lease() == {}
    assert await kit.backend.next_due() == fire
    await trio.sleep(61)
    item = await kit.lease_one("i1")
    assert [e for _, e in item.events] == [timer]


async def test_step_that_fails_midway_writes_nothing(kit):
    """An unexpected error inside a completion rolls all of it back, not just the lease check."""
    await kit.start("target")
    target = await kit.lease_one("target")
    await kit.backend.complete_orchestration(target, kit.step(target))
    _, item = await kit.started_and_leased("i1")
    record = await kit.backend.get_instance("i1")
    bad = kit.activity(item, 1)
    bad.name = None  # violates the store's constraints after the messages were queued
    message = h.event_raised(kit.clock.now_dt(), "from-bad-step")
    step = kit.step(item, custom_status='"bad"', activities=[bad],
                    messages=[Message("target", StoredEvent.of(message), kit.now())])
    with pytest.raises(Exception):  # noqa: B017 - which error is the backend's business
        await kit.backend.complete_orchestration(item, step)
    assert await kit.backend.load_history("i1") == []
    assert await kit.backend.get_instance("i1") == record
    assert await kit.lease(owner="w2") == {}  # no message reached "target"; "i1" still leased

    # The store is usable, and the inbox IDs the failed step used are not confused with new ones.
    good = h.event_raised(kit.clock.now_dt(), "good")
    await kit.backend.add_event("target", StoredEvent.of(good))
    got = await kit.lease_one("target", owner="w2")
    assert [e for _, e in got.events] == [StoredEvent.of(good)]
    assert got.events[0][1].event == good
    await kit.backend.complete_orchestration(item, kit.step(item))


async def test_leased_events_match_their_bytes(kit):
    """Events this process wrote come back parsed already (a cache): each must be the event
    stored under its inbox ID, whether it was kept parsed or read back."""
    await kit.backend.create_instance(kit.new_instance("i1"))
    raised = h.event_raised(kit.clock.now_dt(), "parsed", '"d"')
    await kit.backend.add_event("i1", StoredEvent.of(raised))
    await kit.backend.add_event("i1", StoredEvent.read(bytes(h.event_raised(
        kit.clock.now_dt(), "read", '"r"'))))
    item = await kit.lease_one("i1")
    assert len(item.events) == 3
    assert [e.parsed for _, e in item.events] == [True, True, False]
    for _, stored in item.events:
        assert bytes(stored.event) == stored.data


async def test_renew_extends_an_orchestration_lease(kit, autojump_clock):
    await kit.start("i1")
    item = await kit.lease_one("i1", owner="w1", lease_us=10 * SECOND)
    await trio.sleep(8)
    await kit.backend.renew_orchestration(item, 10 * SECOND)  # now expires at t=18
    await trio.sleep(8)  # t=16: past the first lease, within the renewed one
    assert await kit.backend.lease_orchestrations("w2", 10, LEASE) == []
    assert await kit.backend.next_due() == kit.now() + 2 * SECOND
    await trio.sleep(3)
    again = await kit.lease_one("i1", owner="w2")
    with pytest.raises(LeaseLost):
        await kit.backend.renew_orchestration(item, LEASE)  # stale token
    await kit.backend.complete_orchestration(again, kit.step(again))
    with pytest.raises(LeaseLost):
        await kit.backend.renew_orchestration(again, LEASE)  # completed: nothing held
