"""Reading a store from Python (CONTRACT section 11): read-only, no lock taken, safe while another
process writes the store, and streamed, so a map of millions of items is never held in memory.

    with StoreReader.open("./.durablemap") as reader:
        for execution in reader.executions():
            print(execution.id, execution.status)
        for op in reader.operations("my-execution"):
            print(op.id, op.sub_type, op.status)
        for item in reader.items("my-execution", "1"):      # map operation "1", in index order
            print(item.index, item.status, item.result, item.error)
        result = reader.batch_result("my-execution", "1")   # the BatchResult a replay returns

``rebuild_batch_result`` does the last for any records behind the store interface (what
``durablemap.testing`` reads an execution into).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from durablemap._batch import BatchItemStatus, BatchResult
from durablemap._errors import ErrorObject, StoreError
from durablemap._map import replay_batch
from durablemap._records import (
    BATCH_SUB_TYPES,
    Record,
    Status,
    decode_record,
    item_outcome,
    op_key,
    path_of,
)
from durablemap._records import decode_raw as _decode_raw
from durablemap._store import Store, execution_prefix, parse_path, path_str
from durablemap._store._interface import RecordStore
from durablemap.serdes import SerDes

__all__ = ["Execution", "MapItem", "Operation", "StoreReader", "rebuild_batch_result"]


@dataclass(frozen=True)
class Execution:
    """One execution in a store. ``status`` is SUCCEEDED, FAILED, or STARTED (running, or stopped
    by a kill or an interrupt: ``running`` tells which)."""

    id: str
    handler: str | None
    status: str
    running: bool
    created: float | None
    started: float | None
    ended: float | None
    runs: int


@dataclass(frozen=True)
class Operation:
    """One recorded operation: its id (``"1/3/2"``), what it is, and how it ended."""

    id: str
    kind: str
    sub_type: str | None
    name: str | None
    status: str
    error: ErrorObject | None
    meta: dict[str, Any]


@dataclass(frozen=True)
class MapItem:
    """One recorded item of a map (or parallel). ``result`` is decoded with the serdes given to
    :meth:`StoreReader.items` (the default serdes when none); STARTED items have no result yet."""

    index: int
    status: BatchItemStatus
    result: Any
    error: ErrorObject | None
    meta: dict[str, Any]


class _Source:
    """Records and the execution they belong to, as ``replay_batch`` reads them."""

    def __init__(self, records: RecordStore, execution_id: str) -> None:
        self.records, self.execution_id = records, execution_id

    def store(self) -> RecordStore:
        return self.records


def rebuild_batch_result(records: RecordStore, execution_id: str, operation_id: str, *,
                         serdes: SerDes[Any] | None = None, item_serdes: SerDes[Any] | None = None) -> BatchResult[Any]:
    """The BatchResult of the finished map ``operation_id`` of ``execution_id``, as a replay
    returns it, rebuilt from ``records`` (a store, or records read into memory). Raises
    ``StoreError`` when there is no such finished map."""
    path = parse_path(operation_id)
    raw = records.get(op_key(execution_id, path))
    record = None if raw is None else decode_record(raw, f"operation {operation_id!r} of {execution_id!r}")
    if record is None or record.sub_type not in BATCH_SUB_TYPES or not record.finished:
        raise StoreError(f"execution {execution_id!r} has no finished map or parallel at operation "
                         f"{operation_id!r}; `durablemap show {execution_id}` lists its operations")
    return replay_batch(_Source(records, execution_id), path, record, serdes, item_serdes or serdes)


class StoreReader:
    """A read-only view of a store (see the module docstring). Use :meth:`open`."""

    def __init__(self, store: Store) -> None:
        self._store = store

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> StoreReader:
        """Open the store at ``path`` read-only; a missing or foreign directory raises StoreError."""
        if not os.path.isdir(path):
            raise StoreError(f"no durablemap store at {os.fspath(path)}; pass the directory a handler ran with")
        return cls(Store.open(path, readonly=True))

    @property
    def path(self) -> str:
        """The store's directory."""
        return self._store.path

    def close(self) -> None:
        """Close the store."""
        self._store.close()

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def executions(self) -> list[Execution]:
        """Every execution in the store, by id."""
        found = []
        for key, _raw in self._store.index_scan("executions"):
            execution_id = key.decode(errors="replace")
            found.append(self.execution(execution_id))
        return sorted(found, key=lambda e: e.id)

    def execution(self, execution_id: str) -> Execution:
        """The execution ``execution_id``; an unknown id raises StoreError."""
        raw = self._store.get(op_key(execution_id, ()))
        if raw is None:
            raise StoreError(f"no execution {execution_id!r} in store {self.path}")
        record = decode_record(raw, f"execution {execution_id!r}")
        return Execution(execution_id, record.get("handler") or record.name, str(record.status),
                         self._store.lock_is_held(execution_id), record.get("created"), record.get("started"),
                         record.get("ended"), int(record.get("runs", 1)))

    def operations(self, execution_id: str) -> Iterator[Operation]:
        """Every operation of the execution (items, and operations inside them, included), in id
        order, streamed from one consistent snapshot."""
        prefix = execution_prefix(execution_id)
        for key, raw in self._store.scan(prefix):
            path = path_of(key, len(prefix))
            if path:
                yield _operation(path, decode_record(raw, f"operation {path_str(path)!r} of {execution_id!r}"))

    def items(self, execution_id: str, operation_id: str, serdes: SerDes[Any] | None = None) -> Iterator[MapItem]:
        """The recorded items of map ``operation_id``, in index order, one at a time."""
        map_key = op_key(execution_id, parse_path(operation_id))
        for index, _key, raw in self._store.scan_children(map_key):
            fields = _decode_raw(raw)
            record = decode_record(raw, f"item {index} of map {operation_id!r}")
            outcome = item_outcome(fields, serdes, index, operation_id, execution_id)
            if outcome is None:
                yield MapItem(index, BatchItemStatus.STARTED, None, None, dict(record.meta or {}))
            else:
                yield MapItem(index, *outcome, dict(record.meta or {}))

    def batch_result(self, execution_id: str, operation_id: str, serdes: SerDes[Any] | None = None,
                     item_serdes: SerDes[Any] | None = None) -> BatchResult[Any]:
        """The BatchResult a replay of the finished map ``operation_id`` returns."""
        return rebuild_batch_result(self._store, execution_id, operation_id, serdes=serdes, item_serdes=item_serdes)


def _operation(path: tuple[int, ...], record: Record) -> Operation:
    error = ErrorObject.from_dict(record.error) if record.error and record.status == Status.FAILED else None
    return Operation(path_str(path), str(record.kind), record.sub_type, record.name, str(record.status), error,
                     dict(record.meta or {}))
