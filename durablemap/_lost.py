"""Items lost with dead workers: what each one becomes after a break.

    lost items ──> recorded by the worker before it died? ──yes──> done (its outcome counts)
                        │ no
                        v
                   killed for item_timeout? ──yes──> FAILED (ItemTimeoutError, with its stack)
                        │ no
                        v
                   FaultLedger's verdict ──charged max_crashes times──> FAILED (WorkerCrashedError)
                        │ otherwise (charged: its crash count recorded)
                        v
                   run again

The ledger (``_faults``) decides who is charged; this module gathers the evidence for it from the
executor and the memory monitor, and writes the records of the verdict.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from durablemap._batch import BatchItem, BatchItemStatus
from durablemap._errors import UNPICKLE_ADVICE, ErrorObject, ItemTimeoutError, ValidationError, WorkerCrashedError
from durablemap._faults import Death, FaultLedger, Verdict
from durablemap._memory import MemoryMonitor
from durablemap._records import Record, as_record, decode_item_outcome, decode_raw, item_key, item_records
from durablemap._slots import thread_stack
from durablemap._state import ExecutionState
from durablemap.executors._base import Executor, MapSpec

__all__ = ["LostItemInfo", "LostItems"]

Writes = list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class LostItemInfo:
    """What error messages and records about one map's lost items name."""

    map_name: str
    operation_id: str
    item_timeout: float | None
    names: Sequence[str | None] | None


