"""The coordinator: runs one map's items on an executor and records each outcome as it arrives.

    pending indexes ──(chunks; max_concurrency, completion policy)──> executor ──> workers
          ^                                                                          │
          │ re-run (crash)                        encoded item records               │
          └──── broken pool? find the culprit by its slot <───────── futures <────────┘
                                                        │
                                     group commit (one LMDB transaction per batch of results)
                                                        │
                                 counts -> completion policy -> stop early? -> BatchResult

It owns all of one map's mutable state and runs on the calling thread. Items are dispatched in
ascending index order; a chunk's size follows the measured item duration (tiny items in large
chunks, slow items one by one), within ``max_concurrency``.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from itertools import chain, repeat
from typing import Any, cast

from durablemap._batch import BatchItem, BatchItemStatus, CompletionReason
from durablemap._completion import CompletionPolicy
from durablemap._errors import (
    ErrorObject,
    ExecutionError,
    InvocationError,
    ItemTimeoutError,
    NonDeterministicExecutionError,
    RetryableSerDesError,
    StepInterruptedError,
    UnrecoverableError,
    WorkerCrashedError,
)
from durablemap._gc import paused
from durablemap._logs import emit as emit_logs
from durablemap._memory import MemoryLimits, MemoryMonitor, ignore_recycling_warning
from durablemap._observe import MapInfo, Observers
from durablemap._records import Kind, Record, Status, decode_item_outcome, encode_record, item_key, item_keys
from durablemap._state import ExecutionState
from durablemap._store import op_key
from durablemap._worker import ChunkResult, MapSpec
from durablemap.config import CompletionDecision, CompletionItemStatus, CompletionStatus
from durablemap.executors._base import Executor

__all__ = ["Coordinator", "MapOutcome", "Prior"]

_NEW, _RUNNING, _DONE = 0, 1, 2
_NOT_NEW = re.compile(rb"[^\x00]")
_CHUNK_SECONDS = 0.05  # target duration of one chunk: large enough to hide dispatch costs
_MAX_CHUNK = 16384
_GRACE_SECONDS = 5.0
_MEMORY_REPORT_SECONDS = 0.5  # how often observers hear the memory figures
_DONE_RUN = bytes([_DONE]) * _MAX_CHUNK  # codes of a finished chunk, sliced
_RUNNING_RUN = bytes([_RUNNING]) * _MAX_CHUNK


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


@dataclass
class Prior:
    """What earlier runs recorded for this map's items."""

    items: dict[int, BatchItem[Any]] = field(default_factory=dict)
    crashes: dict[int, int] = field(default_factory=dict)


@dataclass
class MapOutcome:
    """The items (index order, started only) and the completion reason."""

    items: list[BatchItem[Any]]
    reason: CompletionReason
    started: list[int]
    succeeded: int
    failed: int


