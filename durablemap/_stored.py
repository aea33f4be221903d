"""A map's items read from the store a page at a time: the batches that a resume and a replay
decode, and the items of a large map's `BatchResult`, which are never all in memory at once.

    store.children_data(map key, start, PAGE) ──> record_batches: (indexes, decoded fields)
                                                        │
            StoredItems (a Sequence of BatchItem) <─────┘  pages of PAGE indexes, the last one kept

A map of at least `LAZY_MIN_ITEMS` inputs keeps no item in the coordinator (only a status byte
per item, on the board), and its `BatchResult` is a view of the item records: ``len``, the counts
and the completion reason come from the map's outcome, while ``all``, iteration and indexing read
pages of `PAGE` items. A position is an index when every item started (the usual case); else a
directory of how many items each page holds is made by one pass, the first time it is needed.

A `StoredItems` keeps its own handle on the store, so the result stays readable for as long as it
is held, even after ``handler.run`` returned and the store's other handles were closed. It reads the
records as they are now: running the same map again (``retry_failed``) or removing the execution
changes what it reads, and a page that no longer holds what the map recorded raises `StoreError`.
Pickled (sent to another process), it becomes a plain list of its items.
"""

from __future__ import annotations

import bisect
import struct
import weakref
from collections.abc import Iterator, Sequence
from itertools import repeat
from operator import countOf
from typing import Any, overload

import msgpack

from durablemap._batch import (
    RUNNING_CODE,
    STATUS_OF_CODE,
    SUCCEEDED_CODE,
    BatchItem,
    BatchItemStatus,
    BatchResult,
    CompletionReason,
    ItemColumns,
)
from durablemap._errors import StoreError
from durablemap._gc import paused
from durablemap._records import all_compact, compact_values, item_outcome, op_key
from durablemap._store import Store, path_str
from durablemap._store._interface import RecordStore
from durablemap.serdes import new_unpacker

__all__ = ["LAZY_MIN_ITEMS", "PAGE", "StoredItems", "batch_columns", "record_batches", "stored_result"]

#: Items decoded at once: a replay or a resume holds one page of raw records and decoded fields.
PAGE = 65536
#: Maps with at least this many inputs keep their items in the store, not in the coordinator
#: (measured: below it, the in-memory result costs little and is read back faster).
LAZY_MIN_ITEMS = 1_000_000

_SUCCEEDED = BatchItemStatus.SUCCEEDED
_STARTED = BatchItemStatus.STARTED


def record_batches(store: RecordStore, map_key: bytes, op_id: str, start: int = 0,
                   stop: int | None = None) -> Iterator[tuple[list[int], list[list[Any]]]]:
    """The indexes and decoded fields of the item records of map ``map_key`` whose index is in
    ``[start, stop)``, in index order, a page at a time: each page read in one store transaction and
    decoded by one streaming msgpack unpacker (values written by the default serdes included)."""
    unpacker = new_unpacker()
    while stop is None or start < stop:
        wanted = PAGE if stop is None else min(PAGE, stop - start)
        if isinstance(store, Store):  # runs of records come joined as they are stored
            indexes, data = store.children_data(map_key, start, wanted)
        else:
            indexes, raws = store.children_columns(map_key, start, wanted)
            data = b"".join(raws)
            del raws
        full = len(indexes) == wanted
        if not indexes:
            return
        unpacker.feed(data)
        del data
        if isinstance(store, Store):
            store.release_read_pages()  # what was read is in the unpacker: see the method
        records = _decoded(unpacker, len(indexes), op_id)
        if stop is not None and indexes[-1] >= stop:
            cut = bisect.bisect_left(indexes, stop)
            del indexes[cut:], records[cut:]
            full = False
            if not indexes:
                return
        yield indexes, records
        if not full:
            return
        start = indexes[-1] + 1


def _decoded(unpacker: msgpack.Unpacker, count: int, op_id: str) -> list[list[Any]]:
    try:
        records = list(unpacker)
        if len(records) != count or countOf(map(type, records), list) != count:
            raise ValueError(f"{count} records decoded to {len(records)} values")
    except (ValueError, TypeError, msgpack.UnpackException, msgpack.ExtraData, struct.error) as exc:
        raise StoreError(
            f"An item record of map '{op_id}' cannot be decoded ({type(exc).__name__}: {exc}). The "
            "store may be damaged or written by another program; restore it from a copy, or remove "
            "that execution with `durablemap rm ID` to start it afresh.") from None
    return records


