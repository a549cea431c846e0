"""The official SDK's worker and client over TLS with a token, in a process of their own: the
SDK's secure channel trusts only the roots gRPC reads at start (GRPC_DEFAULT_SSL_ROOTS_FILE_PATH
names the test's CA), and sends the token as its metadata.

    python secure_sdk_app.py ADDRESS [TOKEN]

Runs `sdk_app.sequence` (with an input) and `sdk_app.approval` (with an event), then prints one
JSON line: each one's status and output, or the error a call failed with.
"""

from __future__ import annotations

import json
import sys

import grpc
import sdk_app as app
from durabletask import client, worker


def main(address: str, token: str | None) -> dict[str, object]:
    metadata = [("authorization", f"Bearer {token}")] if token else None
    sdk_worker = worker.TaskHubGrpcWorker(
        host_address=address, secure_channel=True, metadata=metadata)
    for orchestrator in app.ORCHESTRATORS:
        sdk_worker.add_orchestrator(orchestrator)
    for activity in app.ACTIVITIES:
        sdk_worker.add_activity(activity)
    sdk = client.TaskHubGrpcClient(host_address=address, secure_channel=True, metadata=metadata)
    try:
        iid = sdk.schedule_new_orchestration(app.sequence, input="input-payload-51c0")
    except grpc.RpcError as exc:
        return {"error": exc.code().name, "details": exc.details()}
    sdk_worker.start()
    try:
        done = sdk.wait_for_orchestration_completion(iid, timeout=30)
        waits = sdk.schedule_new_orchestration(app.approval)
        sdk.wait_for_orchestration_start(waits, timeout=30)
        sdk.raise_orchestration_event(waits, "approval", data="event-payload-77aa")
        approved = sdk.wait_for_orchestration_completion(waits, timeout=30)
    finally:
        sdk_worker.stop()
    return {name: {"status": state.runtime_status.name,
                   "output": json.loads(state.serialized_output)}
            for name, state in (("sequence", done), ("approval", approved))}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)), flush=True)