class Coordinator:
    """Runs the items of one map to completion (see the module docstring)."""

    def __init__(self, *, state: ExecutionState, executor: Executor, spec: MapSpec, ref: Any,
                 policy: CompletionPolicy, predicate: Callable[[CompletionStatus], CompletionDecision] | None,
                 max_concurrency: int | None, item_timeout: float | None, max_crashes: int,
                 names: Sequence[str | None] | None, prior: Prior, info: MapInfo,
                 observers: Observers | None, memory: MemoryLimits | None = None) -> None:
        self.state, self.executor, self.spec, self.ref = state, executor, spec, ref
        self.policy, self.predicate = policy, predicate
        self.n = n = len(spec.inputs)
        self.names, self.info, self.observers = names, info, observers
        self.item_timeout, self.max_crashes = item_timeout, max_crashes
        self.codes = bytearray(n)
        self.items: list[BatchItem[Any] | None] = [None] * n
        self.succeeded = self.failed = 0
        for index, item in prior.items.items():
            self.codes[index] = _DONE
            self.items[index] = item
            if item.status == BatchItemStatus.SUCCEEDED:
                self.succeeded += 1
            else:
                self.failed += 1
        self.crashes = dict(prior.crashes)
        self.cursor = 0
        self.requeued: list[int] = []
        self.in_flight = 0
        self.futures: dict[Future[ChunkResult], Sequence[int]] = {}
        self.max_in_flight = max_concurrency or max(n, 1)
        self.max_chunks = 1 if executor.workers == 1 and not executor.has_slots else executor.workers * 2
        self.per_item: float | None = None
        self.decision: CompletionDecision | None = None
        self.reason: CompletionReason | None = None
        self.timed_out: dict[int, str] = {}
        self.blind_breaks = 0
        self.isolate: set[int] = set()  # items of lost chunks to run one by one to find a culprit
        self.stopping = False  # interrupted: no new work, and lost workers are not counted as crashes
        self.memory_reported = 0.0
        # Executors whose every task costs more to dispatch (Dask: the scheduler, the network) want
        # longer chunks.
        self.chunk_seconds = float(getattr(executor, "chunk_seconds", _CHUNK_SECONDS))
        self.store = state.store()
        self.prefix = op_key(state.execution_id, spec.path)
        self.map_name = info.name or "/".join(map(str, spec.path))
        self._init_memory(memory)
        # With no completion criterion only "all done" ends the map: results are counted a chunk at
        # a time instead of one by one.
        self.bulk = predicate is None and not policy.has_criteria
        # Commits run on a thread of their own when items run elsewhere (an fsync takes milliseconds,
        # in which the workers should get more work); inline maps commit in line.
        self.committer = ThreadPoolExecutor(1, "durablemap-commit") if executor.workers > 1 else None
        self.commits: dict[Future[None], list[tuple[Sequence[int], ChunkResult]]] = {}
        self.to_commit: list[tuple[Sequence[int], ChunkResult]] = []

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> MapOutcome:
        """Run until the completion policy says the map is complete."""
        # The items of a big map are many small tracked objects: with the cyclic collector on, each
        # chunk would set off collections that scan all the items so far. It runs after the map.
        with paused():
            return self._run()

    def _run(self) -> MapOutcome:
        if self.observers:
            self.observers.call("map_started", self.info, self.succeeded + self.failed, self.failed)
        self._check()
        try:
            while self.reason is None:
                self._dispatch()
                if not self.futures and not self.commits:
                    self.reason = self.policy.reason(self.succeeded, self.failed, self.decision)
                    break
                self._collect(0.1 if (self.item_timeout and self.executor.has_slots) else 0.5)
                self._watch()
        except KeyboardInterrupt:
            self._interrupted()
            raise
        except BaseException:
            self._abandon()
            raise
        self._abandon()
        started = [i for i in range(self.n) if self.codes[i] == _RUNNING] if self.in_flight else []
        if started:
            for index in started:
                self.items[index] = BatchItem(index, BatchItemStatus.STARTED)
        # When every item started there are no gaps to leave out.
        items = (cast("list[BatchItem[Any]]", self.items) if _NEW not in self.codes
                 else [item for item in self.items if item is not None])
        if self.observers:
            self.observers.call("map_finished", self.info, self.reason.value, self.succeeded, self.failed)
        return MapOutcome(items, self.reason, started, self.succeeded, self.failed)

    def _check(self) -> None:
        if self.predicate is not None:
            self.decision = self.predicate(self._snapshot())
        if (self.policy.is_complete(self.succeeded, self.failed, self.decision)
                or not self.policy.should_continue(self.failed)):
            self.reason = self.policy.reason(self.succeeded, self.failed, self.decision)

    def _snapshot(self) -> CompletionStatus:
        statuses = []
        for index in range(self.n):
            item, code = self.items[index], self.codes[index]
            status = item.status if item is not None else (BatchItemStatus.STARTED if code == _RUNNING else None)
            name = self.names[index] if self.names is not None else None
            statuses.append(CompletionItemStatus(index=index, name=name, status=status))
        return CompletionStatus(self.succeeded, self.failed, self.succeeded + self.failed, self.n,
                                tuple(statuses))

    # -- dispatch ---------------------------------------------------------------------------
    def _chunk_size(self) -> int:
        if self.per_item is None:
            return 1
        size = int(self.chunk_seconds / max(self.per_item, 1e-7))
        remaining = self.n - self.succeeded - self.failed - self.in_flight
        # At most half a fair share per chunk: near the end, workers run out of work together.
        balance = -(-remaining // max(2 * self.executor.workers, 1))
        return max(1, min(size, _MAX_CHUNK, balance))

    def _dispatch(self) -> None:
        while (len(self.futures) < self.max_chunks and self.in_flight < self.max_in_flight
               and self.reason is None):
            size = min(self._chunk_size(), self.max_in_flight - self.in_flight)
            if self.memory is not None and not (size := self._admit(size)):
                return  # over the memory budget: wait for items in flight to finish
            indexes = self._take(size)
            if not indexes:
                return
            if isinstance(indexes, range):
                self.codes[indexes.start:indexes.stop] = _RUNNING_RUN[:len(indexes)]
            else:
                for index in indexes:
                    self.codes[index] = _RUNNING
            self.in_flight += len(indexes)
            self.futures[self.executor.submit(self.ref, indexes)] = indexes

    def _take(self, size: int) -> Sequence[int]:
        if self.requeued:
            if self.requeued[0] in self.isolate:  # a suspect of a lost chunk runs alone
                return [heapq.heappop(self.requeued)]
            return [heapq.heappop(self.requeued) for _ in range(min(size, len(self.requeued)))
                    if self.requeued[0] not in self.isolate]
        start = self.codes.find(0, self.cursor)
        if start < 0:
            self.cursor = self.n
            return ()
        found = _NOT_NEW.search(self.codes, start, start + size)
        stop = found.start() if found else min(start + size, self.n)
        self.cursor = stop
        return range(start, stop)

    # -- results ----------------------------------------------------------------------------
    def _collect(self, timeout: float) -> None:
        pending: list[Future[Any]] = [*self.futures, *self.commits]
        done, _ = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
        if not done:
            return
        results: list[tuple[Sequence[int], ChunkResult]] = []
        committed: list[tuple[Sequence[int], ChunkResult]] = []
        broken: BaseException | None = None
        for future in done:
            if future in self.commits:
                committed.extend(self.commits.pop(future))
                future.result()  # a failed write raises here
        for future in sorted((f for f in done if f in self.futures), key=lambda f: self.futures[f][0]):
            indexes = self.futures.pop(future)
            error = future.exception()
            if error is None:
                results.append((indexes, future.result()))
            elif self.executor.is_broken(error):
                broken = error
                self.futures[future] = indexes  # settled with the rest in _broken
            else:
                raise error
        if results:
            recorded = [r for r in results if r[1].committed]
            results = [r for r in results if not r[1].committed]
            if recorded:
                self._count(recorded)
            if results and self.committer is None:
                self._absorb(results)
            elif results:
                self.to_commit.extend(results)
        if self.to_commit and not self.commits:
            self._start_commit()
        if committed:
            self._count(committed)
        if broken is not None:
            self._broken(broken)

    def _start_commit(self) -> None:
        """Hand what has arrived to the committer thread: at most one commit is in flight, and all
        that arrives meanwhile goes into the next one, so the fsync of one batch overlaps the
        dispatch of more work."""
        batch, self.to_commit = self.to_commit, []
        assert self.committer is not None
        self.commits[self.committer.submit(self._write, batch)] = batch

    def _absorb(self, results: list[tuple[Sequence[int], ChunkResult]]) -> None:
        """Commit a batch of chunk results in one transaction, then count them."""
        self._write(results)
        self._count(results)

    def _write(self, results: list[tuple[Sequence[int], ChunkResult]]) -> None:
        """Record the items of a batch of chunk results in one durable transaction."""
        if self.spec.flat:
            return
        results = [r for r in results if not r[1].committed]
        if not results:
            return
        if len(results) == 1:
            records = results[0][1].records
            keys = item_keys(self.prefix, results[0][1].indexes)
        else:
            records = [record for _, result in results for record in result.records]
            keys = item_keys(self.prefix, chain.from_iterable(r.indexes for _, r in results))
        if keys:
            self.store.put_columns(keys, records)

    def _count(self, results: list[tuple[Sequence[int], ChunkResult]]) -> None:
        """Count recorded results: statuses, the completion policy, observers."""
        fatal: dict[str, Any] | None = None
        finished: list[BatchItem[Any]] = []
        for indexes, result in results:
            if result.logs:
                emit_logs(result.logs)  # what the items logged in their worker process
            if result.values:
                self.per_item = result.elapsed / len(result.values)
            if result.fatal is not None:
                fatal = result.fatal
                for index in indexes[len(result.values):]:
                    self.codes[index] = _NEW
                    self.in_flight -= 1
            if self.bulk and not result.errors and isinstance(result.indexes, range):
                self._finish_range(result.indexes, result.values)
            else:
                finished.extend(_items(result))
        if finished:
            self._finish(finished)
        if fatal is not None:
            raise _fatal_error(fatal, self.map_name)

    def _finish_range(self, indexes: range, values: list[Any]) -> None:
        """Count a contiguous run of SUCCEEDED items at once (no criterion can stop the map early)."""
        start, stop = indexes.start, indexes.stop
        count = stop - start
        self.items[start:stop] = BatchItem.from_rows(
            zip(indexes, repeat(BatchItemStatus.SUCCEEDED), values, repeat(None)))
        self.codes[start:stop] = _DONE_RUN[:count]
        self.in_flight -= count
        self.succeeded += count
        self._check()
        if self.observers:
            self.observers.call("items_finished", self.info, count, 0)

    def _finish(self, finished: list[BatchItem[Any]]) -> None:
        succeeded = failed = 0
        for item in finished:
            index = item.index
            if self.codes[index] != _RUNNING:
                continue
            self.codes[index] = _DONE
            self.items[index] = item
            self.in_flight -= 1
            if item.status == BatchItemStatus.SUCCEEDED:
                self.succeeded += 1
                succeeded += 1
            else:
                self.failed += 1
                failed += 1
            if self.reason is None:
                self._check()
        if self.observers and finished:
            self.observers.call("items_finished", self.info, succeeded, failed)

    # -- faults -----------------------------------------------------------------------------
    def _broken(self, error: BaseException) -> None:
        """Workers died. loky takes the whole pool down with one worker, so every chunk in flight
        failed; Dask fails only the lost worker's chunks. Items whose records the workers committed
        before dying count as done; the item that was running in a dead worker gets a crash counted
        against it; everything else runs again."""
        # loky fails every chunk in flight: gather them all. Dask fails only the lost worker's
        # chunks: the others run on, and are collected as usual.
        done, _ = wait(list(self.futures), timeout=30 if self.executor.has_slots else 0)
        results: list[tuple[Sequence[int], ChunkResult]] = []
        lost_chunks: list[tuple[Sequence[int], BaseException]] = []
        for future in done:
            indexes = self.futures.pop(future)
            chunk_error = future.exception()
            if chunk_error is None:
                results.append((indexes, future.result()))
            else:
                lost_chunks.append((indexes, chunk_error))
        self._absorb(results)
        if self.executor.has_slots and lost_chunks:
            # loky fails the futures before it kills the surviving workers: let them die first, so
            # that a record one of them commits in that window is seen below, not run again.
            deadline = time.monotonic() + 10
            while self.executor.worker_pids() and time.monotonic() < deadline:
                time.sleep(0.01)
        lost = sorted({index for chunk, _ in lost_chunks for index in chunk if self.codes[index] == _RUNNING})
        finished = self._recorded(lost)
        recorded = {item.index for item in finished}
        # Workers lost while the map is being stopped (Ctrl-C) are not the items' fault.
        culprits = set() if self.stopping else self._culprits(lost_chunks) - recorded
        how, advice = self._crash_cause(error)
        writes: list[tuple[bytes, bytes]] = []
        for index in lost:
            if index in recorded:
                continue
            self.codes[index] = _NEW
            self.in_flight -= 1
            failure = self._lost_item(index, index in culprits, how, advice, writes)
            if failure is None:
                heapq.heappush(self.requeued, index)
            else:
                self.codes[index] = _RUNNING
                self.in_flight += 1
                finished.append(failure)
        if writes and not self.spec.flat:
            self.store.put_many(writes)
        self._finish(finished)
        self.executor.restart()

    def _recorded(self, indexes: list[int]) -> list[BatchItem[Any]]:
        """Items among ``indexes`` whose outcome a worker committed before it died."""
        if not self.spec.commit_in_worker or not indexes:
            return []
        items = []
        for index in indexes:
            raw = self.store.get(item_key(self.prefix, index))
            outcome = None if raw is None else decode_item_outcome(
                raw, self.spec.item_serdes, index, self.info.operation_id, self.state.execution_id)
            if outcome is not None:
                status, value, error = outcome
                items.append(BatchItem(index, status, value, error))
        return items

    def _culprits(self, lost_chunks: list[tuple[Sequence[int], BaseException]]) -> set[int]:
        """The items that were running in the workers that died."""
        lost = {index for chunk, _ in lost_chunks for index in chunk}
        if self.executor.has_slots:
            culprits = {s.index for s in self.executor.slots.dead_running(self.spec.token)} & lost  # type: ignore[attr-defined]
        else:
            # Executors without slots (Dask) fail only the chunks the lost worker ran: a lost chunk
            # of one item names its culprit; a bigger one runs its items one by one to find it.
            # Chunks merely cancelled along with it are innocent.
            names = getattr(self.executor, "names_culprit", lambda error: True)
            blamed = [chunk for chunk, chunk_error in lost_chunks if names(chunk_error)]
            self.isolate.update(index for chunk in blamed if len(chunk) > 1 for index in chunk)
            return {chunk[0] for chunk in blamed if len(chunk) == 1}  # isolation, not blind blame
        if culprits or self.timed_out:
            self.blind_breaks = 0
            return culprits
        self.blind_breaks += 1
        return lost if self.blind_breaks >= 3 else set()  # nothing names the item: blame all in flight

    def _lost_item(self, index: int, culprit: bool, how: str, advice: str,
                   writes: list[tuple[bytes, bytes]]) -> BatchItem[Any] | None:
        """The FAILED item for an item lost with a dead worker, or None when it runs again."""
        if index in self.timed_out:
            return self._fail(index, ItemTimeoutError(
                f"Item {index} of map '{self.map_name}' ran longer than item_timeout="
                f"{self.item_timeout:g} s; its worker was killed and replaced. Its stack is in the "
                "error data. Raise MapConfig.item_timeout if it needs longer, or fix the hang."),
                self.timed_out.pop(index), writes)
        if not culprit:
            return None
        crashes = self.crashes.get(index, 0) + 1
        self.crashes[index] = crashes
        if crashes >= self.max_crashes:
            return self._fail(index, WorkerCrashedError(
                f"The worker process running item {index} of map '{self.map_name}' died "
                f"({how}) {crashes} times; the item is FAILED and the map goes on. {advice}"), None, writes)
        name = self.names[index] if self.names is not None else None
        writes.append((item_key(self.prefix, index), encode_record(Record(
            Kind.CONTEXT, Status.STARTED, name, self.spec.sub_type, None, None, {"crashes": crashes, "exit": how}))))
        return None

    def _crash_cause(self, error: BaseException) -> tuple[str, str]:
        """How the worker died, and what the user can do about it."""
        how = _exit_description(error)
        advice = ("Look for a segfault, os._exit or the OOM killer in that item, or raise "
                  "MapConfig.max_worker_crashes.")
        if self.memory is not None and self.memory.killed:
            rss = max(self.memory.killed.values())
            how += f"; durablemap killed it at {rss / 2**20:.0f} MiB, over the worker memory hard limit"
            advice = ("The item needs more memory than the worker limit allows: raise "
                      "MapConfig.worker_memory_limit, or make the item smaller.")
            self.memory.killed.clear()
        return how, advice

    def _fail(self, index: int, exc: Exception, data: str | None,
              writes: list[tuple[bytes, bytes]]) -> BatchItem[Any]:
        error = ErrorObject.from_exception(exc)
        if data is not None:
            error = ErrorObject(error.message, error.type, data, error.stack_trace)
        name = self.names[index] if self.names is not None else None
        writes.append((item_key(self.prefix, index), encode_record(Record(
            Kind.CONTEXT, Status.FAILED, name, self.spec.sub_type, None, error.to_dict(),
            {"crashes": self.crashes.get(index, 0)}))))
        return BatchItem(index, BatchItemStatus.FAILED, None, error)

    # -- memory ------------------------------------------------------------------------------
    def _init_memory(self, limits: MemoryLimits | None) -> None:
        """Start the memory monitor (top-level maps on local workers). With a budget, no chunk
        waits in the pool's queue: each dispatch decision is taken when a worker is free."""
        self.memory: MemoryMonitor | None = None
        if limits is None or self.state.in_worker:
            return
        self.memory = MemoryMonitor(self.executor, limits, self.map_name, owner=self)
        self._done_at_start = self.succeeded + self.failed
        if limits.budget:
            self.max_chunks = min(self.max_chunks, max(self.executor.workers, 1))
        if limits.worker_limit:
            ignore_recycling_warning()

    def _admit(self, size: int) -> int:
        assert self.memory is not None
        finished = self.succeeded + self.failed > self._done_at_start
        return self.memory.admit(size, len(self.futures), finished)

    def memory_meta(self) -> dict[str, Any]:
        """The map's memory figures for its record (empty without a monitor); stops the monitor."""
        if self.memory is None:
            return {}
        self.memory.stop()
        return self.memory.meta()

    def _watch(self) -> None:
        """Report memory to observers now and then; kill workers whose item ran past item_timeout,
        keeping the item's stack first."""
        if self.memory is not None and self.observers:
            now = time.monotonic()
            if now - self.memory_reported >= _MEMORY_REPORT_SECONDS:
                self.memory_reported = now
                self.observers.call("memory_sampled", self.info, self.memory.last.total, self.memory.peak_total)
        if not self.item_timeout or not self.executor.has_slots:
            return
        now = time.monotonic()
        for slot in self.executor.slots.running(self.spec.token):  # type: ignore[attr-defined]
            if now - slot.started > self.item_timeout and slot.index not in self.timed_out:
                self.timed_out[slot.index] = _dump_stack(self.executor.slots.directory, slot.pid)  # type: ignore[attr-defined]
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGKILL)

    # -- stopping ---------------------------------------------------------------------------
    def _abandon(self) -> None:
        """Drop chunks still in flight: cancel queued ones, stop running ones."""
        running = [f for f in self.futures if not f.cancel()]
        self.futures.clear()
        if any(not f.done() for f in running):
            self.executor.stop_running()
        # A commit in flight lands before the map record is written; results not yet handed to the
        # committer are dropped (those items are reported STARTED).
        self.to_commit.clear()
        if self.committer is not None:
            self.committer.shutdown(wait=True)
        self.commits.clear()

    def _interrupted(self) -> None:
        """Ctrl-C: dispatch nothing more, record what finishes within a short grace period, then
        stop the workers. A second Ctrl-C stops them at once."""
        self.reason = CompletionReason.ALL_COMPLETED  # stops further dispatch
        self.stopping = True
        for future in list(self.futures):
            if future.cancel():
                for index in self.futures.pop(future):
                    self.codes[index] = _NEW
                    self.in_flight -= 1
        grace = float(self.state.settings.get("grace_seconds", _GRACE_SECONDS))
        deadline = time.monotonic() + grace
        if self.futures and not self.state.in_worker:
            print(f"durablemap: interrupted; recording the {self.in_flight} items in flight of map "
                  f"'{self.map_name}' (up to {grace:g} s). Press Ctrl-C again to stop now.",
                  file=sys.stderr, flush=True)
        try:
            while (self.futures or self.commits) and time.monotonic() < deadline:
                self._collect(0.1)
        except KeyboardInterrupt:
            print("durablemap: second interrupt, stopping workers now", file=sys.stderr)
        except Exception:
            pass
        finally:
            self._abandon()


