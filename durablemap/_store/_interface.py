"""The one store interface: what operations, the coordinator and workers ask of wherever records live.

Three things implement it: the LMDB :class:`~durablemap._store.Store` (records on disk), the
journal of a remote worker (``executors._journal``: records that travel back with a chunk), and
:class:`MemoryRecords` itself, which also holds a snapshot of an execution read for
``durablemap.testing``. One contract test (``tests/test_store_interface.py``) runs against each.

Keys are the record keys of ``_keys`` (an execution prefix, then 4-byte big-endian components), so
"the direct children of a key" are the keys one component longer, in index order.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

from durablemap._errors import StoreError
from durablemap._store._keys import COMPONENT_SIZE

__all__ = ["MemoryRecords", "RecordStore"]


class RecordStore(Protocol):
    """Reads and writes operation records by key."""

    def get(self, key: bytes) -> bytes | None:
        """The record stored under ``key``, or None."""

    def put(self, key: bytes, value: bytes) -> None:
        """Store one record, durably before it returns (where the implementation is durable)."""

    def put_many(self, pairs: Iterable[tuple[bytes, bytes]]) -> None:
        """Store many records at once (one transaction where there are transactions)."""

    def put_columns(self, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        """Store ``values[i]`` under ``keys[i]`` at once; a length mismatch raises StoreError and
        writes nothing."""

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Every ``(key, value)`` whose key starts with ``prefix``, in key order."""

    def scan_children(self, prefix_key: bytes) -> Iterator[tuple[int, bytes, bytes]]:
        """The direct children of ``prefix_key`` as ``(index, key, value)``, in index order."""

    def children_columns(self, prefix_key: bytes, start: int = 0,
                         limit: int | None = None) -> tuple[list[int], list[bytes]]:
        """The direct children of ``prefix_key`` from index ``start`` on, at most ``limit`` of them
        (None: all): their indexes and their values, in index order."""

    def delete_prefix(self, prefix: bytes) -> int:
        """Delete every record whose key starts with ``prefix``; returns how many."""


class MemoryRecords:
    """Records in a dict, read in key order: the store of records that are not (or not yet) on disk."""

    def __init__(self, records: Iterable[tuple[bytes, bytes]] = ()) -> None:
        self.records: dict[bytes, bytes] = dict(records)
        self._sorted: list[bytes] | None = None

    def _keys(self) -> list[bytes]:
        if self._sorted is None:
            self._sorted = sorted(self.records)
        return self._sorted

    def get(self, key: bytes) -> bytes | None:
        """The record under ``key``, or None."""
        return self.records.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        """Keep one record."""
        if key not in self.records:
            self._sorted = None
        self.records[key] = value

    def put_many(self, pairs: Iterable[tuple[bytes, bytes]]) -> None:
        """Keep many records."""
        for key, value in pairs:
            self.put(key, value)

    def put_columns(self, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        """Keep ``values[i]`` under ``keys[i]``."""
        if len(keys) != len(values):
            raise StoreError(f"put_columns got {len(keys)} keys but {len(values)} values; pass one value per key")
        self.put_many(zip(keys, values, strict=True))

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """The records whose key starts with ``prefix``, in key order (a snapshot of the keys)."""
        keys = self._keys()
        for position in range(bisect.bisect_left(keys, prefix), len(keys)):
            key = keys[position]
            if not key.startswith(prefix):
                return
            value = self.records.get(key)
            if value is not None:
                yield key, value

    def scan_children(self, prefix_key: bytes) -> Iterator[tuple[int, bytes, bytes]]:
        """The direct children of ``prefix_key``, in index order."""
        child_len = len(prefix_key) + COMPONENT_SIZE
        for key, value in self.scan(prefix_key):
            if len(key) == child_len:
                yield int.from_bytes(key[len(prefix_key):], "big"), key, value

    def children_columns(self, prefix_key: bytes, start: int = 0,
                         limit: int | None = None) -> tuple[list[int], list[bytes]]:
        """The direct children of ``prefix_key`` from index ``start`` on (at most ``limit``), as
        two columns."""
        indexes: list[int] = []
        values: list[bytes] = []
        keys, base = self._keys(), len(prefix_key)
        child_len = base + COMPONENT_SIZE
        position = bisect.bisect_left(keys, prefix_key + start.to_bytes(COMPONENT_SIZE, "big"))
        while position < len(keys) and (limit is None or len(indexes) < limit):
            key = keys[position]
            position += 1
            if not key.startswith(prefix_key):
                break
            value = self.records.get(key)
            if len(key) == child_len and value is not None:
                indexes.append(int.from_bytes(key[base:], "big"))
                values.append(value)
        return indexes, values

    def delete_prefix(self, prefix: bytes) -> int:
        """Forget every record under ``prefix``."""
        doomed = [key for key, _ in self.scan(prefix)]
        for key in doomed:
            del self.records[key]
        self._sorted = None
        return len(doomed)
