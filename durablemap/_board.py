"""The item board: the state of every item of one map (new, running, done), the finished items,
the counts, and the completion policy's verdict. Pure bookkeeping: no processes, no store.

Items are taken in ascending index order. The state of all items is one ``bytearray`` (a byte per
item), so finding the next new items and marking a chunk running are C-speed slices, not loops.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any, cast

from durablemap._batch import BatchItem, BatchItemStatus, CompletionReason
from durablemap._completion import CompletionPolicy, status_snapshot
from durablemap._errors import ErrorObject
from durablemap.executors._base import ChunkResult

__all__ = ["ItemBoard", "MapOutcome"]

NEW, RUNNING, DONE = 0, 1, 2
_NOT_NEW = re.compile(rb"[^\x00]")
_RUN_LENGTH = 16384  # the longest run of codes sliced at once (the largest chunk)
_DONE_RUN = bytes([DONE]) * _RUN_LENGTH
_RUNNING_RUN = bytes([RUNNING]) * _RUN_LENGTH


@dataclass
class MapOutcome:
    """The items (index order, started only), the completion reason, and the counts."""

    items: list[BatchItem[Any]]
    reason: CompletionReason
    started: list[int]
    succeeded: int
    failed: int


class ItemBoard:
    """The state of the items of one map (see the module docstring)."""

    def __init__(self, n: int, prior: dict[int, BatchItem[Any]], policy: CompletionPolicy,
                 predicate: Callable[[Any], Any] | None, names: Sequence[str | None] | None) -> None:
        self.n, self.policy, self.predicate, self.names = n, policy, predicate, names
        self.codes = bytearray(n)
        self.items: list[BatchItem[Any] | None] = [None] * n
        self.succeeded = self.failed = self.in_flight = self.cursor = 0
        for index, item in prior.items():
            self.codes[index] = DONE
            self.items[index] = item
            if item.status == BatchItemStatus.SUCCEEDED:
                self.succeeded += 1
            else:
                self.failed += 1
        self.decision: Any = None
        self.reason: CompletionReason | None = None
        # With no completion criterion only "all done" ends the map: results are counted a chunk at
        # a time instead of one by one.
        self.bulk = predicate is None and not policy.has_criteria

    # -- the completion policy ----------------------------------------------------------------
    def check(self) -> None:
        """Ask the completion policy (and the user's predicate) whether the map is complete."""
        if self.predicate is not None:
            self.decision = self.predicate(self._snapshot())
        if (self.policy.is_complete(self.succeeded, self.failed, self.decision)
                or not self.policy.should_continue(self.failed)):
            self.reason = self.policy.reason(self.succeeded, self.failed, self.decision)

    def finish_all(self) -> None:
        """Nothing is left to run or to record: the map ends with the policy's reason."""
        self.reason = self.policy.reason(self.succeeded, self.failed, self.decision)

    def _snapshot(self) -> Any:
        return status_snapshot(self.succeeded, self.failed, self.n, self._statuses())

    def _statuses(self) -> list[tuple[int, str | None, BatchItemStatus | None]]:
        statuses = []
        for index in range(self.n):
            item, code = self.items[index], self.codes[index]
            status = item.status if item is not None else (BatchItemStatus.STARTED if code == RUNNING else None)
            statuses.append((index, self.names[index] if self.names is not None else None, status))
        return statuses

    # -- dispatch -----------------------------------------------------------------------------
    def remaining(self) -> int:
        """Items neither finished nor in flight."""
        return self.n - self.succeeded - self.failed - self.in_flight

    def take(self, size: int) -> Sequence[int]:
        """The next run of at most ``size`` new items, in index order (not yet marked running)."""
        start = self.codes.find(0, self.cursor)
        if start < 0:
            self.cursor = self.n
            return ()
        found = _NOT_NEW.search(self.codes, start, start + size)
        stop = found.start() if found else min(start + size, self.n)
        self.cursor = stop
        return range(start, stop)

    def start(self, indexes: Sequence[int]) -> None:
        """The items are dispatched."""
        if isinstance(indexes, range):
            self.codes[indexes.start:indexes.stop] = _RUNNING_RUN[:len(indexes)]
        else:
            for index in indexes:
                self.codes[index] = RUNNING
        self.in_flight += len(indexes)

    def unstart(self, indexes: Iterable[int]) -> None:
        """The items did not run after all (lost, cancelled, not reached): they are new again. The
        caller queues them again when they must run in this map."""
        for index in indexes:
            if self.codes[index] == RUNNING:
                self.codes[index] = NEW
                self.in_flight -= 1

    def running_among(self, indexes: Iterable[int]) -> list[int]:
        """Those of ``indexes`` still running, sorted."""
        return sorted({index for index in indexes if self.codes[index] == RUNNING})

    # -- results ------------------------------------------------------------------------------
    def finish_chunk(self, result: ChunkResult) -> tuple[int, int]:
        """Record a chunk's items as finished; returns how many SUCCEEDED and FAILED."""
        if self.bulk and not result.errors and isinstance(result.indexes, range):
            return self._finish_range(result.indexes, result.values), 0
        return self.finish_items(_items(result))

    def _finish_range(self, indexes: range, values: list[Any]) -> int:
        """Count a contiguous run of SUCCEEDED items at once (no criterion can stop the map early)."""
        start, stop = indexes.start, indexes.stop
        count = stop - start
        self.items[start:stop] = BatchItem.from_rows(
            zip(indexes, repeat(BatchItemStatus.SUCCEEDED), values, repeat(None)))
        self.codes[start:stop] = _DONE_RUN[:count]
        self.in_flight -= count
        self.succeeded += count
        self.check()
        return count

    def finish_items(self, finished: list[BatchItem[Any]]) -> tuple[int, int]:
        """Record items as finished (those still running); returns how many SUCCEEDED and FAILED."""
        succeeded = failed = 0
        for item in finished:
            index = item.index
            if self.codes[index] != RUNNING:
                continue
            self.codes[index] = DONE
            self.items[index] = item
            self.in_flight -= 1
            if item.status == BatchItemStatus.SUCCEEDED:
                self.succeeded += 1
                succeeded += 1
            else:
                self.failed += 1
                failed += 1
            if self.reason is None:
                self.check()
        return succeeded, failed

    def outcome(self) -> MapOutcome:
        """The started items in index order (those still running as STARTED), and the counts."""
        assert self.reason is not None
        started = [i for i in range(self.n) if self.codes[i] == RUNNING] if self.in_flight else []
        for index in started:
            self.items[index] = BatchItem(index, BatchItemStatus.STARTED)
        # When every item started there are no gaps to leave out.
        items = (cast("list[BatchItem[Any]]", self.items) if NEW not in self.codes
                 else [item for item in self.items if item is not None])
        return MapOutcome(items, self.reason, started, self.succeeded, self.failed)


def _items(result: ChunkResult) -> list[BatchItem[Any]]:
    """The BatchItems of a chunk result."""
    errors = result.errors
    items = []
    for position, (index, value) in enumerate(zip(result.indexes, result.values, strict=False)):
        error = errors.get(position)
        if error is None:
            items.append(BatchItem(index, BatchItemStatus.SUCCEEDED, value, None))
        else:
            items.append(BatchItem(index, BatchItemStatus.FAILED, None, ErrorObject.from_dict(error)))
    return items
