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
        for timing in reader.slowest("my-execution", "1", 10):  # the 10 longest-running items
            print(timing.index, timing.duration, timing.pid)
        records = reader.read_execution("my-execution")     # every record, in memory, store closed after

A damaged store is copied into a new one by ``salvage(damaged_dir, new_dir)`` (the ``durablemap
salvage`` command): every record it can still read, the damaged store only read. It returns a
``SalvageReport`` (``complete``, ``saved``, ``lines()``, ``to_json()``); a job run on the new store
runs again only what was lost.

``rebuild_batch_result`` does the same as ``batch_result`` for any records behind the store
interface (what ``durablemap.testing`` reads an execution into).
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

from durablemap._batch import BatchItemStatus, BatchResult
from durablemap._errors import ErrorObject, SerDesError, StoreError
from durablemap._map import replay_batch
from durablemap._records import (
    BATCH_SUB_TYPES,
    Record,
    Status,
    as_record,
    decode_raw,
    decode_record,
    fields_meta,
    is_compact,
    item_outcome,
    op_key,
    path_of,
)
from durablemap._salvage import SalvageReport, salvage
from durablemap._store import Store, execution_prefix, parse_path, path_str
from durablemap._store._interface import MemoryRecords, RecordStore
from durablemap._timings import ItemTime, item_times, slowest
from durablemap.serdes import SerDes, deserialize_value

__all__ = [
    "Execution", "ExecutionRecords", "ItemTime", "MapItem", "Operation", "SalvageReport", "StoreReader",
    "rebuild_batch_result", "salvage",
]


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
    #: The error a FAILED execution ended with (its ``to_dict()`` is what the store holds).
    error: ErrorObject | None = None
    #: The process that ran it last.
    pid: int | None = None
    #: True when its last run was stopped by Ctrl-C (STARTED and not running: a kill, otherwise).
    interrupted: bool = False

    @property
    def state(self) -> str:
        """What ``durablemap ls`` shows: SUCCEEDED, FAILED, RUNNING (a live process runs it),
        INTERRUPTED (stopped by Ctrl-C) or STOPPED (killed)."""
        if self.status in (Status.SUCCEEDED, Status.FAILED):
            return self.status
        if self.running:
            return "RUNNING"
        return "INTERRUPTED" if self.interrupted else "STOPPED"

    @property
    def duration(self) -> float | None:
        """Seconds from the last run's start to its end, or None while unfinished."""
        if self.started is None or self.ended is None or self.ended < self.started:
            return None
        return self.ended - self.started


@dataclass(frozen=True)
class Operation:
    """One recorded operation: its id (``"1/3/2"``; ``""`` is the execution's own record), what it
    is, and how it ended. ``error`` is the recorded error: a FAILED operation's, or the last failed
    attempt of a step waiting to retry (PENDING)."""

    id: str
    kind: str
    sub_type: str | None
    name: str | None
    status: str
    error: ErrorObject | None
    meta: dict[str, Any]
    #: The recorded result as its serdes wrote it (None when there is none): see :meth:`result`.
    payload: bytes | str | None = field(default=None, repr=False)
    execution_id: str = field(default="", repr=False)

    @property
    def path(self) -> tuple[int, ...]:
        """The id as a tuple of indexes: ``"1/3/2"`` -> ``(1, 3, 2)``."""
        return parse_path(self.id)

    @property
    def finished(self) -> bool:
        """True when the operation SUCCEEDED or FAILED."""
        return self.status in (Status.SUCCEEDED, Status.FAILED)

    def result(self, serdes: SerDes[Any] | None = None) -> Any:
        """The recorded result decoded with ``serdes`` (the default serdes when None); None when
        the record holds none (a FAILED or unfinished operation, a wait, a map: see
        :meth:`StoreReader.batch_result`). Raises ``SerDesError`` when ``serdes`` cannot read it."""
        if self.payload is None:
            return None
        return deserialize_value(serdes, self.payload, self.id, self.execution_id)