def batch_items(indexes: list[int], records: list[list[Any]], started: frozenset[int], item_serdes: Any,
                op_id: str, execution_id: str) -> list[BatchItem[Any]]:
    """The finished items of a batch of decoded records, leaving out ``started`` indexes (reported
    STARTED by the map) and records of unfinished items."""
    if not started and all_compact(records):
        # Every record compact (SUCCEEDED, default serdes): build the items without a Python loop.
        return BatchItem.from_rows(zip(indexes, repeat(_SUCCEEDED), compact_values(records), repeat(None)))
    rows = []
    for index, fields in zip(indexes, records, strict=True):
        if index not in started:
            outcome = item_outcome(fields, item_serdes, index, op_id, execution_id)
            if outcome is not None:
                rows.append((index, *outcome))
    return BatchItem.from_rows(rows)


def batch_columns(store: RecordStore, map_key: bytes, op_id: str, n: int, started: Sequence[int], item_serdes: Any,
                  execution_id: str) -> ItemColumns:
    """The items of the finished map ``map_key`` of ``n`` inputs as `ItemColumns`, from their records:
    those at ``started`` are STARTED (whatever they recorded later), and records of unfinished items
    are left out. A page of compact records in a row (SUCCEEDED, default serdes) is a slice each."""
    values: list[Any] = [None] * n
    codes = bytearray(n)
    errors: dict[int, Any] = {}
    skip = frozenset(started)
    with paused(promote=True):  # a replay's values outlive it
        for indexes, records in record_batches(store, map_key, op_id, 0, n):
            first, last = indexes[0], indexes[-1]
            if not skip and last - first + 1 == len(indexes) and all_compact(records):
                values[first:last + 1] = compact_values(records)
                codes[first:last + 1] = _SUCCEEDED_BYTE * len(indexes)
                continue
            for index, fields in zip(indexes, records, strict=True):
                outcome = item_outcome(fields, item_serdes, index, op_id, execution_id) if index not in skip else None
                if outcome is not None:
                    status, values[index], error = outcome
                    codes[index] = _CODE_OF[status]
                    if error is not None:
                        errors[index] = error
    for index in skip:
        if index < n:
            codes[index], values[index] = RUNNING_CODE, None
    return ItemColumns(values, bytes(codes), errors)


_SUCCEEDED_BYTE = bytes([SUCCEEDED_CODE])
_CODE_OF = {status: code for code, status in enumerate(STATUS_OF_CODE) if status is not None}