class LostItems:
    """Settles the items of one map lost in breaks (see the module docstring)."""

    def __init__(self, state: ExecutionState, executor: Executor, spec: MapSpec, prefix: bytes,
                 faults: FaultLedger, memory: MemoryMonitor | None, info: LostItemInfo,
                 stale: dict[int, Record] | None = None) -> None:
        self.state, self.executor, self.spec, self.prefix = state, executor, spec, prefix
        self.faults, self.memory, self.info = faults, memory, info
        self.stale = stale or {}  # the FAILED records a retry_failed run found: not recorded by it
        self.store = state.store()
        self._records = item_records(spec.sub_type)
        self.timed_out: dict[int, str] = {}  # item -> its stack, for workers killed for item_timeout

    def settle(self, error: BaseException, lost: list[int], lost_chunks: list[tuple[Sequence[int], BaseException]],
               solo: bool, *, stopping: bool) -> tuple[list[BatchItem[Any]], list[int]]:
        """The finished items among ``lost`` (recorded, or FAILED now) and those to run again."""
        finished = self.recorded(lost)
        recorded = {item.index for item in finished}
        lost = [index for index in lost if index not in recorded]
        verdict = self._verdict(lost, lost_chunks, solo, stopping)
        how, advice = self._crash_cause(error)
        if verdict.unloadable:
            raise ValidationError(
                f"The worker processes died ({how}) loading map '{self.info.map_name}' "
                f"{_times(max(self.faults.load_deaths, self.faults.load_kills))} in a row, before "
                "running its items: unpickling its function, "
                "its configuration or its inputs kills them, so no item of it can run (what finished is "
                f"recorded). {UNPICKLE_ADVICE}")
        writes: Writes = []
        requeue: list[int] = []
        for index in lost:
            if index in self.timed_out:
                finished.append(self._fail(index, ItemTimeoutError(
                    f"Item {index} of map '{self.info.map_name}' ran longer than item_timeout="
                    f"{self.info.item_timeout:g} s; its worker was killed and replaced. Its stack is in the "
                    "error data. Raise MapConfig.item_timeout if it needs longer, or fix the hang."),
                    self.timed_out.pop(index), writes))
            elif index in verdict.failed:
                finished.append(self._fail(index, WorkerCrashedError(
                    f"The worker process running item {index} of map '{self.info.map_name}' died ({how}) "
                    f"{self.faults.crashes[index]} times; the item is FAILED and the map goes on. {advice}"),
                    None, writes))
            else:
                if index in verdict.charged:
                    writes.append((item_key(self.prefix, index), self._records.started(
                        {"crashes": self.faults.crashes[index], "exit": how}, self._name(index))))
                requeue.append(index)
        if writes and not self.spec.flat:
            self.store.put_many(writes)
        return finished, requeue

    def _verdict(self, lost: list[int], lost_chunks: list[tuple[Sequence[int], BaseException]],
                 solo: bool, stopping: bool) -> Verdict:
        """The fault ledger's verdict on a break (nothing is charged while the map is stopping)."""
        for index in self.timed_out:
            self.faults.timed_out(index)
        deaths = self.executor.deaths(self.spec.token)
        if stopping:
            return self.faults.pool_broke(lost, [], solo=False, explained=True)
        if deaths is None:
            culprit_chunks = [chunk for chunk, chunk_error in lost_chunks if self.executor.names_culprit(chunk_error)]
            return self.faults.chunks_lost(lost, culprit_chunks, solo)
        killed = set(self.memory.killed) if self.memory is not None else set()  # pids over the hard limit
        evidence = [Death(d.index, d.own_hand or d.pid in killed, d.pid)
                    for d in deaths if d.index not in self.timed_out]
        return self.faults.pool_broke(lost, evidence, solo, explained=bool(self.timed_out))

    def watch_timeouts(self, now: float) -> None:
        """Kill the workers running an item of this map past item_timeout, keeping each such item's
        stack (its own thread's, when its worker runs several items at once); the other items in
        flight on those workers run again, uncharged (see ``_verdict``)."""
        timeout, stacks = self.info.item_timeout, {}
        if not timeout:
            return
        for slot in self.executor.running(self.spec.token):
            if now - slot.started > timeout and slot.index not in self.timed_out:
                if slot.pid not in stacks:
                    stacks[slot.pid] = self.executor.kill_worker(slot.pid)
                self.timed_out[slot.index] = thread_stack(stacks[slot.pid], slot.thread)

    def recorded(self, indexes: list[int]) -> list[BatchItem[Any]]:
        """Items among ``indexes`` whose outcome a worker has committed (before it died, or while
        the rest of its chunk runs on); not the FAILED record an earlier run left, which a
        retry_failed run finds there until it records anew."""
        if not self.spec.commit_in_worker or not indexes:
            return []
        items = []
        recorded = self._records_of(sorted(set(indexes)))
        for index in indexes:
            raw = recorded.get(index)
            if raw is not None and index in self.stale and as_record(decode_raw(raw)) == self.stale[index]:
                continue
            outcome = None if raw is None else decode_item_outcome(
                raw, self.spec.item_serdes, index, self.info.operation_id, self.state.execution_id)
            if outcome is not None:
                items.append(BatchItem(index, *outcome))
        return items

    def _records_of(self, wanted: list[int]) -> dict[int, bytes]:
        """The records the store holds of items among ``wanted`` (sorted), whether under their own
        keys or in runs: one read per stretch of nearby indexes (a lost chunk is thousands of them,
        and a lookup that lands on a run costs as much as reading the run)."""
        found: dict[int, bytes] = {}
        lost = set(wanted)
        start = 0
        while start < len(wanted):
            end = start
            while end + 1 < len(wanted) and wanted[end + 1] - wanted[end] <= _NEARBY:
                end += 1
            indexes, raws = self.store.children_columns(self.prefix, wanted[start], wanted[end] - wanted[start] + 1)
            found.update((index, raw) for index, raw in zip(indexes, raws, strict=True) if index in lost)
            start = end + 1
        return found

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

    def _fail(self, index: int, exc: Exception, data: str | None, writes: Writes) -> BatchItem[Any]:
        error = ErrorObject.from_exception(exc)
        if data is not None:
            error = ErrorObject(error.message, error.type, data, error.stack_trace)
        writes.append((item_key(self.prefix, index), self._records.failed(
            error.to_dict(), {"crashes": self.faults.crashes.get(index, 0)}, self._name(index))))
        return BatchItem(index, BatchItemStatus.FAILED, None, error)

    def _name(self, index: int) -> str | None:
        return self.info.names[index] if self.info.names is not None else None


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


_NEARBY = 4096  # lost items this close together are looked up in one read (see LostItems._records_of)


def _exit_description(error: BaseException) -> str:
    match = re.search(r"exit codes of the workers are \{(.*?)\}", str(error))
    return f"exit code {match.group(1)}" if match else type(error).__name__
