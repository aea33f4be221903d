"""The Dask executor: a map's items run on a Dask distributed cluster; the store stays here.

    coordinator (this process, owns the LMDB store)             Dask workers (anywhere)
    ───────────────────────────────────────────────             ───────────────────────
    publish:  scatter MapSpec (broadcast, once per map) ──────> spec in worker memory
              large inputs: their file of items published
              on the scheduler (once), not in the spec
              read the records earlier runs left under
              unfinished items (their steps, waits...)
    submit:   one Dask task per chunk, with the prior    ──────> run_chunk on a Journal:
              records of the chunk's items (and their            operations inside items read
              inputs, when the spec holds none)
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

A large input (what loky would write to a file of items, see ``_itemfile``) is not in the spec, so
no worker holds all of it: each task carries the inputs of its chunk's items, and the map's file of
items is published on the scheduler as a dataset, once (a worker's death loses nothing of it, where
data scattered to that worker would be lost). A worker fetches the file only when one of its items
reads an input other than its own (``PublishedInputs``), and keeps it for the map.

A worker lost by Dask is retried by the scheduler itself (``distributed.scheduler.allowed-failures``
times); when Dask gives up it raises ``KilledWorker``, which :meth:`DaskExecutor.is_broken` reports
so the coordinator runs the chunk's items again and counts the crash.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, replace
from typing import Any

import distributed
from distributed import Client, KilledWorker

from durablemap._errors import ValidationError
from durablemap._faults import Death
from durablemap._slots import SlotState
from durablemap.executors._base import ChunkResult, MapSpec
from durablemap.executors._itemfile import ItemBuffer, ItemFile, UnpicklableItem
from durablemap.executors._journal import RemoteMap, remote_payload, run_remote_chunk
from durablemap.executors._loky import describe_unpicklable, shipped_inputs

__all__ = ["DaskExecutor", "PublishedInputs"]

_SCATTER_ATTEMPTS = 5  # scatters cut short by a worker leaving meanwhile, before giving up
_WORKERS_TIMEOUT = 300.0  # seconds to wait for a running worker (nannies restart dead ones)


class PublishedInputs(Sequence[Any]):
    """A large map's inputs on a Dask worker, for the items that read inputs other than their own
    (a chunk's own come with its task, see ``_journal.ChunkInputs``): the map's file of items,
    published on the scheduler as the dataset ``key`` (see the module docstring), fetched whole the
    first time an item on this worker reads such an input, and kept for the map."""

    def __init__(self, key: str, length: int) -> None:
        self.key, self._len = key, length
        self._items: ItemBuffer | None = None
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[Any, ...]:
        return (PublishedInputs, (self.key, self._len))

    def __repr__(self) -> str:
        return f"PublishedInputs({self.key!r}, {self._len} items)"

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: Any) -> Any:
        with self._lock:
            if self._items is None:
                self._items = ItemBuffer(distributed.get_client().get_dataset(self.key), self._len)
        return self._items[index]


@dataclass(eq=False)  # hashed by identity: the executor keeps a set of them
class _Published:
    remote_map: RemoteMap
    remote: Any  # the scattered spec's Dask future
    payload: bytes = b""  # the pickled spec, to scatter again if every copy on the cluster is lost
    inputs: str | None = None  # the dataset name of the file of items of large inputs, else None


class DaskExecutor:
    """Runs a map's items on a Dask cluster, one Dask task per chunk; the store stays with the
    coordinator (see the module docstring for what is durable).

    ``client_or_address`` is a ``distributed.Client``, or a scheduler address
    (``"tcp://host:8786"``) for which a client is made and closed by :meth:`close`. The workers need
    durablemap and whatever the map's function imports installed.
    """

    slots = None
    threads = True  # a chunk's items that wait run several at once in the Dask worker's process
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
        """Ship the spec to every worker once, and large inputs to the cluster once (see the module
        docstring); unpicklable parts raise ValidationError."""
        data = _items_file(spec)
        shipped = spec.inputs if data is None else PublishedInputs(_inputs_key(spec), len(spec.inputs))
        payload = remote_payload(spec if data is None else replace(spec, inputs=shipped))
        self.workers = self._count_threads()
        remote_map = RemoteMap(spec)
        if data is not None:
            self.client.publish_dataset(**{_inputs_key(spec): data}, override=True)
        ref = _Published(remote_map, self._scatter(payload), payload, None if data is None else _inputs_key(spec))
        self._published.add(ref)
        return ref

    def unpublish(self, ref: Any) -> None:
        """Let Dask forget the spec (and the inputs)."""
        self._published.discard(ref)
        ref.remote.release()
        if ref.inputs is not None:
            with contextlib.suppress(KeyError):
                self.client.unpublish_dataset(ref.inputs)

    def submit(self, ref: Any, indexes: Sequence[int], concurrency: int = 1) -> Future[ChunkResult]:
        """Run the chunk as one Dask task; its future settles once its journal is committed."""
        remote_map = ref.remote_map
        items = None if ref.inputs is None else remote_map.items_of(indexes)
        remote = self.client.submit(run_remote_chunk, remote_map.spec.token, ref.remote,
                                    indexes if type(indexes) is range else list(indexes),
                                    remote_map.prior_of(indexes), concurrency, items, pure=False)
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
            ref.remote_map.commit(ops, result)
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

    def chunks_in_flight(self) -> int:
        """Two per worker thread: one running, one queued behind it."""
        return 2 * self.workers

    def settle_break(self, futures: Sequence[Future[ChunkResult]]) -> None:
        """Dask fails only the lost worker's chunks: the others run on, collected as usual."""

    def deaths(self, token: int) -> list[Death] | None:
        """Dask does not say which item a lost worker ran: lost chunks tell (names_culprit)."""
        return None

    def running(self, token: int) -> list[SlotState]:
        """Items on Dask keep their own time (a thread per item on the worker)."""
        return []

    def kill_worker(self, pid: int) -> str:
        """Not used: items on Dask are timed on the worker."""
        return ""

    def names_culprit(self, error: BaseException) -> bool:
        """Whether a chunk lost with ``error`` was itself running when its worker died (KilledWorker),
        rather than cancelled along with it."""
        return isinstance(error, KilledWorker)

    def restart(self) -> None:
        """Dask's nannies replace dead workers; a spec whose every scattered copy died with them
        (its dependent tasks are then cancelled) is scattered again."""
        for ref in list(self._published):
            if ref.remote.status != "finished":
                ref.remote = self._scatter(ref.payload)

    def _scatter(self, payload: bytes) -> Any:
        """Send a spec to every running worker. After a break, workers may all be restarting: the
        scheduler waits up to ``_WORKERS_TIMEOUT`` for one (by default it gives up after the client's
        connect timeout: "No valid workers found"). Scatter again when a worker the copy reached left
        the cluster before the scheduler recorded it there (a KeyError from the scheduler)."""
        for attempt in range(_SCATTER_ATTEMPTS):
            try:
                return self.client.scatter(payload, broadcast=True, hash=False, timeout=_WORKERS_TIMEOUT)
            except KeyError:
                if attempt + 1 == _SCATTER_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

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


def _inputs_key(spec: MapSpec) -> str:
    return f"durablemap-inputs-{spec.token}"


def _items_file(spec: MapSpec) -> bytes | None:
    """The file of items of ``spec``'s inputs, when they are too large to travel in the spec (those
    loky writes to a file), else None; an input that cannot be pickled raises ValidationError."""
    with tempfile.TemporaryDirectory(prefix="durablemap-dask-") as directory:
        path = os.path.join(directory, "inputs.bin")
        try:
            shipped = shipped_inputs(spec.inputs, path)
        except UnpicklableItem as exc:
            raise ValidationError(describe_unpicklable(spec, exc.cause, exc)) from None
        if not isinstance(shipped, ItemFile):
            return None
        with open(path, "rb") as fh:
            return fh.read()