class StoredItems(Sequence[BatchItem[Any]]):
    """The started items of one finished map in index order, read from the store a page at a time
    (see the module docstring)."""

    def __init__(self, store: RecordStore, execution_id: str, path: tuple[int, ...], item_serdes: Any, *,
                 inputs: int, total: int, started: Sequence[int]) -> None:
        self._store = _own_handle(store)
        if isinstance(self._store, Store) and self._store is not store:
            # Not closed in the finalizer itself: it may run inside the store's own locked code.
            weakref.finalize(self, _to_close.append, self._store)
        self._key, self._op_id, self._execution_id = op_key(execution_id, path), path_str(path), execution_id
        self._serdes, self._inputs, self._total = item_serdes, inputs, total
        self._started = sorted(started)
        self._started_set = frozenset(started)
        self._page_size = PAGE
        self._page: tuple[int, list[BatchItem[Any]]] | None = None  # the last page read, by its first index
        self._directory: list[int] | None = None  # positions where each page starts (maps with gaps)

    def __len__(self) -> int:
        return self._total

    def __repr__(self) -> str:
        return (f"<{self._total:,} items of map {self._op_id!r} of execution {self._execution_id!r}, "
                "read from the store>")

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, (list(self),))

    def __eq__(self, other: object) -> bool:
        if other is self:
            return True
        if not isinstance(other, Sequence) or isinstance(other, str | bytes) or len(other) != self._total:
            return False
        return all(a == b for a, b in zip(self, other, strict=True))

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = None  # type: ignore[assignment]  # as a list's

    def __iter__(self) -> Iterator[BatchItem[Any]]:
        count = 0
        for first in range(0, self._inputs, self._page_size):
            items = self._read(first)
            count += len(items)
            yield from items
        if count != self._total:
            raise self._changed(f"it holds {count:,} of the {self._total:,} items the map recorded")

    @overload
    def __getitem__(self, position: int) -> BatchItem[Any]: ...

    @overload
    def __getitem__(self, position: slice) -> list[BatchItem[Any]]: ...

    def __getitem__(self, position: int | slice) -> BatchItem[Any] | list[BatchItem[Any]]:
        if isinstance(position, slice):
            return [self._at(p) for p in range(*position.indices(self._total))]
        index = position.__index__()
        if index < 0:
            index += self._total
        if not 0 <= index < self._total:
            raise IndexError(f"BatchResult index {position} out of range for {self._total:,} items")
        return self._at(index)

    def _at(self, position: int) -> BatchItem[Any]:
        if self._total == self._inputs:  # every item started: positions are indexes
            first = position - position % self._page_size
            items = self._cached(first)
            expected = min(self._page_size, self._inputs - first)
            if len(items) != expected:
                raise self._changed(f"items {first:,} to {first + expected - 1:,} hold {len(items):,} records")
            return items[position - first]
        directory = self._directory_of_pages()
        page = bisect.bisect_right(directory, position) - 1
        items = self._cached(page * self._page_size)
        offset = position - directory[page]
        if offset >= len(items):
            raise self._changed(f"page {page} holds {len(items):,} items, not {offset + 1:,} or more")
        return items[offset]

    def _cached(self, first: int) -> list[BatchItem[Any]]:
        if self._page is None or self._page[0] != first:
            self._page = (first, self._read(first))
        return self._page[1]

    def _directory_of_pages(self) -> list[int]:
        if self._directory is None:
            starts, position = [], 0
            for first in range(0, self._inputs, self._page_size):
                starts.append(position)
                position += len(self._read(first))
            self._directory = starts
        return self._directory

    def _read(self, first: int) -> list[BatchItem[Any]]:
        """The items whose index is in ``[first, first + page size)``, STARTED ones included."""
        _close_released()
        stop = min(first + self._page_size, self._inputs)
        items: list[BatchItem[Any]] = []
        with paused():
            for indexes, records in record_batches(self._store, self._key, self._op_id, first, stop):
                items += batch_items(indexes, records, self._started_set, self._serdes, self._op_id,
                                     self._execution_id)
        lo, hi = bisect.bisect_left(self._started, first), bisect.bisect_left(self._started, stop)
        if lo < hi:
            items += [BatchItem(index, _STARTED) for index in self._started[lo:hi]]
            items.sort(key=_index_of)
        return items

    def _changed(self, what: str) -> StoreError:
        return StoreError(
            f"The items of map '{self._op_id}' of execution '{self._execution_id}' changed in the store "
            f"since its BatchResult was made: {what}. The execution was removed or the map run again; "
            "run the handler again to get its current result.")


def _index_of(item: BatchItem[Any]) -> int:
    return item.index


#: Handles of results that were collected, closed by the next result made or read (a finalizer
#: runs wherever the collector does, perhaps inside the store's own locked code: it cannot close).
_to_close: list[Store] = []


def _close_released() -> None:
    while _to_close:
        _to_close.pop().close()


def _own_handle(store: RecordStore) -> RecordStore:
    """A handle of the result's own on a store on disk (released after the result is collected),
    so that closing the handle the run used does not close the store under the result."""
    _close_released()
    if not isinstance(store, Store):
        return store  # records in memory: referenced, so they live as long as the result
    return Store.open(store.path, readonly=True)


def stored_result(store: RecordStore, execution_id: str, path: tuple[int, ...], item_serdes: Any, *,
                  inputs: int, reason: CompletionReason, started: Sequence[int], succeeded: int,
                  failed: int) -> BatchResult[Any]:
    """The BatchResult of a finished map whose items are read from the store on demand."""
    total = succeeded + failed + len(started)
    items = StoredItems(store, execution_id, path, item_serdes, inputs=inputs, total=total, started=started)
    return BatchResult(items, reason, counts=(succeeded, failed, len(started)))
