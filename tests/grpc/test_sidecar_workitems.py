"""Work items spliced from stored event bytes equal the same messages encoded whole."""

from __future__ import annotations

from datetime import UTC, datetime

from dtrio import _pb as pb
from dtrio import history as h
from dtrio.grpc.workitems import HEALTH_PING, orchestrator_work_item
from dtrio.wire import encode


def test_spliced_orchestrator_work_item_equals_the_whole_message() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    past = [h.orchestrator_started(now), h.execution_started(now, "o", "i", "e", '"in"'),
            h.task_scheduled(now, 1, "a", "1"), h.orchestrator_completed(now)]
    new = [h.orchestrator_started(now), h.task_completed(now, 1, '"done"')]
    spliced = orchestrator_work_item(
        "token", "i", "e", [encode(e) for e in past], [encode(e) for e in new]
    )
    whole = pb.WorkItem(completion_token="token", orchestrator_request=pb.OrchestratorRequest(
        instance_id="i", execution_id="e", past_events=past, new_events=new,
    ))
    assert pb.WorkItem.parse(spliced) == whole


def test_health_ping() -> None:
    assert pb.WorkItem.parse(HEALTH_PING).health_ping == pb.HealthPing()
