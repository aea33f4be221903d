"""Several items of a chunk in flight at once in one worker: on threads for plain functions, on an
event loop for ``async def`` functions (and coroutine parallel branches).

    run_chunk (_worker) ── limit > 1, or an async map ──> run_threads / run_tasks
        Throttle (_concurrency): start 1 item, more while the CPU mostly idles, up to ``limit``
        each item: its own copy of the context (its item index, its depth in nested maps),
                   a row of the worker's slot (index, start, thread) while it runs
        items that finish together ──> one durable commit (``Flight.commit``), as they finish
        past item_timeout (remote workers only) ──> FAILED with the stack of its own thread

A result is recorded when its item finishes, not when the chunk ends: a worker that dies loses only
the items still running. The chunk's result lists its items in the order they finished, so the
completion policy counts them as the SDK's threads would.
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, cast

from durablemap._concurrency import Throttle
from durablemap._errors import ErrorObject, ExecutionError, InvocationError, ItemTimeoutError, error_type_name
from durablemap._records import item_keys
from durablemap._slots import ROWS, SlotWriter
from durablemap._state import item_slot
from durablemap._store import path_str
from durablemap._timings import concurrent_chunk_meta, stamp_chunk
from durablemap.executors._base import ChunkResult, MapSpec

__all__ = ["CURRENT_ITEM", "HAND_BACK_SECONDS", "Flight", "on_event_loop", "run_tasks", "run_threads"]

Outcome = tuple[Any, bytes, dict[str, Any] | None]
#: The top-level item the calling thread or task runs (os._exit names it in the slot).
CURRENT_ITEM: contextvars.ContextVar[int] = contextvars.ContextVar("durablemap_current_item", default=-1)
_MAX_THREADS = 1024  # threads of one worker's item pool (created on demand, reused)
_pool_lock = threading.Lock()
HAND_BACK_SECONDS = 0.2
#: A flowing chunk (more items than places) hands back those it did not start after this long: the
#: coordinator then shares them out again (a worker that finished its part takes some), at one round
#: trip every few seconds.
FLOW_SECONDS = 5.0
_MEASURED_QUEUES = 4  # while at most this many run at once, their threads' run-queue delay is read
_learned: dict[int, int] = {}  # map token -> how many ran at once at the end of its last chunk here
# The row's thread of an item on the event loop (one thread runs them all: a fatal signal there names
# no item), or of an item not yet picked up by a thread.
_NO_THREAD = -1


class _Job:
    """One item handed to an item thread: what to call, and what came of it."""

    __slots__ = ("args", "done", "error", "fn", "result")

    def __init__(self, fn: Callable[..., Outcome], args: tuple[Any, ...], done: Callable[[_Job], None]) -> None:
        self.fn, self.args, self.done = fn, args, done
        self.result: Outcome | None = None
        self.error: BaseException | None = None


class _ItemThreads:
    """The worker's item threads, created on demand up to ``_MAX_THREADS`` and reused. Lighter than
    a ThreadPoolExecutor, whose futures take several locks per item: with a hundred items ending
    together, those hand-offs, serialized by the GIL, delayed the next round by milliseconds."""

    def __init__(self, limit: int) -> None:
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = self._count = 0
        self._limit = limit

    def submit(self, job: _Job) -> None:
        """Run ``job`` on a free thread (a new one if none is, below the limit; else the next free)."""
        with self._lock:
            if self._idle:
                self._idle -= 1
            elif self._count < self._limit:
                self._count += 1
                threading.Thread(target=self._serve, name=f"durablemap-item_{self._count}", daemon=True).start()
        self._jobs.put(job)

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job.result = job.fn(*job.args)
            except BaseException as exc:  # the item's own errors are outcomes; this ends the execution
                job.error = exc
            job.done(job)
            with self._lock:
                self._idle += 1


_item_threads = _ItemThreads(_MAX_THREADS)


class Flight:
    """The bookkeeping of one chunk whose items run several at once (see the module docstring)."""

    def __init__(self, spec: MapSpec, indexes: Sequence[int], result: ChunkResult, slot: SlotWriter | None,
                 limit: int) -> None:
        self.spec, self.result, self.slot = spec, result, slot
        self.pending = deque(indexes)
        start = limit if spec.virtual_time else _learned.get(spec.token, 1)
        self.throttle = Throttle(min(limit, ROWS), start, time.monotonic(), time.process_time())
        self.rows: dict[int, tuple[int, float]] = {}  # index -> (slot row, start)
        self.threads: dict[int, int] = {}  # index -> ident of the thread running it (threads only)
        self.natives: dict[int, int] = {}  # index -> the kernel's id of that thread
        self._waited: dict[int, float] = {}  # kernel thread id -> its run-queue delay at the last sample
        self.batch: list[tuple[int, bytes]] = []  # finished, not committed yet
        self.offsets: list[float] = []
        self.durations: list[float] = []
        self.timing: dict[int, tuple[float, float]] = {}  # finished, not committed: (start offset, duration)
        self.fatal: dict[str, Any] | None = None
        self.t0, self.clock0 = time.time(), time.monotonic()
        self.committed_at = self.clock0
        self.urgent = False  # an outcome that may complete the map waits in the batch (MapSpec.urgent)
        # More items than places (ConcurrencyPlan.flows): a place is free again once its item's
        # record is committed, so that max_concurrency bounds the items started and not recorded.
        self.flowing = len(indexes) > limit and spec.commit_in_worker
        self.writing = 0  # items taken for a commit not written yet
        self.held, self.hold_checked = False, self.clock0
        self.last_start = self.clock0  # when the last item started
        result.indexes = []
        if slot is not None:
            slot.begin_many(spec.token)

    def admit(self, running: int) -> int | None:
        """The next index to start, or None (none left, the throttle says wait, a fatal error, or
        the items proved CPU-bound: see ``handing_back``)."""
        if not self.pending or self.fatal is not None or running >= self.throttle.allowed:
            return None
        if self.flowing and running + len(self.batch) + self.writing >= self.throttle.limit:
            return None
        if self.handing_back():
            return None
        return self.pending.popleft()

    def handing_back(self) -> bool:
        """Whether the chunk's items not started yet go back to the coordinator, after
        ``HAND_BACK_SECONDS``: when they ran one at a time (CPU-bound items: the coordinator sizes
        chunks by time from there), or when items are recorded only with their chunk (Dask: what
        finished is recorded once the chunk is back); a flowing chunk after ``FLOW_SECONDS`` unless
        one round is left, and at once when the coordinator holds the map (an interrupt:
        ``Slots.hold``, looked up every ``Throttle.INTERVAL``)."""
        now = time.monotonic()
        if self.flowing and self.slot is not None and now - self.hold_checked >= Throttle.INTERVAL:
            self.hold_checked = now
            self.held = self.slot.held(self.spec.token)
        if self.held:
            return True
        if not self.result.values:
            return False
        if self.throttle.peak == 1 or not self.spec.commit_in_worker:
            return now - self.clock0 > HAND_BACK_SECONDS
        return self.flowing and now - self.clock0 > FLOW_SECONDS and len(self.pending) > self.throttle.allowed

    def inline(self) -> bool:
        """Whether the next item may run in the chunk's own thread: one at a time, the last one
        took less than a sample's interval (a quick CPU-bound item: a hand-off to a thread would
        cost more than it), and no item timeout to enforce here."""
        return (self.throttle.allowed == 1 and bool(self.durations) and self.durations[-1] < Throttle.INTERVAL
                and not self.spec.timeout_in_worker)

    def more(self, running: int) -> bool:
        """Whether more items of the chunk will finish (else the last round's batch is the final
        one, committed by ``close`` with the chunk's timings)."""
        return bool(running) or (bool(self.pending) and self.fatal is None and not self.handing_back())

    def started(self, index: int, thread: int) -> contextvars.Context:
        """Item ``index`` starts: its slot row, and the context it runs in."""
        if self.slot is not None:
            self.rows[index] = self.slot.take_row(index, thread)
        else:
            self.rows[index] = (-1, time.monotonic())
        self.last_start = self.rows[index][1]
        context = contextvars.copy_context()
        context.run(_enter_item, self.spec, index)
        return context

    def finished(self, index: int, outcome: Outcome | BaseException) -> None:
        """Item ``index`` finished with ``outcome`` (or raised what ends the execution)."""
        row, start = self.rows.pop(index)
        if self.slot is not None:
            self.slot.free_row(row)
        self.threads.pop(index, None)
        self.natives.pop(index, None)
        if isinstance(outcome, ExecutionError | InvocationError):
            self.fatal = {"type": error_type_name(outcome), "message": str(outcome), "index": index}
            return
        if isinstance(outcome, BaseException):
            raise outcome
        value, record, error = outcome
        self._add(index, value, record, error, start)

    def timed_out(self, index: int, stack: str) -> None:
        """Item ``index`` ran past item_timeout (remote workers): FAILED with its stack; whatever it
        does later is ignored."""
        row, start = self.rows.pop(index)
        self.threads.pop(index, None)
        self.natives.pop(index, None)
        if self.slot is not None:
            self.slot.free_row(row)
        seconds = self.spec.item_timeout or 0.0
        error = ErrorObject.from_exception(ItemTimeoutError(
            f"Item {index} of map '{path_str(self.spec.path)}' ran longer than item_timeout={seconds:g} s. "
            "Its stack is in the error data. On Dask its thread cannot be killed and runs on in the "
            "worker; raise MapConfig.item_timeout if it needs longer, or fix the hang."))
        from durablemap._worker import failed_outcome
        value, record, recorded = failed_outcome(self.spec, index, ErrorObject(
            error.message, error.type, stack, error.stack_trace))
        self._add(index, value, record, recorded, start)

    def overdue(self, now: float) -> list[int]:
        """Items past item_timeout, where this worker times its items itself (remote workers)."""
        seconds = self.spec.item_timeout
        if not (self.spec.timeout_in_worker and seconds):
            return []
        return [index for index, (_, start) in self.rows.items() if now - start > seconds]

    def _add(self, index: int, value: Any, record: bytes, error: dict[str, Any] | None, start: float) -> None:
        result = self.result
        if error is not None:
            result.errors[len(result.values)] = error
        assert isinstance(result.indexes, list)
        result.indexes.append(index)
        result.values.append(value)
        now = time.monotonic()
        self.offsets.append(start - self.clock0)
        self.durations.append(now - start)
        if self.spec.commit_in_worker:
            self.timing[index] = (start - self.clock0, now - start)
            self.batch.append((index, record))
            self.urgent = self.urgent or bool(self.spec.urgent & (1 if error is None else 2))
        else:
            result.records.append(record)

    def sample(self, running: int) -> None:
        """Let the throttle look at the CPU use now and then. Only items running for a sample's
        interval at least count as running: quick items gain nothing from running together. Not
        under the testing runner's virtual clock, whose items all run at once (see _timeskip)."""
        now = time.monotonic()
        if self.throttle.due(now) and not self.spec.virtual_time:
            if not running or now - self.last_start >= Throttle.INTERVAL:
                lasting = running  # (none started within the interval: no need to look at each)
            else:
                lasting = sum(1 for _, start in self.rows.values() if now - start >= Throttle.INTERVAL)
            queued = self._queued() if self.throttle.allowed <= _MEASURED_QUEUES else 0.0
            if queued is not None:
                self.throttle.sample(now, time.process_time(), lasting, queued)

    def _queued(self) -> float | None:
        """Seconds the threads running items waited for a CPU since the last call (Linux
        schedstat; 0 elsewhere): what a loaded machine adds to a CPU-bound item's time. None when
        a thread is seen for the first time (no interval to measure yet: no decision)."""
        threads = set(self.natives.values()) or {threading.get_native_id()}  # an event loop: this thread
        total: float | None = 0.0
        for tid in threads:
            try:
                with open(f"/proc/self/task/{tid}/schedstat", "rb") as fh:
                    waited = int(fh.read().split()[1]) / 1e9
            except (OSError, ValueError, IndexError):
                continue
            before = self._waited.get(tid)
            self._waited[tid] = waited
            if before is None:
                total = None
            elif total is not None:
                total += waited - before
        return total

    def commit_due(self, running: int) -> bool:
        """Whether to commit now: more items will finish (else ``close`` commits the last batch)
        and a sample's interval passed since the last commit (items finishing together, or quick
        ones run one after another, share a commit), or an outcome that may complete the map waits
        (the coordinator must count it before later ones, as the SDK's threads would)."""
        return (bool(self.batch) and self.more(running)
                and (self.urgent or self.flowing
                     or time.monotonic() - self.committed_at >= Throttle.INTERVAL))

    def commit(self) -> None:
        """Record the items finished since the last commit, in one durable transaction."""
        self.write(self.take())

    def take(self) -> list[tuple[int, bytes]]:
        """The items finished since the last commit, to write (see ``write``): the last record
        carries their timings (see _timings), so that what is recorded is timed, whatever
        happens to the rest of the chunk."""
        self.committed_at = time.monotonic()
        self.urgent = False
        batch, self.batch = self.batch, []
        self.writing = len(batch)  # until ``write`` is done (on the event loop's commit thread)
        if batch:
            indexes = [index for index, _ in batch]
            timed = [self.timing.pop(index) for index in indexes]
            meta = concurrent_chunk_meta(self.t0, indexes, [t[0] for t in timed], [t[1] for t in timed])
            records = [batch[-1][1]]
            stamp_chunk(records, meta)
            batch[-1] = (batch[-1][0], records[0])
        return batch

    def write(self, batch: list[tuple[int, bytes]]) -> None:
        """Record ``batch`` in one durable transaction (on any thread)."""
        if batch:
            self.spec.state.store().put_columns(item_keys(self.spec.key_prefix, [i for i, _ in batch]),
                                                [r for _, r in batch])
        self.writing = 0

    def close(self) -> dict[str, Any] | None:
        """The chunk is done: its timings stamped on its last record, everything committed, the slot
        free. Returns the error that ends the execution, if an item raised one."""
        _learned[self.spec.token] = self.throttle.allowed
        while len(_learned) > 16:
            del _learned[next(iter(_learned))]
        self.result.concurrency = self.throttle.peak
        if self.result.records:  # returned to the coordinator: the chunk's timings on its last record
            stamp_chunk(self.result.records,
                        concurrent_chunk_meta(self.t0, self.result.indexes, self.offsets, self.durations))
        self.commit()
        if self.spec.commit_in_worker:
            self.result.committed = True
        if self.slot is not None:
            self.slot.end_many()
        return self.fatal


def _enter_item(spec: MapSpec, index: int) -> None:
    """In the item's own context: its index (for logs and os._exit) and its depth."""
    item_slot(spec.state)[0] = index
    CURRENT_ITEM.set(index)


def run_threads(flight: Flight, call: Callable[[int], Outcome], owner: object | None,
                adopt: Callable[[object | None], Any]) -> dict[str, Any] | None:
    """Run the flight's items on the worker's item threads; ``adopt(owner)`` routes an item
    thread's log records to its chunk (see _logs)."""
    running: dict[_Job, int] = {}
    # Finished items arrive here (a done callback each), so that a wake-up costs nothing per item
    # still running: waiting on all of them at each wake-up would, with hundreds in flight.
    finished: deque[_Job] = deque()
    ready = threading.Event()

    def on_done(job: _Job) -> None:
        finished.append(job)
        ready.set()

    def item(index: int, row: int) -> Outcome:
        flight.threads[index] = thread = threading.get_ident()
        flight.natives[index] = threading.get_native_id()
        if flight.slot is not None and row >= 0:
            flight.slot.set_thread(row, thread)
        with adopt(owner):
            return call(index)

    try:
        while True:
            if not running and flight.inline() and (index := flight.admit(0)) is not None:
                # One at a time, and the last one was quick: run it here (no hand-off to a thread).
                context = flight.started(index, _NO_THREAD)
                try:
                    outcome: Outcome | BaseException = context.run(item, index, flight.rows[index][0])
                except BaseException as exc:
                    outcome = exc
                flight.finished(index, outcome)
                if flight.commit_due(0):
                    flight.commit()
                flight.sample(0)
                continue
            while (index := flight.admit(len(running))) is not None:
                context = flight.started(index, _NO_THREAD)
                job = _Job(context.run, (item, index, flight.rows[index][0]), on_done)
                running[job] = index
                _item_threads.submit(job)
            if not running and not flight.more(0):
                break
            if running:
                if not finished:
                    ready.wait(Throttle.INTERVAL)
                ready.clear()
                while finished:
                    job = finished.popleft()
                    if (index := running.pop(job, -1)) >= 0:  # (not an item timed out meanwhile)
                        flight.finished(index, job.error if job.error is not None else cast("Outcome", job.result))
            _time_out_threads(flight, running)
            if flight.commit_due(len(running)):
                flight.commit()
            flight.sample(len(running))
    finally:
        fatal = flight.close()
    return fatal


def _time_out_threads(flight: Flight, running: dict[_Job, int]) -> None:
    overdue = flight.overdue(time.monotonic())
    if not overdue:
        return
    frames = sys._current_frames()
    for job, index in list(running.items()):
        if index in overdue:
            del running[job]
            frame = frames.get(flight.threads.get(index, -1))
            flight.timed_out(index, "".join(traceback.format_stack(frame)) if frame is not None else "")


def on_event_loop() -> bool:
    """Whether the calling thread runs an event loop now."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def run_tasks(flight: Flight, call: Callable[[int], Coroutine[Any, Any, Outcome]]) -> dict[str, Any] | None:
    """Run the flight's items as tasks on an event loop of their own (in a helper thread when this
    thread already runs one: a nested async map inside an async item)."""
    if not on_event_loop():
        return asyncio.run(_tasks(flight, call))
    box: list[dict[str, Any] | BaseException | None] = []
    context = contextvars.copy_context()

    def target() -> None:
        try:
            box.append(context.run(asyncio.run, _tasks(flight, call)))
        except BaseException as exc:
            box.append(exc)

    helper = threading.Thread(target=target, name="durablemap-nested-loop")
    helper.start()
    helper.join()
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


async def _tasks(flight: Flight, call: Callable[[int], Coroutine[Any, Any, Outcome]]) -> dict[str, Any] | None:
    loop = asyncio.get_running_loop()
    running: dict[asyncio.Task[Outcome], int] = {}
    commits: Future[None] | None = None
    finished: deque[asyncio.Task[Outcome]] = deque()  # as in run_threads: no wait on every task
    ready = asyncio.Event()

    def on_done(task: asyncio.Task[Outcome]) -> None:
        finished.append(task)
        ready.set()
    try:
        while True:
            while (index := flight.admit(len(running))) is not None:
                context = flight.started(index, _NO_THREAD)
                task = loop.create_task(call(index), context=context)
                running[task] = index
                task.add_done_callback(on_done)
            if not running and not flight.more(0):
                break
            if running:
                if not finished:
                    timer = loop.call_later(Throttle.INTERVAL, ready.set)
                    await ready.wait()
                    timer.cancel()
                ready.clear()
                while finished:
                    task = finished.popleft()
                    if (index := running.pop(task, -1)) >= 0:  # (not an item timed out meanwhile)
                        error = task.exception() if not task.cancelled() else asyncio.CancelledError()
                        flight.finished(index, error if error is not None else task.result())
            elif commits is not None and not commits.done():
                await asyncio.wrap_future(commits)  # a flowing chunk's places are free once written
            _time_out_tasks(flight, running)
            if flight.commit_due(len(running)) and (commits is None or commits.done()):
                if commits is not None:
                    commits.result()
                commits = _committer().submit(flight.write, flight.take())  # an fsync must not stall the loop
            flight.sample(len(running))
    finally:
        if commits is not None:
            await asyncio.wrap_future(commits)
    return flight.close()


def _time_out_tasks(flight: Flight, running: dict[asyncio.Task[Outcome], int]) -> None:
    overdue = set(flight.overdue(time.monotonic()))
    for task, index in list(running.items()):
        if index in overdue:
            del running[task]
            stack = "".join(traceback.format_list(_task_frames(task)))
            task.cancel()
            flight.timed_out(index, stack)


def _task_frames(task: asyncio.Task[Any]) -> Iterable[Any]:
    return traceback.extract_stack(task.get_stack()[-1]) if task.get_stack() else []


_commit_pool: ThreadPoolExecutor | None = None


def _committer() -> ThreadPoolExecutor:
    global _commit_pool
    with _pool_lock:
        if _commit_pool is None:
            _commit_pool = ThreadPoolExecutor(1, thread_name_prefix="durablemap-item-commit")
        return _commit_pool
