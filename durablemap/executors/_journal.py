"""The journal of remote workers: how items run where the store is not (a Dask or Ray cluster).

    coordinator (owns the store)                                 remote worker
    ────────────────────────────                                 ─────────────
    RemoteMap.open: read the records earlier runs left under
      items that will run again (steps, waits, nested maps)
    RemoteMap.prior_of(chunk) ── spec payload, indexes, prior ──> run_remote_chunk: items run on a
                                                                   Journal seeded with the prior
                                                                   records; operations inside items
                                                                   read it and write to it
    RemoteMap.commit: apply the journal's writes to the    <───── (ChunkResult, journal writes)
      store, keep what unfinished items wrote for their re-run

An executor for another cluster is then a thin adapter: ship ``remote_payload(spec)`` once, run
``run_remote_chunk`` as a task per chunk with ``RemoteMap.prior_of(indexes)``, and call
``RemoteMap.commit`` with what the task returns before settling the chunk's future.

Large inputs do not travel in the spec (every worker would hold them all): a task then carries its
chunk's own items (``RemoteMap.items_of``), and the spec a sequence of the whole input for items
that read others (the Dask executor's fetches it from the cluster on the first such read); the
chunk's items see both as one read-only sequence (``ChunkInputs``).
"""

from __future__ import annotations

import operator
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import fields, replace
from typing import Any, cast, overload

import cloudpickle

from durablemap._errors import StoreError, ValidationError
from durablemap._records import Status, decode_record, item_index, op_key
from durablemap._state import ExecutionState
from durablemap._store import Store
from durablemap._store._interface import MemoryRecords, RecordStore
from durablemap._store._keys import COMPONENT_SIZE
from durablemap._worker import run_chunk
from durablemap.executors._base import ChunkResult, MapSpec
from durablemap.executors._loky import describe_unpicklable

__all__ = ["ChunkInputs", "Journal", "Op", "RemoteMap", "RemoteState", "remote_payload", "run_remote_chunk"]

#: Journal operations: ("put", key, value) or ("delete", prefix, b"").
Op = tuple[str, bytes, bytes]

# The journal of the chunk this code runs for: a context variable, so that the threads and tasks
# running several items of a chunk at once (copies of the chunk's context) record into it too.
_JOURNAL: ContextVar[Journal | None] = ContextVar("durablemap_journal", default=None)


class Journal(MemoryRecords):
    """A worker-side stand-in for the store during one chunk: reads see the records the
    coordinator sent plus this chunk's own writes; writes are kept, in order, to travel back."""

    def __init__(self, records: Iterable[tuple[bytes, bytes]] = ()) -> None:
        super().__init__(records)
        self.ops: list[Op] = []
        self._lock = threading.RLock()  # the items of a chunk may run on several threads at once

    def _keys(self) -> list[bytes]:
        with self._lock:
            return super()._keys()

    def put(self, key: bytes, value: bytes) -> None:
        """Keep the record, and the write to send back."""
        with self._lock:
            super().put(key, value)
            self.ops.append(("put", key, value))

    def delete_prefix(self, prefix: bytes) -> int:
        """Forget the records, and send the deletion back."""
        with self._lock:
            self.ops.append(("delete", prefix, b""))
            return super().delete_prefix(prefix)


class RemoteState(ExecutionState):
    """The execution state of items running on a remote worker: operations inside them record into
    the chunk's journal, which travels back to the coordinator, instead of opening the store."""

    def store(self) -> RecordStore:
        """The journal of the chunk running on this thread."""
        journal = _JOURNAL.get()
        if journal is None:
            raise StoreError("A durable operation ran on a remote worker outside a map item's chunk; "
                             "operations inside items record through their chunk's journal only.")
        return journal


def remote_payload(spec: MapSpec) -> bytes:
    """The pickled spec remote workers run: its state records into journals, and items keep their
    own time (no coordinator watches a remote worker's slot). Unpicklable parts raise ValidationError."""
    remote_spec = MapSpec(**{f.name: getattr(spec, f.name) for f in fields(MapSpec)})
    state = spec.state
    remote_spec.state = RemoteState(**{f.name: getattr(state, f.name) for f in fields(ExecutionState)})
    remote_spec.timeout_in_worker = True
    try:
        return cast(bytes, cloudpickle.dumps(remote_spec))
    except Exception as exc:
        raise ValidationError(describe_unpicklable(spec, exc)) from None


def run_remote_chunk(token: int, payload: bytes, indexes: Sequence[int],
                     prior: list[tuple[bytes, bytes]], concurrency: int = 1,
                     items: list[Any] | None = None) -> tuple[ChunkResult, list[Op]]:
    """The remote task: run a chunk of items (up to ``concurrency`` at once) against a journal
    seeded with ``prior`` records; return the items' results and the journal's writes. ``payload``
    is :func:`remote_payload`, unpickled once per worker process. ``items``: the inputs of the
    chunk's items, when the spec does not hold the inputs (see ``ChunkInputs``)."""
    journal = Journal(prior)
    reset = _JOURNAL.set(journal)
    try:
        spec = _load_spec(token, payload)
        if items is not None:
            spec = replace(spec, inputs=ChunkInputs(spec.inputs, indexes, items))
        result = run_chunk(spec, indexes, concurrency)
    finally:
        _JOURNAL.reset(reset)
    return result, journal.ops