@dataclass(frozen=True)
class MapItem:
    """One recorded item of a map (or parallel). ``result`` is decoded with the serdes given to
    :meth:`StoreReader.items` (the default serdes when none); STARTED items have no result yet."""

    index: int
    status: BatchItemStatus
    result: Any
    error: ErrorObject | None
    meta: dict[str, Any]
    #: The item's name when the map gave it one (``MapConfig.item_namer``), else None.
    name: str | None = None


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


#: How many items ``StoreReader.items`` reads between two releases of the store's mapped pages.
_RELEASE_EVERY = 65_536


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
            try:
                found.append(self.execution(key.decode(errors="replace")))
            except StoreError:
                continue  # removed between the index scan and the read
        return sorted(found, key=lambda e: e.id)

    def execution(self, execution_id: str) -> Execution:
        """The execution ``execution_id``; an unknown id raises StoreError."""
        raw = self._store.get(op_key(execution_id, ()))
        if raw is None:
            raise StoreError(f"no execution {execution_id!r} in store {self.path}; `durablemap ls` lists them")
        record = decode_record(raw, f"execution {execution_id!r}")
        return Execution(execution_id, record.get("handler") or record.name, str(record.status),
                         self._store.lock_is_held(execution_id), record.get("created"), record.get("started"),
                         record.get("ended"), int(record.get("runs", 1)), _error(record), record.get("pid"),
                         bool(record.get("interrupted", False)))

    def operation(self, execution_id: str, operation_id: str) -> Operation:
        """The operation ``operation_id`` (``""``: the execution's own record, its payload the
        handler's result); one that was never recorded raises StoreError."""
        raw = self._store.get(op_key(execution_id, parse_path(operation_id)))
        if raw is None:
            raise StoreError(f"execution {execution_id!r} has no operation {operation_id!r}; "
                             f"`durablemap show {execution_id}` lists its operations")
        return _operation(execution_id, operation_id, decode_record(raw, f"operation {operation_id!r}"))

    def operations(self, execution_id: str) -> Iterator[Operation]:
        """Every operation of the execution (items, and operations inside them, included), in id
        order, streamed from one consistent snapshot."""
        prefix = execution_prefix(execution_id)
        for key, raw in self._store.scan(prefix):
            path = path_of(key, len(prefix))
            if path:
                op_id = path_str(path)
                yield _operation(execution_id, op_id, decode_record(raw, f"operation {op_id!r} of {execution_id!r}"))

    def children(self, execution_id: str, operation_id: str = "") -> Generator[Operation, None, None]:
        """The operations recorded directly under ``operation_id`` (``""``: the handler's top-level
        operations; a map: its items), in index order, streamed."""
        prefix = f"{operation_id}/" if operation_id else ""
        for index, _key, raw in self._store.scan_children(op_key(execution_id, parse_path(operation_id))):
            op_id = f"{prefix}{index}"
            yield _operation(execution_id, op_id, decode_record(raw, f"operation {op_id!r} of {execution_id!r}"))

    def items(self, execution_id: str, operation_id: str, serdes: SerDes[Any] | None = None, *,
              raw_custom: bool = False) -> Iterator[MapItem]:
        """The recorded items of map ``operation_id``, in index order, one at a time, in memory
        that does not grow with the map (the store's pages read are released as it goes).

        With ``raw_custom=True``, a result that ``serdes`` cannot read (written by a custom serdes)
        comes as its recorded text, or as the hex of its bytes, instead of raising ``SerDesError``:
        what a reader that must not run user code shows."""
        for n, (index, _key, raw) in enumerate(self._store.scan_children(op_key(execution_id,
                                                                                 parse_path(operation_id)))):
            if n % _RELEASE_EVERY == _RELEASE_EVERY - 1:
                self._store.release_pages()  # the store's pages read so far leave this process's RSS
            fields = decode_raw(raw)
            meta = fields_meta(fields)
            meta = {"fp": meta} if meta is not None and not isinstance(meta, dict) else dict(meta or {})
            try:
                outcome = item_outcome(fields, serdes, index, operation_id, execution_id)
            except SerDesError:
                if not raw_custom:
                    raise
                payload = as_record(fields).payload
                text = payload if isinstance(payload, str) else (payload or b"").hex()
                outcome = BatchItemStatus.SUCCEEDED, text, None
            name = None if is_compact(fields) else as_record(fields).name
            if outcome is None:
                yield MapItem(index, BatchItemStatus.STARTED, None, None, meta, name)
            else:
                yield MapItem(index, *outcome, meta, name)

    def item_times(self, execution_id: str, operation_id: str) -> dict[int, ItemTime]:
        """When each timed item of map ``operation_id`` ran (start, duration, worker pid, attempt),
        by index; items of a map recorded before timings existed have none."""
        path = parse_path(operation_id)
        return item_times(self._store, execution_id, path, self._timeline(execution_id, operation_id))

    def slowest(self, execution_id: str, operation_id: str, n: int) -> list[ItemTime]:
        """The ``n`` longest-running items of map ``operation_id``, longest first (one pass over
        the map, ``n`` items kept in memory)."""
        path = parse_path(operation_id)
        return slowest(self._store, execution_id, path, n, self._timeline(execution_id, operation_id))

    def _timeline(self, execution_id: str, operation_id: str) -> list[list[Any]]:
        raw = self._store.get(op_key(execution_id, parse_path(operation_id)))
        return list(decode_record(raw).get("timeline") or []) if raw is not None else []

    def batch_result(self, execution_id: str, operation_id: str, serdes: SerDes[Any] | None = None,
                     item_serdes: SerDes[Any] | None = None) -> BatchResult[Any]:
        """The BatchResult a replay of the finished map ``operation_id`` returns."""
        return rebuild_batch_result(self._store, execution_id, operation_id, serdes=serdes, item_serdes=item_serdes)

    def report(self, execution_id: str, title: str | None = None) -> str:
        """The self-contained HTML page ``durablemap report ID`` writes (items over time, chunks per
        worker, durations, memory, failures, configuration), aggregated: a map of millions of items
        gives a page of the same size. Needs ``durablemap[report]`` (Bokeh): without it, ImportError
        names the extra."""
        from durablemap._report import render_report
        return render_report(self._store, self.execution(execution_id), title)

    def read_execution(self, execution_id: str) -> ExecutionRecords:
        """Every record of ``execution_id``, read into memory from one consistent snapshot (for an
        execution small enough to hold: a test's, say); it stays readable once the store is closed
        or removed."""
        return ExecutionRecords(execution_id, self._store.scan(op_key(execution_id, ())))


