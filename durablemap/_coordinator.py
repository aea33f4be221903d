"""The coordinator: runs one map's items on an executor and records each outcome as it arrives.

    pending indexes ──(chunks: _chunking; max_concurrency, memory budget)──> executor ──> workers
          ^                                                                                 │
          │ re-run / FAILED (_faults: which item killed a worker)          ChunkResult futures
          └──── broken pool ─────────────────────────────────────────────────────┐         │
                                                                                   │         v
                                     group commit (_committer: one LMDB transaction per batch)
                                                        │
                                 counts -> completion policy -> stop early? -> MapOutcome

It is a loop over focused parts, each tested on its own without processes: ``ChunkSizer`` (how
many items per chunk), ``ConcurrencyPlan`` (how many in flight, and at once in a worker),
``FaultLedger`` (crashes, suspects, what a break charges), ``Committer``
(group commits), ``ItemBoard`` (the state of every item and the counts). The loop itself owns
only dispatch and collection; the clock is a parameter, so timeouts and grace periods can be
tested by moving it.
"""

from __future__ import annotations

import heapq
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any

from durablemap._batch import BatchItem, CompletionReason
from durablemap._board import ItemBoard, MapOutcome
from durablemap._chunking import ChunkSizer
from durablemap._committer import Committer, Results
from durablemap._completion import CompletionPolicy
from durablemap._concurrency import ConcurrencyPlan
from durablemap._early import EarlyOutcomes
from durablemap._errors import (
    ExecutionError,
    InvocationError,
    NonDeterministicExecutionError,
    RetryableSerDesError,
    StepInterruptedError,
    UnrecoverableError,
    ValidationError,
)
from durablemap._faults import FaultLedger
from durablemap._gc import paused
from durablemap._logs import emit as emit_logs
from durablemap._lost import LostItemInfo, LostItems
from durablemap._memory import MemoryLimits, start_monitor
from durablemap._observe import MapInfo, Observers
from durablemap._records import Record, op_key
from durablemap._state import ExecutionState
from durablemap._timeskip import TimeSkip
from durablemap.executors._base import ChunkResult, Executor, MapSpec

__all__ = ["Coordinator", "MapOutcome", "Prior"]


@dataclass
class Prior:
    """What earlier runs recorded for this map's items: the items, or for a large map only their
    statuses (``done``: the board's codes, one byte per item; the board then keeps no items)."""

    items: dict[int, BatchItem[Any]] = field(default_factory=dict)
    crashes: dict[int, int] = field(default_factory=dict)
    done: bytearray | None = None
    #: the FAILED records of the items this run retries (retry_failed): not outcomes of this run
    stale: dict[int, Record] = field(default_factory=dict)


