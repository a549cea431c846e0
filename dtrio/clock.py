"""The engine's one source of "now": wall time advanced by Trio's clock.

Built on `trio.current_time()`, so a test under `trio.testing.MockClock(autojump_threshold=0)`
moves durable time as fast as the mock clock jumps.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import trio


class Clock:
    def __init__(self, start_wall: float | None = None) -> None:
        self._wall0 = time.time() if start_wall is None else start_wall
        self._trio0 = trio.current_time()

    def now(self) -> float:
        """Seconds since the epoch."""
        return self._wall0 + (trio.current_time() - self._trio0)

    def now_us(self) -> int:
        return int(self.now() * 1_000_000)

    def now_dt(self) -> datetime:
        return datetime.fromtimestamp(self.now_us() / 1_000_000, tz=UTC)

    def trio_deadline(self, epoch_us: int) -> float:
        """The Trio clock reading at which wall time reaches `epoch_us`."""
        return self._trio0 + (epoch_us / 1_000_000 - self._wall0)
