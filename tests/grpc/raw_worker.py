"""A worker that speaks the protocol by hand (the SDK's generated stubs, no SDK worker), to see
exactly what the sidecar sends and how it answers."""

from __future__ import annotations

import queue
import threading
from typing import Any

import grpc
import trio
from durabletask.internal import orchestrator_service_pb2 as pb
from durabletask.internal import orchestrator_service_pb2_grpc as stubs


class RawWorker:
    def __init__(self, address: str, **request: Any) -> None:
        self._channel = grpc.insecure_channel(address)
        self.stub = stubs.TaskHubSidecarServiceStub(self._channel)
        self._stream = self.stub.GetWorkItems(pb.GetWorkItemsRequest(**request))
        self._items: queue.Queue[pb.WorkItem] = queue.Queue()
        self._later: list[pb.WorkItem] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for item in self._stream:
                self._items.put(item)
        except grpc.RpcError:
            pass  # the stream was closed

    async def next(self, kind: str = "", *, timeout: float = 5, pings: bool = False) -> pb.WorkItem:
        """The next work item (of `kind`, e.g. "activityRequest"; others wait their turn)."""
        for item in self._later:
            if not kind or item.WhichOneof("request") == kind:
                self._later.remove(item)
                return item
        with trio.fail_after(timeout):
            while True:
                item = await trio.to_thread.run_sync(self._items.get, True, timeout)
                found = item.WhichOneof("request")
                if found == "healthPing" and not pings:
                    continue
                if not kind or found == kind:
                    return item
                self._later.append(item)

    async def nothing_for(self, seconds: float, kind: str) -> bool:
        """True if no work item of `kind` arrives within `seconds`."""
        try:
            item = await self.next(kind, timeout=seconds)
        except (queue.Empty, trio.TooSlowError):
            return True
        self._later.append(item)
        return False

    async def call(self, rpc: str, request: Any) -> Any:
        return await trio.to_thread.run_sync(getattr(self.stub, rpc), request)

    def close(self) -> None:
        self._stream.cancel()
        self._channel.close()
