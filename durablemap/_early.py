"""Outcomes of items whose chunk still runs: looked up in the store as their workers record them.

A worker running several items of a chunk at once records each item when it finishes (``_inflight``),
but its chunk's result comes back only when all its items are done. A map with a completion
criterion must see each item's end as the SDK's threads would (a failure that exceeds the tolerance
ends the map while slower items still run), so while such chunks run, the coordinator looks up their
items' records every ``PEEK_SECONDS``. Maps without a criterion end only when all is done: nothing to
look up early.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from durablemap._batch import BatchItem

__all__ = ["PEEK_SECONDS", "EarlyOutcomes"]

PEEK_SECONDS = 0.02


class EarlyOutcomes:
    """The chunks of one map whose items are recorded as each finishes, and when they were last
    looked up."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.chunks: set[Future[Any]] = set()
        self.at = 0.0

    def track(self, future: Future[Any], concurrency: int) -> None:
        """A chunk was submitted with up to ``concurrency`` items at once."""
        if self.enabled and concurrency > 1:
            self.chunks.add(future)

    def timeout(self, timeout: float) -> float:
        """How long the coordinator may wait for a chunk before the next look-up."""
        return min(timeout, PEEK_SECONDS) if self.chunks else timeout

    def look(self, now: float, futures: Mapping[Future[Any], Sequence[int]],
             running_among: Callable[[Iterable[int]], list[int]],
             recorded: Callable[[list[int]], list[BatchItem[Any]]]) -> list[BatchItem[Any]]:
        """The items of tracked chunks still running on the board that are recorded already (every
        ``PEEK_SECONDS`` at most; else nothing)."""
        if not self.chunks or now - self.at < PEEK_SECONDS:
            return []
        self.at = now
        self.chunks.intersection_update(futures)
        return recorded(running_among(i for future in self.chunks for i in futures[future]))
