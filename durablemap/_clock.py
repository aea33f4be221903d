"""Clocks: wall time for waits and retry delays, injectable so tests can skip the waiting."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Clock", "RealClock", "VirtualClock", "set_turn"]

# Where a VirtualClock's sleep waits for its turn (see _timeskip), given the wake time; None: no wait.
_turn: Callable[[float], None] | None = None


def set_turn(turn: Callable[[float], None] | None) -> None:
    """Make virtual sleeps in this process wait for ``turn(wake_time)`` to return (a worker
    process whose coordinator moves the clock only when nothing else can run)."""
    global _turn
    _turn = turn


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
    are skipped as well, and a deadline recorded by one process is reached at once by the next. In a
    worker, a top-level item's sleep first waits until every other item of its map in flight waits
    too (see _timeskip), as the SDK's runner moves its clock only when nothing else can run.
    """

    def __init__(self) -> None:
        self.offset = 0.0
        self.slept = 0.0

    def time(self) -> float:
        """Real time plus all the time skipped so far."""
        return time.time() + self.offset

    def sleep(self, seconds: float) -> None:
        """Skip ``seconds`` instead of waiting (once it is this sleep's turn: see the class)."""
        if seconds > 0:
            if _turn is not None:
                _turn(self.time() + seconds)
            self.offset += seconds
            self.slept += seconds
