"""The Dask executor: a map's items run on a Dask distributed cluster; the store stays here.

    coordinator (this process, owns the LMDB store)             Dask workers (anywhere)
    ───────────────────────────────────────────────             ───────────────────────
    publish:  scatter MapSpec (broadcast, once per map) ──────> spec in worker memory
              read the records earlier runs left under
              unfinished items (their steps, waits...)
    submit:   one Dask task per chunk, with the prior    ──────> run_chunk on a Journal:
              records of the chunk's items                       operations inside items read
                                                                 the prior records and write
    callback: commit the journal's writes (one LMDB     <──────  to the journal, not to a store
              transaction), then hand the ChunkResult           (ChunkResult, journal writes)
              to the coordinator, which commits the items

What is durable on Dask: every item's outcome, as on loky. Operations inside an item (steps, waits,
child contexts, nested maps) record into a per-chunk journal that travels back with the chunk's
results; the coordinator commits it before the items' records. So a step's result is durable once
its chunk is back: when a worker dies or the coordinator is killed mid-chunk, the items of that
chunk run again from their last step committed earlier (never from a step that only reached the
lost worker's memory). Workers never open the store, so the cluster needs no shared filesystem.

A worker lost by Dask is retried by the scheduler itself (``distributed.scheduler.allowed-failures``
times); when Dask gives up it raises ``KilledWorker``, which :meth:`DaskExecutor.is_broken` reports
so the coordinator runs the chunk's items again and counts the crash.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, fields
from typing import Any, cast

import cloudpickle
from distributed import Client, KilledWorker

from durablemap._errors import StoreError, ValidationError
from durablemap._records import Status, decode_record
from durablemap._state import ExecutionState
from durablemap._store import Store, op_key
from durablemap._store._keys import COMPONENT_SIZE
from durablemap._worker import ChunkResult, MapSpec, run_chunk
from durablemap.executors._loky import describe_unpicklable

__all__ = ["DaskExecutor"]

#: Journal operations: ("put", key, value) or ("delete", prefix, b"").
Op = tuple[str, bytes, bytes]

_local = threading.local()


class _Journal:
    """A worker-side stand-in for the store during one chunk: reads see the records the
    coordinator sent plus this chunk's own writes; writes are kept, in order, to travel back."""

    def __init__(self, records: Iterable[tuple[bytes, bytes]]) -> None:
        self.records = dict(records)
        self.ops: list[Op] = []

    def get(self, key: bytes) -> bytes | None:
        return self.records.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self.records[key] = value
        self.ops.append(("put", key, value))

    def put_many(self, pairs: Iterable[tuple[bytes, bytes]]) -> None:
        for key, value in pairs:
            self.put(key, value)

    def delete_prefix(self, prefix: bytes) -> int:
        doomed = [key for key in self.records if key.startswith(prefix)]
        for key in doomed:
            del self.records[key]
        self.ops.append(("delete", prefix, b""))
        return len(doomed)

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        for key in sorted(k for k in self.records if k.startswith(prefix)):
            yield key, self.records[key]

    def scan_children(self, prefix_key: bytes) -> Iterator[tuple[int, bytes, bytes]]:
        child_len = len(prefix_key) + COMPONENT_SIZE
        for key, value in self.scan(prefix_key):
            if len(key) == child_len:
                yield int.from_bytes(key[len(prefix_key):], "big"), key, value


class RemoteState(ExecutionState):
    """The execution state of items running on a Dask worker: operations inside them record into
    the chunk's journal, which travels back to the coordinator, instead of opening the store."""

    def store(self) -> Store:
        """The journal of the chunk running on this thread."""
        journal = getattr(_local, "journal", None)
        if journal is None:
            raise StoreError("A durable operation ran on a Dask worker outside a map item's chunk; "
                             "operations inside items record through their chunk's journal only.")
        return cast(Store, journal)


