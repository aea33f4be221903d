"""The item board: the state of every item of one map (new, running, done), the finished items,
the counts, and the completion policy's verdict. Pure bookkeeping: no processes, no store.

Items are taken in ascending index order. The state of all items is one ``bytearray`` (a byte per
item: new, running, succeeded, failed), so finding the next new items and marking a chunk running
are C-speed slices, not loops. A small map's board also keeps the values and errors of its finished
items, by index (its BatchResult is built on them and the bytes, see ``ItemColumns``); a large map's
keeps nothing but the bytes and the counts: its items stay in the store, and its BatchResult reads
them from there (``_stored``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from durablemap._batch import (
    FAILED_CODE,
    NEW_CODE,
    RUNNING_CODE,
    STATUS_OF_CODE,
    SUCCEEDED_CODE,
    BatchItem,
    BatchItemStatus,
    CompletionReason,
    ItemColumns,
)
from durablemap._completion import CompletionPolicy, status_snapshot
from durablemap._errors import ErrorObject
from durablemap.executors._base import ChunkResult

__all__ = ["ItemBoard", "MapOutcome"]

NEW, RUNNING, SUCCEEDED, FAILED = NEW_CODE, RUNNING_CODE, SUCCEEDED_CODE, FAILED_CODE
_NOT_NEW = re.compile(rb"[^\x00]")
_RUNNING_BYTE = re.compile(rb"\x01")
_RUN_LENGTH = 16384  # the longest run of codes sliced at once (the largest chunk)
_SUCCEEDED_RUN = bytes([SUCCEEDED]) * _RUN_LENGTH
_RUNNING_RUN = bytes([RUNNING]) * _RUN_LENGTH
_SUCCEEDED_STATUS = BatchItemStatus.SUCCEEDED


@dataclass
class MapOutcome:
    """The started items (None when the board keeps none), the completion reason, and the counts."""

    items: ItemColumns | None
    reason: CompletionReason
    started: list[int]
    succeeded: int
    failed: int

    @property
    def total(self) -> int:
        """How many items started (finished or still running)."""
        return self.succeeded + self.failed + len(self.started)


class ItemBoard:
    """The state of the items of one map (see the module docstring)."""

    def __init__(self, n: int, prior: dict[int, BatchItem[Any]], policy: CompletionPolicy,
                 predicate: Callable[[Any], Any] | None, names: Sequence[str | None] | None,
                 done: bytearray | None = None) -> None:
        """``prior``: the items earlier runs finished. ``done``: instead, their statuses as codes
        (SUCCEEDED, FAILED, else NEW), one per item; then the board keeps no items."""
        self.n, self.policy, self.predicate, self.names = n, policy, predicate, names
        self.codes = bytearray(n) if done is None else bytearray(done)
        #: The result of each SUCCEEDED item and the error of each FAILED one (None: kept in the store).
        self.values: list[Any] | None = [None] * n if done is None else None
        self.errors: dict[int, ErrorObject] = {}
        self.succeeded, self.failed = self.codes.count(SUCCEEDED), self.codes.count(FAILED)
        self.in_flight = self.cursor = 0
        for index, item in prior.items():
            ok = item.status == _SUCCEEDED_STATUS
            self.codes[index] = SUCCEEDED if ok else FAILED
            self._keep(index, ok, item.result, item.error)
            self.succeeded += ok
            self.failed += not ok
        self.decision: Any = None
        self.reason: CompletionReason | None = None
        # With no completion criterion only "all done" ends the map: results are counted a chunk at
        # a time instead of one by one.
        self.bulk = predicate is None and not policy.has_criteria
        #: Called after each item counted while the map goes on (not by bulk counting): the
        #: coordinator takes the room it freed at once (see ``Coordinator._hold``).
        self.counted: Callable[[], None] | None = None

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
        names = self.names
        return [(index, names[index] if names is not None else None, STATUS_OF_CODE[code])
                for index, code in enumerate(self.codes)]

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

    def running(self) -> list[int]:
        """The items in flight, sorted."""
        return [m.start() for m in _RUNNING_BYTE.finditer(self.codes)] if self.in_flight else []

    def running_among(self, indexes: Iterable[int]) -> list[int]:
        """Those of ``indexes`` still running, sorted."""
        return sorted({index for index in indexes if self.codes[index] == RUNNING})

    # -- results ------------------------------------------------------------------------------
    def finish_chunk(self, result: ChunkResult) -> tuple[int, int]:
        """Record a chunk's items as finished; returns how many SUCCEEDED and FAILED."""
        if self.bulk and not result.errors and isinstance(result.indexes, range):
            return self._finish_range(result.indexes, result.values), 0
        errors = result.errors
        if self.values is not None:
            return self._finish(_outcomes(result))
        return self._finish((index, position not in errors, None, None)
                            for position, index in zip(range(result.ran), result.indexes, strict=False))

    def _finish_range(self, indexes: range, values: list[Any]) -> int:
        """Count a contiguous run of SUCCEEDED items at once (no criterion can stop the map early)."""
        start, stop = indexes.start, indexes.stop
        count = stop - start
        if self.values is not None:
            self.values[start:stop] = values
        self.codes[start:stop] = _SUCCEEDED_RUN[:count]
        self.in_flight -= count
        self.succeeded += count
        self.check()
        return count

    def finish_items(self, finished: list[BatchItem[Any]]) -> tuple[int, int]:
        """Record items as finished (see ``_finish``); returns how many SUCCEEDED and FAILED."""
        return self._finish((item[0], item[1] == _SUCCEEDED_STATUS, item[2], item[3]) for item in finished)

    def _finish(self, finished: Iterable[tuple[int, bool, Any, ErrorObject | None]]) -> tuple[int, int]:
        """Record ``(index, succeeded, value, error)`` of items as finished (those still running), in
        the order they finished, until the map is complete: later ones stay in flight (reported
        STARTED, as the SDK reports items still running when its completion criterion fires).
        Returns how many SUCCEEDED and FAILED."""
        succeeded = failed = 0
        codes, keep = self.codes, self.values is not None
        for index, ok, value, error in finished:
            if self.reason is not None:
                break
            if codes[index] != RUNNING:
                continue
            codes[index] = SUCCEEDED if ok else FAILED
            if keep:
                self._keep(index, ok, value, error)
            self.in_flight -= 1
            if ok:
                self.succeeded += 1
                succeeded += 1
            else:
                self.failed += 1
                failed += 1
            self.check()
            if self.counted is not None and self.reason is None:
                self.counted()
        return succeeded, failed

    def _keep(self, index: int, ok: bool, value: Any, error: ErrorObject | None) -> None:
        """Keep a finished item's value or error (a board that keeps items)."""
        values = self.values
        if values is None:
            return
        if ok:
            values[index] = value
        else:
            values[index] = None
            if error is not None:
                self.errors[index] = error

    def outcome(self) -> MapOutcome:
        """The started items (those still running as STARTED), and the counts. The board is done
        with: the outcome's items share its values."""
        assert self.reason is not None
        started = [m.start() for m in _RUNNING_BYTE.finditer(self.codes)] if self.in_flight else []
        if self.values is None:
            return MapOutcome(None, self.reason, started, self.succeeded, self.failed)
        columns = ItemColumns(self.values, bytes(self.codes), self.errors)
        return MapOutcome(columns, self.reason, started, self.succeeded, self.failed)


def _outcomes(result: ChunkResult) -> Iterator[tuple[int, bool, Any, ErrorObject | None]]:
    """``(index, succeeded, value, error)`` of each item of a chunk result."""
    errors = result.errors
    for position, (index, value) in enumerate(zip(result.indexes, result.values, strict=False)):
        error = errors.get(position)
        if error is None:
            yield index, True, value, None
        else:
            yield index, False, None, ErrorObject.from_dict(error)