class Coordinator:
    """Runs the items of one map to completion (see the module docstring)."""

    def __init__(self, *, state: ExecutionState, executor: Executor, spec: MapSpec, ref: Any,
                 policy: CompletionPolicy, predicate: Any, max_concurrency: int | None,
                 item_timeout: float | None, max_crashes: int, names: Sequence[str | None] | None,
                 prior: Prior, info: MapInfo, observers: Observers | None, memory: MemoryLimits | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.state, self.executor, self.spec, self.ref = state, executor, spec, ref
        self.info, self.observers, self.clock = info, observers, clock
        self.item_timeout = item_timeout
        n = len(spec.inputs)
        self.board = ItemBoard(n, prior.items, policy, predicate, names, done=prior.done)
        self.faults = FaultLedger(max_crashes, dict(prior.crashes))
        self.sizer = ChunkSizer(executor.workers, executor.chunk_seconds)
        # With memory limits, items run one at a time per worker: their growth is measured item by item.
        budget = memory is not None and bool(memory.budget)
        threads = executor.threads and not (memory is not None and (memory.budget or memory.worker_limit))
        self.plan = ConcurrencyPlan(executor.workers, max_concurrency, state.settings.concurrency, threads)
        # The testing runner's virtual clock on workers with slots: a chunk's items all start at once
        # (threads allowing), and the clock moves only when every item in flight waits (_timeskip).
        slots = self.slots = getattr(executor, "slots", None)
        # Chunks may flow (hold more items than they run at once, see ConcurrencyPlan.flows) where
        # each item is recorded as it finishes and only "all done" ends the map.
        self.flowable = self.board.bulk and spec.commit_in_worker and not spec.virtual_time and not budget
        self.timeskip = TimeSkip(slots, spec.token, executor.workers) if spec.virtual_time and slots else None
        self.futures: dict[Future[ChunkResult], Sequence[int]] = {}
        self.places: dict[Future[ChunkResult], int] = {}  # how many of a chunk's items may run at once
        self.requeued: list[int] = []
        self.max_chunks = executor.chunks_in_flight()
        self.solo: Future[ChunkResult] | None = None  # a suspect running alone (see _faults)
        self.early = EarlyOutcomes(spec.commit_in_worker and not self.board.bulk)
        # A map with a completion criterion and max_concurrency: the place each counted item frees is
        # taken at once, as the SDK's threads do, even when no chunk can go to a worker yet (see _hold).
        self.held: list[int] = []
        if not self.board.bulk and max_concurrency is not None and not budget:
            self.board.counted = self._hold
        self.stopping = False  # interrupted: no new work, and lost workers are not counted as crashes
        self.store, prefix = state.store(), op_key(state.execution_id, spec.path)
        self.map_name = info.name or "/".join(map(str, spec.path))
        # The memory monitor (top-level maps on local workers). With a budget, no chunk waits in the
        # pool's queue: each dispatch decision is taken when a worker is free.
        self.memory = start_monitor(executor, memory, self.map_name, state.in_worker)
        if memory is not None and memory.budget:
            self.max_chunks = min(self.max_chunks, max(executor.workers, 1))
        self.done_at_start = self.board.succeeded + self.board.failed
        self.lost = LostItems(state, executor, spec, prefix, self.faults, self.memory,
                              LostItemInfo(self.map_name, info.operation_id, item_timeout, names), prior.stale)
        # Commits run on a thread of their own when items run elsewhere; inline maps commit in line.
        self.committer = Committer(self.store, prefix, threaded=executor.workers > 1, enabled=not spec.flat)

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> MapOutcome:
        """Run until the completion policy says the map is complete."""
        # The items of a big map are many small tracked objects: with the cyclic collector on, each
        # chunk would set off collections that scan all the items so far. It runs after the map.
        try:
            with paused(promote=self.board.values is not None):  # a small map's items outlive it
                return self._run()
        finally:
            if self.memory is not None:
                self.memory.stop()

    def _run(self) -> MapOutcome:
        board = self.board
        if self.observers:
            self.observers.call("map_started", self.info, board.succeeded + board.failed, board.failed)
        board.check()
        try:
            while board.reason is None:
                self._dispatch()
                if not self.futures and not self.committer.in_flight and not self.held:
                    board.finish_all()
                    break
                self._collect(0.01 if self.timeskip else 0.1 if self.item_timeout else 0.5)
                self._watch()
        except KeyboardInterrupt:
            self._interrupted()
            raise
        except BaseException:
            self._abandon()
            raise
        self._abandon()
        outcome = board.outcome()
        if self.observers:
            self.observers.call("map_finished", self.info, outcome.reason.value, outcome.succeeded, outcome.failed)
        return outcome

    # -- dispatch ---------------------------------------------------------------------------
    def _dispatch(self) -> None:
        board, plan = self.board, self.plan
        while board.reason is None and self.solo is None:
            chunks = min(plan.chunks_limit(self.max_chunks, self.early.enabled), self.max_chunks)
            flow = plan.flows(self.flowable)
            room = plan.in_flight_limit(board.n) - (self._running_places() if flow else board.in_flight)
            if self.held and len(self.futures) < chunks:
                held = len(self.held)  # items started already (see _hold): they go first
                size, threads = plan.next_chunk(self.sizer.size(held), held, held, len(self.futures))
                indexes: Sequence[int] = self.held[:size]
                solo = False
                del self.held[:size]
            else:
                if len(self.futures) >= chunks or room <= 0:
                    if room > 0 and self.board.counted is not None:
                        self._hold()
                    return
                size, threads = plan.next_chunk(self.sizer.size(board.remaining()), board.remaining(), room,
                                                len(self.futures), flow, self._flowing() if flow else 0)
                if self.memory is not None and not (size := self.memory.admit(
                        size, len(self.futures), board.succeeded + board.failed > self.done_at_start)):
                    return  # over the memory budget: wait for items in flight to finish
                indexes, solo = self._take(size)
                if not indexes:
                    return
                board.start(indexes)
            if self.timeskip is not None:
                threads = len(indexes)
            try:
                future = self.executor.submit(self.ref, indexes, 1 if solo else min(threads, len(indexes)))
            except Exception as exc:
                if not self.executor.is_broken(exc):
                    raise
                # The pool broke under this submit: the chunk never got in. Its items go back to the
                # queue; the break is settled with the chunks that were in flight.
                self._requeue(indexes)
                self._broken(exc)
                continue
            self.futures[future] = indexes
            self.places[future] = 1 if solo else min(threads, len(indexes))
            if solo:
                self.solo = future
            else:  # (under the virtual clock a one-item chunk too: its outcome is counted before time moves)
                self.early.track(future, 2 if self.timeskip is not None else threads)

    def _running_places(self) -> int:
        """How many items the chunks in flight may run at once (a flowing chunk queues the rest)."""
        if len(self.places) > 2 * len(self.futures) + 8:
            self.places = {future: n for future, n in self.places.items() if future in self.futures}
        return sum(self.places.get(future, len(indexes)) for future, indexes in self.futures.items())

    def _flowing(self) -> int:
        """How many chunks in flight hold more items than they run at once."""
        places = self.places
        return sum(1 for future, indexes in self.futures.items() if places.get(future, len(indexes)) < len(indexes))

    def _hold(self) -> None:
        """Start new items in the room the map has now, before any chunk can take them to a worker
        (they go with the next chunk dispatched): for a map with a completion criterion and
        ``max_concurrency``, whose result says which items started. The SDK starts the next item on
        the thread an item frees before it counts another outcome; so does this, called by the board
        after each item it counts (``ItemBoard.counted``)."""
        board = self.board
        if self.requeued or self.solo is not None or board.reason is not None or self.stopping:
            return
        room = self.plan.in_flight_limit(board.n) - board.in_flight
        while room > 0 and (indexes := board.take(room)):
            board.start(indexes)
            self.held.extend(indexes)
            room -= len(indexes)

    def _take(self, size: int) -> tuple[Sequence[int], bool]:
        """The next chunk's indexes, and whether it is a suspect to run alone."""
        requeued, suspects = self.requeued, self.faults.suspects
        if requeued:
            if requeued[0] in suspects:
                # A suspect runs alone: with nothing else of this map in flight, a break names it.
                return ([heapq.heappop(requeued)], True) if not self.futures else ((), False)
            return [heapq.heappop(requeued) for _ in range(min(size, len(requeued)))
                    if requeued[0] not in suspects], False
        return self.board.take(size), False

    # -- results ----------------------------------------------------------------------------
    def _collect(self, timeout: float) -> None:
        pending: list[Future[Any]] = [*self.futures, *self.committer.in_flight]
        done, _ = wait(pending, timeout=self.early.timeout(timeout), return_when=FIRST_COMPLETED)
        if not done:
            return
        committed: Results = []
        for future in done:
            if future in self.committer.in_flight:
                committed.extend(self.committer.finished(future))
        try:
            results, broken = _settled(done, self.futures, self.executor.is_broken)
        except ValidationError as exc:  # a worker could not load the map (see _worker._load_spec)
            raise ValidationError(f"Map '{self.map_name}': {exc}") from None
        if self.solo is not None and self.solo not in self.futures:
            self.solo = None  # the suspect running alone finished
        if results:
            self._absorb(results)
        if committed:
            self._count(committed)
        if broken is not None:
            self._broken(broken)

    def _absorb(self, results: Results) -> None:
        """Count what workers committed; commit the rest (in line, or on the committer thread)."""
        recorded = [r for r in results if r[1].committed]
        results = [r for r in results if not r[1].committed]
        if recorded:
            self._count(recorded)
        if results and not self.committer.threaded:
            self.committer.write(results)
            self._count(results)
        elif results:
            self.committer.add(results)

    def _count(self, results: Results) -> None:
        """Count recorded results: statuses, the completion policy, observers."""
        fatal: dict[str, Any] | None = None
        for indexes, result in results:
            if result.logs:
                emit_logs(result.logs)  # what the items logged in their worker process
            self.sizer.measured(result.elapsed, result.ran)
            self.plan.measured(result.ran, result.elapsed, result.cpu, result.concurrency)
            self.faults.recorded(result.indexes)
            if len(result.indexes) < len(indexes):  # an error ended the chunk, or it handed items back
                ran = set(result.indexes)
                back = [index for index in indexes if index not in ran]
                fatal = result.fatal or fatal
                if result.fatal is None:
                    self._requeue(back)
                else:
                    self.board.unstart(back)
            succeeded, failed = self.board.finish_chunk(result)
            if self.observers and (succeeded or failed):
                self.observers.call("items_finished", self.info, succeeded, failed)
        if fatal is not None:
            raise _fatal_error(fatal, self.map_name)

    # -- faults -----------------------------------------------------------------------------
    def _broken(self, error: BaseException) -> None:
        """Workers died. Chunks that finished meanwhile are absorbed; the lost items are settled by
        ``LostItems`` (recorded before the death, FAILED, or run again); fresh workers follow."""
        self.executor.settle_break(list(self.futures))
        lost_chunks: list[tuple[Sequence[int], BaseException]] = []
        results: Results = []
        for future in [f for f in self.futures if f.done()]:
            indexes = self.futures.pop(future)
            chunk_error = future.exception()
            if chunk_error is None:
                results.append((indexes, future.result()))
            else:
                lost_chunks.append((indexes, chunk_error))
        solo, self.solo = self.solo is not None and len(lost_chunks) == 1, None
        self._absorb(results)
        lost = self.board.running_among(index for chunk, _ in lost_chunks for index in chunk)
        finished, requeue = self.lost.settle(error, lost, lost_chunks, solo, stopping=self.stopping)
        self._requeue(requeue)
        self._finish(finished)
        self.executor.restart()

    def _requeue(self, indexes: Sequence[int]) -> None:
        """Items that did not run after all go back to the queue, to run in this map."""
        self.board.unstart(indexes)
        for index in indexes:
            heapq.heappush(self.requeued, index)

    def _finish(self, finished: list[BatchItem[Any]]) -> None:
        succeeded, failed = self.board.finish_items(finished)
        if self.observers and finished:
            self.observers.call("items_finished", self.info, succeeded, failed)

    # -- memory and timeouts -----------------------------------------------------------------
    def memory_meta(self) -> dict[str, Any]:
        """The map's memory figures for its record (empty without a monitor)."""
        return {} if self.memory is None else self.memory.meta()

    def _watch(self) -> None:
        """Report memory to observers now and then; kill workers whose item ran past item_timeout,
        keeping the item's stack first; count items recorded while their chunk runs on (_early)."""
        now = self.clock()
        if self.memory is not None and self.observers:
            self.memory.report(now, self.observers, self.info)
        self.lost.watch_timeouts(now)
        for item in self.early.look(now, self.futures, self.board.running_among, self.lost.recorded):
            self._finish([item])  # one by one: the slot each frees is taken at once, as on the SDK's threads
            if self.board.reason is not None:
                return
            self._dispatch()
        if self.timeskip is not None:  # after counting what was recorded: the clock moves last
            self.timeskip.look(now, self.board.running(), bool(self.committer.in_flight), self.lost.recorded)

    # -- stopping ---------------------------------------------------------------------------
    def _abandon(self) -> None:
        """Drop chunks still in flight: cancel queued ones, stop running ones."""
        running = [f for f in self.futures if not f.cancel()]
        self.futures.clear()
        if any(not f.done() for f in running):
            self.executor.stop_running()
        self.committer.close()

    def _interrupted(self) -> None:
        """Ctrl-C: dispatch nothing more, record what finishes within a short grace period, then
        stop the workers. A second Ctrl-C stops them at once."""
        self.board.reason = CompletionReason.ALL_COMPLETED  # stops further dispatch
        self.stopping = True
        self.board.unstart(self.held)  # started, never sent to a worker
        self.held.clear()
        if self.slots is not None:
            self.slots.hold(self.spec.token)  # a flowing chunk starts no more of its items
        for future in list(self.futures):
            if future.cancel():
                self.board.unstart(self.futures.pop(future))
        grace = self.state.settings.grace_seconds
        deadline = self.clock() + grace
        if self.futures and not self.state.in_worker:
            print(f"durablemap: interrupted; recording the {self.board.in_flight} items in flight of map "
                  f"'{self.map_name}' (up to {grace:g} s). Press Ctrl-C again to stop now.",
                  file=sys.stderr, flush=True)
        try:
            while (self.futures or self.committer.in_flight) and self.clock() < deadline:
                self._collect(0.1)
        except KeyboardInterrupt:
            print("durablemap: second interrupt, stopping workers now", file=sys.stderr)
        except Exception:
            pass
        finally:
            self._abandon()


def _settled(done: set[Future[Any]], futures: dict[Future[ChunkResult], Sequence[int]],
             is_broken: Callable[[BaseException], bool]) -> tuple[Results, BaseException | None]:
    """The results of the chunks among ``done`` (taken out of ``futures``), in index order, and the
    error of a break (those chunks stay in ``futures``, for the break to settle)."""
    results: Results = []
    broken: BaseException | None = None
    for future in sorted((f for f in done if f in futures), key=lambda f: futures[f][0]):
        error = future.exception()
        if error is None:
            results.append((futures.pop(future), future.result()))
        elif is_broken(error):
            broken = error
        else:
            raise error
    return results, broken


def _fatal_error(fatal: dict[str, Any], map_name: str) -> BaseException:
    """The error an item raised that ends the execution (ExecutionError) or this run
    (InvocationError, such as RetryableSerDesError), rebuilt with its own class."""
    cls = _UNRECOVERABLE.get(fatal["type"].rsplit(".", 1)[-1], ExecutionError)
    return cls(f"Item {fatal['index']} of map '{map_name}': {fatal['message']}")


_UNRECOVERABLE: dict[str, type[UnrecoverableError]] = {
    cls.__name__: cls for cls in (ExecutionError, NonDeterministicExecutionError, InvocationError,
                                  StepInterruptedError, RetryableSerDesError)}