def run_remote_chunk(token: int, payload: bytes, indexes: Sequence[int],
                     prior: list[tuple[bytes, bytes]]) -> tuple[ChunkResult, list[Op]]:
    """The Dask task: run a chunk of items against a journal seeded with ``prior`` records; return
    the items' results and the journal's writes. ``payload`` is the cloudpickled spec, unpickled
    once per worker process."""
    journal = _Journal(prior)
    _local.journal = journal
    try:
        result = run_chunk(_load_spec(token, payload), indexes)
    finally:
        _local.journal = None
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


@dataclass(eq=False)  # hashed by identity: the executor keeps a set of them
class _Published:
    spec: MapSpec
    remote: Any  # the scattered spec's Dask future
    prefix: bytes  # the map's record key
    prior: dict[int, dict[bytes, bytes]]  # records under unfinished items, by index
    payload: bytes = b""  # the pickled spec, to scatter again if every copy on the cluster is lost


class DaskExecutor:
    """Runs a map's items on a Dask cluster, one Dask task per chunk; the store stays with the
    coordinator (see the module docstring for what is durable).

    ``client_or_address`` is a ``distributed.Client``, or a scheduler address
    (``"tcp://host:8786"``) for which a client is made and closed by :meth:`close`. The workers need
    durablemap and whatever the map's function imports installed.
    """

    has_slots = False
    chunk_seconds = 0.25  # a Dask task costs a scheduler round trip: chunks of about this much work
    shares_store = False  # items' records travel back; workers need no access to the store
    client: Any  # distributed.Client (typed Any: distributed's annotations are partial)

    def __init__(self, client_or_address: Client | str) -> None:
        if isinstance(client_or_address, Client):
            self.client, self._owns_client = client_or_address, False
        elif isinstance(client_or_address, str):
            self.client, self._owns_client = Client(  # type: ignore[no-untyped-call]
                client_or_address, set_as_default=False), True
        else:
            raise ValidationError("DaskExecutor takes a distributed.Client or a scheduler address such as "
                                  f"'tcp://127.0.0.1:8786', got {type(client_or_address).__name__}.")
        self._lock = threading.Lock()
        self._outstanding: set[Any] = set()
        self._published: set[_Published] = set()
        self.workers = self._count_threads()

    def _count_threads(self) -> int:
        return max(1, int(sum(self.client.nthreads().values())))

    def close(self) -> None:
        """Close the client if this executor made it (the cluster is left alone)."""
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def publish(self, spec: MapSpec) -> Any:
        """Ship the spec to every worker once; unpicklable parts raise ValidationError."""
        state = spec.state
        remote_spec = MapSpec(**{f.name: getattr(spec, f.name) for f in fields(MapSpec)})
        remote_spec.state = RemoteState(**{f.name: getattr(state, f.name) for f in fields(ExecutionState)})
        remote_spec.timeout_in_worker = True  # no slots here: items keep their own time on the worker
        try:
            payload = cloudpickle.dumps(remote_spec)
        except Exception as exc:
            raise ValidationError(describe_unpicklable(spec, exc)) from None
        self.workers = self._count_threads()
        prefix = op_key(state.execution_id, spec.path)
        prior = _read_unfinished(Store.for_process(state.store_path), prefix, state.retry_failed)
        remote = self.client.scatter(payload, broadcast=True, hash=False)
        ref = _Published(spec, remote, prefix, prior, payload)
        self._published.add(ref)
        return ref

    def unpublish(self, ref: Any) -> None:
        """Let Dask forget the spec."""
        self._published.discard(ref)
        ref.remote.release()

    def submit(self, ref: Any, indexes: Sequence[int]) -> Future[ChunkResult]:
        """Run the chunk as one Dask task; its future settles once its journal is committed."""
        prior = [pair for index in indexes for pair in ref.prior.get(index, {}).items()]
        remote = self.client.submit(run_remote_chunk, ref.spec.token, ref.remote, list(indexes), prior,
                                    pure=False)
        future: Future[ChunkResult] = Future()
        with self._lock:
            self._outstanding.add(remote)
        future.add_done_callback(lambda f: remote.cancel() if f.cancelled() else None)
        remote.add_done_callback(lambda r: self._settle(ref, r, future))
        return future

    def _settle(self, ref: _Published, remote: Any, future: Future[ChunkResult]) -> None:
        with self._lock:
            self._outstanding.discard(remote)
        if future.cancelled():
            return  # the coordinator gave up on this chunk: its results (and journal) are dropped
        try:
            if remote.cancelled():
                raise CancelledError(f"Dask task {remote.key} was cancelled")
            result, ops = remote.result()
            _commit(Store.for_process(ref.spec.state.store_path), ops, ref, result)
        except BaseException as exc:
            if future.set_running_or_notify_cancel():
                future.set_exception(exc)
            return
        if future.set_running_or_notify_cancel():
            future.set_result(result)

    def is_broken(self, error: BaseException) -> bool:
        """Dask gave up on a chunk whose workers kept dying, or lost the worker holding it."""
        return isinstance(error, KilledWorker | CancelledError) or type(error).__name__ in {
            "CommClosedError", "FutureCancelledError"}

    def names_culprit(self, error: BaseException) -> bool:
        """Whether a chunk lost with ``error`` was itself running when its worker died (KilledWorker),
        rather than cancelled along with it."""
        return isinstance(error, KilledWorker)

    def restart(self) -> None:
        """Dask's nannies replace dead workers; a spec whose every scattered copy died with them
        (its dependent tasks are then cancelled) is scattered again."""
        for ref in list(self._published):
            if ref.remote.status != "finished":
                ref.remote = self.client.scatter(ref.payload, broadcast=True, hash=False)

    def stop_running(self) -> None:
        """Cancel the chunks still queued or running (a running task's result is dropped)."""
        with self._lock:
            outstanding, self._outstanding = list(self._outstanding), set()
        if outstanding:
            self.client.cancel(outstanding)

    def worker_pids(self) -> list[int]:
        """The worker pids when the cluster runs on this machine, else []."""
        cluster = getattr(self.client, "cluster", None)
        if cluster is None or type(cluster).__name__ != "LocalCluster":
            return []
        return sorted(self.client.run(os.getpid).values())