_specs: OrderedDict[int, MapSpec] = OrderedDict()
_specs_lock = threading.Lock()
_SPEC_CACHE = 4


def _load_spec(token: int, payload: bytes) -> MapSpec:
    # The same cloudpickle as loky's spec file, so whatever runs on loky ships the same way here.
    with _specs_lock:
        spec = _specs.get(token)
        if spec is None:
            spec = cast(MapSpec, cloudpickle.loads(payload))
            _specs[token] = spec
            while len(_specs) > _SPEC_CACHE:
                _specs.popitem(last=False)
        return spec


class ChunkInputs(Sequence[Any]):
    """The inputs as a remote chunk's items see them: a read-only sequence of every input, whose
    items of the chunk (``items``, in the order of ``indexes``) came with the chunk's task, and
    whose others are read from ``rest`` (the whole input as the worker has it: see the module
    docstring). Negative indexes count from the end; a slice gives a list."""

    __slots__ = ("_by_index", "_first", "_items", "_rest")

    def __init__(self, rest: Sequence[Any], indexes: Sequence[int], items: list[Any]) -> None:
        self._rest, self._items = rest, items
        if len(indexes) != len(items):
            raise ValueError(f"a chunk of {len(indexes)} items came with {len(items)} inputs")
        run = isinstance(indexes, range) and indexes.step == 1
        self._first = indexes.start if isinstance(indexes, range) and run else 0
        self._by_index = None if run else dict(zip(indexes, items, strict=True))

    def __len__(self) -> int:
        return len(self._rest)

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        i = operator.index(index)
        n = len(self._rest)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"inputs index {index} out of range (the map has {n} inputs)")
        if self._by_index is None:
            if 0 <= i - self._first < len(self._items):
                return self._items[i - self._first]
        elif i in self._by_index:
            return self._by_index[i]
        return self._rest[i]


class RemoteMap:
    """The coordinator's side of one map run remotely: the records under its unfinished items (sent
    with their chunks) and the commit of what chunks send back."""

    def __init__(self, spec: MapSpec) -> None:
        self.spec = spec
        self.prefix = op_key(spec.state.execution_id, spec.path)
        self.prior = _read_unfinished(self.store(), self.prefix, spec.state.retry_failed)

    def store(self) -> Store:
        """The coordinator's store."""
        return Store.for_process(self.spec.state.store_path)

    def prior_of(self, indexes: Sequence[int]) -> list[tuple[bytes, bytes]]:
        """The records to seed the journal of a chunk of ``indexes`` with."""
        return [pair for index in indexes for pair in self.prior.get(index, {}).items()]

    def items_of(self, indexes: Sequence[int]) -> list[Any]:
        """The inputs of a chunk's items, to travel with its task (see ``ChunkInputs``)."""
        inputs = self.spec.inputs
        if type(indexes) is range and indexes.step == 1 and isinstance(inputs, list | tuple):
            return list(inputs[indexes.start:indexes.stop])
        return [inputs[i] for i in indexes]

    def commit(self, ops: list[Op], result: ChunkResult) -> None:
        """Apply a chunk's journal to the store; keep what it wrote under items that did not finish
        (they may run again in this map)."""
        _apply(self.store(), ops)
        finished = set(result.indexes)
        item_len = len(self.prefix) + COMPONENT_SIZE
        for kind, key, value in ops:
            if len(key) < item_len or not key.startswith(self.prefix):
                continue
            index = item_index(self.prefix, key)
            if index in finished:
                self.prior.pop(index, None)
                continue
            records = self.prior.setdefault(index, {})
            if kind == "delete":
                for doomed in [k for k in records if k.startswith(key)]:
                    del records[doomed]
            elif len(key) > item_len:
                records[key] = value


def _apply(store: RecordStore, ops: list[Op]) -> None:
    """Write a journal's operations to ``store`` in order, puts between deletions in one transaction."""
    puts: list[tuple[bytes, bytes]] = []
    for kind, key, value in ops:
        if kind == "delete":
            if puts:
                store.put_many(puts)
                puts = []
            store.delete_prefix(key)
        else:
            puts.append((key, value))
    if puts:
        store.put_many(puts)


def _read_unfinished(store: RecordStore, prefix: bytes, retry_failed: bool) -> dict[int, dict[bytes, bytes]]:
    """The records under items that will run again (steps, waits... of an interrupted earlier run),
    by item index; items already finished are skipped, so this is empty for a fresh map."""
    prior: dict[int, dict[bytes, bytes]] = {}
    for index, key, value in _under_unfinished(store.scan(prefix), prefix, retry_failed):
        prior.setdefault(index, {})[key] = value
    return prior


def _under_unfinished(records: Iterator[tuple[bytes, bytes]], prefix: bytes, retry_failed: bool,
                      ) -> Iterator[tuple[int, bytes, bytes]]:
    item_len = len(prefix) + COMPONENT_SIZE
    skip = -1
    for key, value in records:
        if len(key) < item_len:
            continue
        index = item_index(prefix, key)
        if len(key) == item_len:
            status = decode_record(value).status
            finished = status == Status.SUCCEEDED or (status == Status.FAILED and not retry_failed)
            skip = index if finished else -1
        elif index != skip:
            yield index, key, value
