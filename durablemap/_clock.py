"""Clocks: wall time for waits and retry delays, injectable so tests can skip the waiting."""

from __future__ import annotations

import time

__all__ = ["Clock", "RealClock", "VirtualClock"]


class Clock:
    """Where durable operations read the time and sleep. The base class is the real clock."""

    def time(self) -> float:
        """Seconds since the epoch."""
        return time.time()

    def sleep(self, seconds: float) -> None:
        """Block for ``seconds``."""
        if seconds > 0:
            time.sleep(seconds)


RealClock = Clock


class VirtualClock(Clock):
    """A clock whose sleeps return at once and move its time forward instead.

    Each process holding a copy keeps its own offset: waits and retry delays inside worker processes
    are skipped as well, and a deadline recorded by one process is reached at once by the next.
    """

    def __init__(self) -> None:
        self.offset = 0.0
        self.slept = 0.0

    def time(self) -> float:
        """Real time plus all the time skipped so far."""
        return time.time() + self.offset

    def sleep(self, seconds: float) -> None:
        """Skip ``seconds`` instead of waiting."""
        if seconds > 0:
            self.offset += seconds
            self.slept += seconds
