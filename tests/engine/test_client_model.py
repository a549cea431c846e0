"""The client's operations against a model of README's state table, as a hypothesis state machine:
random sequences of start, raise, suspend, resume, terminate, purge, restart and rewind on a few
instance IDs, each checked against what the table says (the result or error, then the status the
instance settles in).

The orchestration waits for one event "go": "finish" completes it with "finish"; "fail" calls an
activity that fails once for each "fail" raised, so the instance fails, and a rewind (which runs
the activity again) completes it with "fail". The engine runs in a Trio thread of its own (the
state machine is synchronous) on an in-memory store.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.from_thread
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import dtrio
from dtrio import InstanceAlreadyExists, InstanceNotFound, InvalidOperation

registry = dtrio.Registry()
IDS = st.sampled_from(["a", "b"])
EVENTS = st.sampled_from(["finish", "fail"])
FINISHED = {"COMPLETED", "FAILED", "TERMINATED"}
# How long an instance may take to settle in the status the model expects (a bound on a hang,
# not a timing: it settles in milliseconds).
SETTLE = 5.0


# The instances whose next run of `fails_first` fails: armed by raising "fail" to them.
armed: set[str] = set()


@registry.activity
async def fails_first(ctx: dtrio.ActivityContext, _: None) -> None:
    if ctx.orchestration_id in armed:
        armed.discard(ctx.orchestration_id)
        raise RuntimeError("the first run after a 'fail' fails")


@registry.orchestrator
async def controlled(ctx: dtrio.OrchestrationContext, _: None) -> str:
    what = await ctx.wait_for_external_event("go")
    if what == "fail":
        await ctx.call_activity(fails_first)
    return str(what)


class _EngineThread:
    """An engine running in a Trio thread of its own, called from this one."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self.client: dtrio.Client | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._thread.start()
        self._ready.wait()

    async def _main(self) -> None:
        async with dtrio.open_engine(registry, db=None, max_poll_interval=None,
                                     shutdown_grace=0) as engine:
            self.client, self._stop = engine.client, trio.Event()
            self._token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await self._stop.wait()

    def call(self, fn: Callable[..., Awaitable[Any]], *args: Any, **kw: Any) -> Any:
        async def run() -> Any:
            return await fn(*args, **kw)

        return trio.from_thread.run(run, trio_token=self._token)

    def close(self) -> None:
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)  # type: ignore[union-attr]
        self._thread.join()


class ClientModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.engine = _EngineThread()
        armed.clear()
        # instance ID -> its status as the model says, its output once completed, and the event
        # kept while it is suspended
        self.status: dict[str, str] = {}
        self.output: dict[str, str] = {}
        self.kept: dict[str, str] = {}
        self.go: dict[str, str] = {}  # the event an instance consumed

    def teardown(self) -> None:
        self.engine.close()

    def call(self, name: str, *args: Any, **kw: Any) -> Any:
        return self.engine.call(getattr(self.engine.client, name), *args, **kw)

    def refused(self, error: type[Exception], name: str, *args: Any, **kw: Any) -> None:
        with pytest.raises(error):
            self.call(name, *args, **kw)

    # -- what the table says, and what consuming "go" does --------------------------------

    def consume(self, iid: str, what: str) -> None:
        self.go[iid] = what
        if what == "finish":
            self.status[iid], self.output[iid] = "COMPLETED", "finish"
        else:
            self.status[iid] = "FAILED"

    @rule(iid=IDS)
    def start(self, iid: str) -> None:
        if iid in self.status:
            self.refused(InstanceAlreadyExists, "schedule_new_orchestration", controlled,
                         instance_id=iid)
            return
        self.call("schedule_new_orchestration", controlled, instance_id=iid)
        self.status[iid] = "RUNNING"

    @rule(iid=IDS, what=EVENTS)
    def raise_event(self, iid: str, what: str) -> None:
        if iid not in self.status:
            self.refused(InstanceNotFound, "raise_orchestration_event", iid, "go", what)
            return
        if what == "fail" and self.status[iid] in ("RUNNING", "SUSPENDED"):
            armed.add(iid)
        self.call("raise_orchestration_event", iid, "go", what)
        if self.status[iid] == "RUNNING":
            self.consume(iid, what)
        elif self.status[iid] == "SUSPENDED":
            self.kept.setdefault(iid, what)

    @rule(iid=IDS)
    def suspend(self, iid: str) -> None:
        if iid not in self.status:
            self.refused(InstanceNotFound, "suspend_orchestration", iid)
            return
        self.call("suspend_orchestration", iid)
        if self.status[iid] == "RUNNING":
            self.status[iid] = "SUSPENDED"

    @rule(iid=IDS)
    def resume(self, iid: str) -> None:
        if iid not in self.status:
            self.refused(InstanceNotFound, "resume_orchestration", iid)
            return
        self.call("resume_orchestration", iid)
        if self.status[iid] == "SUSPENDED":
            self.status[iid] = "RUNNING"
            if iid in self.kept:
                self.consume(iid, self.kept.pop(iid))

    @rule(iid=IDS)
    def terminate(self, iid: str) -> None:
        if iid not in self.status:
            self.refused(InstanceNotFound, "terminate_orchestration", iid)
            return
        self.call("terminate_orchestration", iid, output="stopped")
        if self.status[iid] not in FINISHED:
            self.status[iid], self.output[iid] = "TERMINATED", "stopped"
            self.kept.pop(iid, None)

    @rule(iid=IDS)
    def purge(self, iid: str) -> None:
        finished = self.status.get(iid) in FINISHED
        assert self.call("purge_orchestration", iid) == (1 if finished else 0)
        if finished:
            del self.status[iid]

    @rule(iid=IDS)
    def restart(self, iid: str) -> None:
        if iid not in self.status:
            self.refused(InstanceNotFound, "restart_orchestration", iid)
        elif self.status[iid] not in FINISHED:
            self.refused(InvalidOperation, "restart_orchestration", iid)
        else:
            assert self.call("restart_orchestration", iid) == iid
            self.status[iid] = "RUNNING"

    @rule(iid=IDS)
    def rewind(self, iid: str) -> None:
        if iid not in self.status:
            self.refused(InstanceNotFound, "rewind_orchestration", iid)
        elif self.status[iid] != "FAILED":
            self.refused(InvalidOperation, "rewind_orchestration", iid)
        else:
            self.call("rewind_orchestration", iid)
            # Its activity runs again, a second attempt, which succeeds.
            self.status[iid], self.output[iid] = "COMPLETED", "fail"

    # -- the check ------------------------------------------------------------------------

    @invariant()
    def every_instance_settles_as_the_model_says(self) -> None:
        for iid in ("a", "b"):
            self.check(iid)

    def check(self, iid: str) -> None:
        async def settled() -> Any:
            with trio.move_on_after(SETTLE):
                while True:
                    state = await self.engine.client.get_orchestration_state(iid)
                    if state is None and iid not in self.status:
                        return None
                    if state is not None and state.runtime_status.name == self.status.get(iid):
                        return state
                    await trio.sleep(0.001)
            return await self.engine.client.get_orchestration_state(iid)

        state = self.engine.call(settled)
        event(f"seen {self.status.get(iid, 'unknown')}")
        if iid not in self.status:
            assert state is None, f"{iid} should not exist: {state}"
            return
        assert state is not None, f"{iid} is gone, should be {self.status[iid]}"
        assert state.runtime_status.name == self.status[iid], (iid, state)
        if self.status[iid] in ("COMPLETED", "TERMINATED"):
            assert state.output == self.output[iid], (iid, state)


ClientModel.TestCase.settings = settings(max_examples=100, stateful_step_count=25, deadline=None)
test_client_operations_follow_the_state_table = ClientModel.TestCase