def _fatal_error(fatal: dict[str, Any], map_name: str) -> BaseException:
    """The error an item raised that ends the execution (ExecutionError) or this run
    (InvocationError, such as RetryableSerDesError), rebuilt with its own class."""
    cls = _UNRECOVERABLE.get(fatal["type"].rsplit(".", 1)[-1], ExecutionError)
    return cls(f"Item {fatal['index']} of map '{map_name}': {fatal['message']}")


_UNRECOVERABLE: dict[str, type[UnrecoverableError]] = {
    cls.__name__: cls for cls in (ExecutionError, NonDeterministicExecutionError, InvocationError,
                                  StepInterruptedError, RetryableSerDesError)}


def _exit_description(error: BaseException) -> str:
    match = re.search(r"exit codes of the workers are \{(.*?)\}", str(error))
    return f"exit code {match.group(1)}" if match else type(error).__name__


def _dump_stack(directory: str, pid: int) -> str:
    path = os.path.join(directory, f"{pid}.stack")
    try:
        before = os.path.getsize(path)
        os.kill(pid, signal.SIGUSR1)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and os.path.getsize(path) == before:
            time.sleep(0.02)
        time.sleep(0.05)
        with open(path, encoding="utf-8", errors="replace") as fh:
            fh.seek(before)
            return fh.read()
    except OSError:
        return ""
