"""Injectable time: the worker asks a clock, so tests of time-driven rules need not wait."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Anything that tells the current time in epoch milliseconds."""

    def now_ms(self) -> int:
        """The current time, epoch milliseconds."""
        ...


class SystemClock:
    """The wall clock."""

    def now_ms(self) -> int:
        """The current time, epoch milliseconds."""
        return time.time_ns() // 1_000_000


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, start_ms: int = 1_800_000_000_000) -> None:
        self.ms = start_ms

    def now_ms(self) -> int:
        """The time last set."""
        return self.ms

    def advance(self, ms: int) -> None:
        """Move forward by `ms` milliseconds."""
        self.ms += ms