class ExecutionRecords:
    """Every record of one execution, in memory (see :meth:`StoreReader.read_execution`):
    operations decoded when asked for."""

    def __init__(self, execution_id: str, pairs: Iterator[tuple[bytes, bytes]]) -> None:
        self.execution_id = execution_id
        self._records = MemoryRecords(pairs)
        self._prefix = execution_prefix(execution_id)

    def operation(self, operation_id: str) -> Operation:
        """The operation ``operation_id`` (``""``: the execution's own record); StoreError if none."""
        raw = self._records.get(op_key(self.execution_id, parse_path(operation_id)))
        if raw is None:
            raise StoreError(f"execution {self.execution_id!r} has no operation {operation_id!r}")
        return _operation(self.execution_id, operation_id, decode_record(raw, f"operation {operation_id!r}"))

    def operations(self) -> Iterator[Operation]:
        """Every operation but the execution's own record, in id order (parents before children)."""
        for key, raw in self._records.scan(self._prefix):
            path = path_of(key, len(self._prefix))
            if path:
                op_id = path_str(path)
                yield _operation(self.execution_id, op_id, decode_record(raw, f"operation {op_id!r}"))

    def batch_result(self, operation_id: str, serdes: SerDes[Any] | None = None,
                     item_serdes: SerDes[Any] | None = None) -> BatchResult[Any]:
        """The BatchResult a replay of the finished map ``operation_id`` returns."""
        return rebuild_batch_result(self._records, self.execution_id, operation_id, serdes=serdes,
                                    item_serdes=item_serdes)


def _error(record: Record) -> ErrorObject | None:
    return ErrorObject.from_dict(record.error) if record.error else None


def _operation(execution_id: str, op_id: str, record: Record) -> Operation:
    return Operation(op_id, str(record.kind), record.sub_type, record.name, str(record.status), _error(record),
                     dict(record.meta or {}), record.payload, execution_id)
