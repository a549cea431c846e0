"""Engine settings, with defaults suited to one process on a small machine."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from ..durations import to_seconds
from ..errors import InvalidInput


@dataclass(frozen=True, slots=True)
class EngineOptions:
    # Durations are seconds (int or float) or timedeltas, kept as float seconds.
    max_concurrent_orchestrations: int = 200
    max_concurrent_activities: int = 200
    # Entity batches run at once (each entity runs one batch at a time).
    max_concurrent_entities: int = 200
    # Most operations and lock messages one entity batch takes from the entity's inbox.
    entity_batch_size: int = 100
    # How long the lease on an orchestration step or entity batch lasts, and on an activity.
    # Held items are renewed every third of it, however long they run, so only a process that
    # is gone loses them: to one on this host at once, else when the lease lapses. Short, so
    # that work a dead process held on another host runs again within seconds.
    orchestration_lease: float | timedelta = 15.0
    activity_lease: float | timedelta = 30.0
    # Longest gap between polls for work written by other processes (None: never poll; for
    # stores only this process uses, like the in-memory one).
    max_poll_interval: float | timedelta | None = 1.0
    # On shutdown, how long in-flight work items may take to finish before being abandoned.
    shutdown_grace: float | timedelta = 10.0
    # Replayed orchestrations kept in memory between steps.
    cache_size: int = 10_000
    synchronous: str = "NORMAL"
    # Run orchestrators and activities in this process from the registry. The gRPC sidecar
    # turns this off: its work belongs to remote SDK workers, which lease it through
    # `dtrio.grpc`, and an in-process dispatcher with an empty registry would fail it.
    local_workers: bool = True
    # Serve the web dashboard on "[HOST:]PORT" (None: no dashboard). Beyond loopback it needs
    # a token file (whose token it then asks for) or read-only mode.
    dashboard: str | None = None
    dashboard_token_file: str | None = None
    dashboard_read_only: bool = False

    def __post_init__(self) -> None:
        for name in ("max_concurrent_orchestrations", "max_concurrent_activities",
                     "max_concurrent_entities", "entity_batch_size"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"{name} must be at least 1")
        for name, positive, infinite in (
            ("orchestration_lease", True, False), ("activity_lease", True, False),
            ("max_poll_interval", True, False), ("shutdown_grace", False, True),
        ):
            value = getattr(self, name)
            if value is not None or name != "max_poll_interval":
                seconds = to_seconds(value, f"EngineOptions({name}=...)",
                                     positive=positive, infinite=infinite)
                object.__setattr__(self, name, seconds)
        if self.cache_size < 0:
            raise InvalidInput("cache_size must not be negative")
        if self.dashboard is not None:
            from ..dashboard.security import check_exposure, parse_address

            host, _ = parse_address(self.dashboard)
            check_exposure(host, guarded=self.dashboard_token_file is not None,
                           read_only=self.dashboard_read_only)
