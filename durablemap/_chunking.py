"""Chunk sizing: how many items the next chunk holds. Pure: fed the measured time per item.

Tiny items go in large chunks (a chunk should carry about ``chunk_seconds`` of work, to hide what
dispatching it costs), slow items one by one, and near the end of a map no chunk holds more than
half a worker's fair share of what remains, so the workers run out of work together; but no chunk
carries less than ``TAIL_SECONDS`` of work, since halving the tail of a map of tiny items down to
one item would cost some forty round trips to save a few milliseconds of imbalance.
"""

from __future__ import annotations

__all__ = ["MAX_CHUNK", "TAIL_SECONDS", "ChunkSizer"]

MAX_CHUNK = 16384
TAIL_SECONDS = 0.005


class ChunkSizer:
    """The size of the next chunk of one map."""

    __slots__ = ("chunk_seconds", "per_item", "workers")

    def __init__(self, workers: int, chunk_seconds: float) -> None:
        self.workers = max(workers, 1)
        self.chunk_seconds = chunk_seconds
        self.per_item: float | None = None  # seconds, from the last chunk that finished

    def measured(self, elapsed: float, items: int) -> None:
        """A chunk of ``items`` items ran in ``elapsed`` seconds."""
        if items:
            self.per_item = elapsed / items

    def size(self, remaining: int) -> int:
        """How many items the next chunk holds, ``remaining`` items being neither done nor in
        flight. One until an item's duration is known."""
        if self.per_item is None:
            return 1
        per_item = max(self.per_item, 1e-7)
        size = int(self.chunk_seconds / per_item)
        balance = max(-(-remaining // (2 * self.workers)), int(TAIL_SECONDS / per_item))
        return max(1, min(size, MAX_CHUNK, balance, remaining))