def _read_unfinished(store: Store, prefix: bytes, retry_failed: bool) -> dict[int, dict[bytes, bytes]]:
    """The records under items that will run again (steps, waits... of an interrupted earlier run),
    by item index; items already finished are skipped, so this is empty for a fresh map."""
    item_len = len(prefix) + COMPONENT_SIZE
    prior: dict[int, dict[bytes, bytes]] = {}
    skip = -1
    for key, value in store.scan(prefix):
        if len(key) < item_len:
            continue
        index = int.from_bytes(key[len(prefix):item_len], "big")
        if len(key) == item_len:
            status = decode_record(value).status
            finished = status == Status.SUCCEEDED or (status == Status.FAILED and not retry_failed)
            skip = index if finished else -1
        elif index != skip:
            prior.setdefault(index, {})[key] = value
    return prior


def _commit(store: Store, ops: list[Op], ref: _Published, result: ChunkResult) -> None:
    """Apply a chunk's journal to the store; keep what it wrote under items that did not finish
    (they may run again in this map)."""
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
    finished = set(result.indexes)
    item_len = len(ref.prefix) + COMPONENT_SIZE
    for kind, key, value in ops:
        if len(key) < item_len or not key.startswith(ref.prefix):
            continue
        index = int.from_bytes(key[len(ref.prefix):item_len], "big")
        if index in finished:
            ref.prior.pop(index, None)
            continue
        records = ref.prior.setdefault(index, {})
        if kind == "delete":
            for doomed in [k for k in records if k.startswith(key)]:
                del records[doomed]
        elif len(key) > item_len:
            records[key] = value
