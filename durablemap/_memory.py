"""Memory: limits per map, a monitor in the coordinator, and the per-item peak in the worker.

    coordinator                                           worker (pid P)
    -----------                                           --------------
    MemoryMonitor thread, every 0.1 s (psutil):           ItemMemory, after each item that ran >= 1 ms:
      RSS of the coordinator + every worker pid,            peak = VmHWM of /proc/self/status, then reset
      the machine's available memory,                       the high-water mark (clear_refs "5");
      each worker's last item growth (its slot)  <───────   peak and growth go to the slot and the record
      worker RSS > hard limit -> SIGKILL (a crash)           RSS > soft limit -> loky retires the worker
    Coordinator._dispatch asks admit():                      after this chunk (a clean exit, no crash)
      total + expected item growth > budget -> hold

The hard limit is ``_HARD_FACTOR`` times the per-worker (soft) limit. The monitor's own cost is one
psutil read per process per tick, about 0.1-0.2 ms per tick with two workers (``perf/memory_bench.py``).

Per-item peak: the worker's peak RSS since the end of the last measured item, which for items
that run 1 ms or longer is the item's own peak (shorter items are not measured: they cannot grow
by more than a few MB, and measuring costs ~8 us). An item that runs a nested map reports the peak
since its last nested item; the nested items report their own. When a worker runs several items at
once (``_inflight``), an item's figure is the worker's peak RSS from the start of its chunk to the
item's end: it includes what the items running beside it held, and the growth per item that the
memory budget uses is not measured for those chunks.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

import psutil

from durablemap._errors import ChildContextError, ValidationError

if TYPE_CHECKING:
    from durablemap._state import Settings
    from durablemap.executors._base import Executor

__all__ = ["ItemMemory", "MemoryLimits", "MemoryMonitor", "ignore_recycling_warning", "init_item_memory", "note_peak",
           "share_peak", "shared_peak_done", "start_monitor"]

_MAX_SERIES = 512  # memory samples kept per map run
_log = logging.getLogger("durablemap")

_HARD_FACTOR = 1.5  # a worker this many times over its soft limit is killed mid-item
_INTERVAL = 0.1  # seconds between the monitor's samples while it enforces a limit
_REPORT_INTERVAL = 0.5  # ... and while it only reports
_FRESH = 0.01  # a sample younger than this is fresh enough for a dispatch decision
_SHARED_READ_SECONDS = 0.005  # items run side by side that end this close share a peak reading
_STALL_SECONDS = 5.0  # over budget with nothing in flight this long: the map fails
MEASURE_SECONDS = 0.001  # items shorter than this are not measured
_CHECK_SECONDS = 0.05  # the worker compares its RSS with the soft limit at least this often
_MB = 2**20


@dataclass(frozen=True)
class MemoryLimits:
    """The memory limits of one map, in bytes (None: no limit)."""

    budget: int | None = None
    worker_limit: int | None = None
    stall_seconds: float = _STALL_SECONDS

    @property
    def hard_limit(self) -> int | None:
        """The RSS at which a worker is killed while running an item."""
        return int(self.worker_limit * _HARD_FACTOR) if self.worker_limit else None

    @classmethod
    def resolve(cls, settings: Settings, budget: int | None, worker_limit: int | None) -> MemoryLimits:
        """The map's own limits (MapConfig) where set, else the execution's (``settings``), else
        ``$DURABLEMAP_MEMORY_BUDGET`` / ``$DURABLEMAP_WORKER_MEMORY_LIMIT`` (bytes)."""
        def pick(own: int | None, execution: int | None, env: str) -> int | None:
            if own is not None:
                return own
            return int(execution) if execution else _env_bytes(env)
        return cls(pick(budget, settings.memory_budget, "DURABLEMAP_MEMORY_BUDGET"),
                   pick(worker_limit, settings.worker_memory_limit, "DURABLEMAP_WORKER_MEMORY_LIMIT"),
                   settings.memory_stall_seconds)


def _env_bytes(name: str) -> int | None:
    value = os.environ.get(name)
    if not value:
        return None
    try:
        number = int(float(value))
    except ValueError:
        number = 0
    if number < 1:
        raise ValidationError(f"${name} must be a positive number of bytes, got {value!r}.")
    return number


@dataclass(frozen=True)
class Sample:
    """One reading: bytes resident in the coordinator and its workers, and available on the machine."""

    at: float
    coordinator: int
    workers: dict[int, int]
    available: int

    @property
    def total(self) -> int:
        """Coordinator plus workers."""
        return self.coordinator + sum(self.workers.values())


class MemoryMonitor:
    """Samples memory in a background thread, kills workers past the hard limit, and tells the
    coordinator whether the budget admits another chunk. The thread runs until ``stop()``; the
    coordinator that started it stops it when its map ends, however it ends."""

    def __init__(self, executor: Executor, limits: MemoryLimits, map_name: str,
                 interval: float = _INTERVAL) -> None:
        self.executor, self.limits, self.map_name = executor, limits, map_name
        # With no limit to enforce, the samples only feed the peak figures and the progress display.
        self.interval = interval if (limits.budget or limits.worker_limit) else max(interval, _REPORT_INTERVAL)
        self.slots = executor.slots
        self._me = psutil.Process()
        self._procs: dict[int, psutil.Process] = {}
        self._lock = threading.Lock()
        self.last = self._read()
        self.peak_total = self.last.total
        self.samples = 0
        # Memory over time for the map's record (the report draws it): [wall time, coordinator RSS,
        # workers' RSS], every sample until _MAX_SERIES, then every other one, and so on.
        self.series: list[list[float]] = []
        self._stride = 1
        self.expected = 0  # the largest growth of one item seen so far, in bytes
        self.killed: dict[int, int] = {}  # pid -> RSS when killed at the hard limit
        self.wait_seconds = 0.0
        self._held_since: float | None = None
        self._reported = 0.0  # when observers last heard the figures (the coordinator's clock)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="durablemap-memory", daemon=True)
        self._thread.start()

    # -- sampling ----------------------------------------------------------------------------
    def _read(self) -> Sample:
        workers: dict[int, int] = {}
        for pid in self.executor.worker_pids():
            proc = self._procs.get(pid)
            try:
                if proc is None:
                    proc = self._procs[pid] = psutil.Process(pid)
                workers[pid] = proc.memory_info().rss
            except psutil.Error:
                self._procs.pop(pid, None)
        if len(self._procs) > 2 * len(workers) + 8:
            self._procs = {pid: self._procs[pid] for pid in workers if pid in self._procs}
        return Sample(time.monotonic(), self._me.memory_info().rss, workers, psutil.virtual_memory().available)

    def sample(self) -> Sample:
        """Take a reading now (or reuse one a few ms old) and act on it."""
        with self._lock:
            if time.monotonic() - self.last.at < _FRESH:
                return self.last
            sample = self.last = self._read()
            self.samples += 1
            self.peak_total = max(self.peak_total, sample.total)
            self._keep(sample)
            if self.slots is not None:
                growths = [state.growth for state in self.slots.read_all()]
                self.expected = max([self.expected, *growths])
        self._enforce(sample)
        return sample

    def _keep(self, sample: Sample) -> None:
        if self.samples % self._stride:
            return
        self.series.append([round(time.time(), 3), sample.coordinator, sum(sample.workers.values())])
        if len(self.series) >= _MAX_SERIES:
            self.series, self._stride = self.series[::2], self._stride * 2

    def _enforce(self, sample: Sample) -> None:
        hard = self.limits.hard_limit
        if hard is None:
            return
        for pid, rss in sample.workers.items():
            if rss > hard and pid not in self.killed:
                self.killed[pid] = rss
                _log.warning("durablemap: worker %d of map '%s' uses %d MB, over the hard memory limit of "
                             "%d MB (1.5 x worker_memory_limit); killing it, its item counts a crash",
                             pid, self.map_name, rss // _MB, hard // _MB)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception:  # pragma: no cover - a failed reading must not stop the map
                _log.debug("durablemap: memory sample failed", exc_info=True)

    def report(self, now: float, observers: Any, info: Any) -> None:
        """Tell ``observers`` the memory figures of map ``info``, every ``_REPORT_INTERVAL`` at most."""
        if now - self._reported >= _REPORT_INTERVAL:
            self._reported = now
            observers.call("memory_sampled", info, self.last.total, self.peak_total)

    def stop(self) -> None:
        """Stop the sampling thread."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=2)

    # -- the budget ---------------------------------------------------------------------------
    def admit(self, size: int, chunks: int, finished: bool) -> int:
        """How many items the next chunk may hold under the budget: ``size``, 1 near the budget,
        or 0 to hold back (``chunks`` are in flight; ``finished``: an item of this map finished,
        so its growth is known). With nothing in flight, waits for usage to fall, then raises."""
        budget = self.limits.budget
        if budget is None:
            return size
        total = self.sample().total
        expected = self.expected
        if chunks and not finished:  # the first chunk runs alone until one item's growth is known
            return self._hold()
        if total + expected * (chunks + 1) <= budget:
            self._release()
            return 1 if total + expected * (chunks + 2) > budget else size
        if chunks:
            return self._hold()
        self._hold()
        deadline = time.monotonic() + self.limits.stall_seconds
        while total > budget:
            if time.monotonic() > deadline:
                self._release()
                raise self._stalled(total, budget)
            time.sleep(self.interval)
            total = self.sample().total
        self._release()
        return 1

    def _hold(self) -> int:
        if self._held_since is None:
            self._held_since = time.monotonic()
        return 0

    def _release(self) -> None:
        if self._held_since is not None:
            self.wait_seconds += time.monotonic() - self._held_since
            self._held_since = None

    def _stalled(self, total: int, budget: int) -> ChildContextError:
        workers = self.last.workers
        return ChildContextError(
            f"Map '{self.map_name}': memory in use ({total // _MB} MB: coordinator "
            f"{self.last.coordinator // _MB} MB + {len(workers)} workers "
            f"{sum(workers.values()) // _MB} MB) stayed above memory_budget={budget // _MB} MB for "
            f"{self.limits.stall_seconds:g} s with no item running, so no item can start. Raise the "
            "budget (MapConfig.memory_budget or $DURABLEMAP_MEMORY_BUDGET), set worker_memory_limit so "
            "that workers holding memory are recycled, or free memory held by the handler. The map is "
            "not recorded as failed: running again resumes it.")

    def meta(self) -> dict[str, Any]:
        """The map record's memory figures."""
        self._release()
        return {"peak_total_rss": self.peak_total, "memory_wait_seconds": round(self.wait_seconds, 3),
                "memory_samples": self.series}


def start_monitor(executor: Executor, limits: MemoryLimits | None, map_name: str,
                  in_worker: bool) -> MemoryMonitor | None:
    """The memory monitor of a map: top-level maps with limits only (a nested map shares its
    item's worker, whose memory the outer map watches)."""
    if limits is None or in_worker:
        return None
    if limits.worker_limit:
        ignore_recycling_warning()
    return MemoryMonitor(executor, limits, map_name)


# -- the worker's side ---------------------------------------------------------------------------
class ItemMemory:
    """Measures each item's peak RSS in a worker (Linux: the kernel's high-water mark, reset after
    each measured item) and retires the worker when its RSS is over the soft limit."""

    def __init__(self, slot: Any) -> None:
        self.slot = slot
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._status = os.open("/proc/self/status", os.O_RDONLY)
        self._statm = os.open("/proc/self/statm", os.O_RDONLY)
        try:
            self._clear: int | None = os.open("/proc/self/clear_refs", os.O_WRONLY)
        except OSError:
            self._clear = None
        self.base = self.rss()
        self._checked = time.monotonic()
        self.recycling = False
        self._shared_peak, self._shared_at = 0, 0.0  # the last peak read for items run side by side
        self._reset()

    def rss(self) -> int:
        """This process's resident set size now."""
        return int(os.pread(self._statm, 64, 0).split()[1]) * self._page

    def _hwm(self) -> int:
        data = os.pread(self._status, 4096, 0)
        at = data.find(b"VmHWM:")
        return int(data[at + 6:data.index(b"kB", at)]) * 1024 if at >= 0 else self.rss()

    def _reset(self) -> None:
        if self._clear is not None:
            with contextlib.suppress(OSError):
                os.write(self._clear, b"5")

    def note(self, meta: dict[str, Any] | None, limit: int | None) -> dict[str, Any] | None:
        """After an item: add ``peak_rss`` to its record meta (items of 1 ms or more), and retire
        the worker when it is over ``limit``."""
        if _SHARED.get():
            return self._note_shared(meta, limit)
        now = time.monotonic()
        started = getattr(self.slot, "started", now)
        if now - started < MEASURE_SECONDS:
            if limit and not self.recycling and now - self._checked > _CHECK_SECONDS:
                self._checked = now
                self._check(self.rss(), limit)
            return meta
        peak = self._hwm() if self._clear is not None else self.rss()
        rss = self.rss()
        self._reset()
        growth, self.base = max(0, peak - self.base), rss
        self.slot.note_peak(peak, growth)
        if limit:
            self._checked = now
            self._check(rss, limit)
        meta = dict(meta) if meta else {}
        meta["peak_rss"] = peak
        return meta

    def _note_shared(self, meta: dict[str, Any] | None, limit: int | None) -> dict[str, Any] | None:
        """``note`` for an item that ran beside others: the worker's peak so far in this chunk,
        read at most every ``_SHARED_READ_SECONDS`` (items ending together share a reading)."""
        meta = dict(meta) if meta else {}
        now = time.monotonic()
        if now - self._shared_at >= _SHARED_READ_SECONDS:
            self._shared_peak = self._hwm() if self._clear is not None else self.rss()
            self._shared_at = now
        meta["peak_rss"] = self._shared_peak
        if limit:
            self._check(self.rss(), limit)
        return meta

    def shared_done(self) -> None:
        """The items that ran several at once are done: measure from here on, item by item."""
        self._reset()
        self.base = self.rss()
        self._shared_at = 0.0  # the next chunk's items read their own peak

    def _check(self, rss: int, limit: int) -> None:
        if rss > limit and not self.recycling:
            self.recycling = True
            _retire_after_this_chunk()


def _retire_after_this_chunk() -> None:
    """Have loky hand this worker back as soon as it has sent this chunk's result.

    loky's worker loop sends each task's result with its module's ``_sendback_result``, then goes
    on to the next task. Here that function is wrapped, in this worker only: after sending, it does
    what loky does when it recycles a worker for memory (send the pid back, wait for the executor to
    take note, leave): the executor starts a fresh worker and nothing breaks. No local of loky's
    loop is written (that needed ctypes and broke with Python and loky versions); its exit lock is
    only read, which works on every Python version.
    """
    from loky import process_executor
    send = process_executor._sendback_result
    frame = _loky_worker_frame()
    if getattr(send, "retires", False) or frame is None:
        return  # already retiring, or not a loky worker (Dask, inline): nothing to recycle
    exit_lock = frame.f_locals.get("worker_exit_lock")
    if exit_lock is None:
        warnings.warn("durablemap could not recycle this loky worker (an unknown loky version); it keeps "
                      "running over worker_memory_limit until killed at the hard limit.", RuntimeWarning, stacklevel=2)
        return
    pid_type = getattr(process_executor, "_RecycledWorkerPid", int)

    def send_then_retire(result_queue: Any, work_id: Any, *args: Any, **kwargs: Any) -> None:
        send(result_queue, work_id, *args, **kwargs)
        result_queue.put(pid_type(os.getpid()))
        with exit_lock:  # released by the executor once it has forgotten this worker
            raise SystemExit(0)

    send_then_retire.retires = True  # type: ignore[attr-defined]
    process_executor._sendback_result = send_then_retire


def _loky_worker_frame() -> FrameType | None:
    """The frame of loky's worker loop that this call runs under, or None (not in a loky worker)."""
    frame: FrameType | None = sys._getframe()
    while frame is not None and frame.f_code.co_name != "_process_worker":
        frame = frame.f_back
    return frame


_item_memory: ItemMemory | None = None
# Set while a chunk's items run several at once (copied into each item's context): their peaks are
# shared, so the high-water mark is not reset per item (see the module docstring).
_SHARED: contextvars.ContextVar[bool] = contextvars.ContextVar("durablemap_shared_peak", default=False)


def share_peak() -> None:
    """The calling chunk runs its items several at once (see ``_SHARED``)."""
    _SHARED.set(True)


def shared_peak_done() -> None:
    """The chunk that called ``share_peak`` is done."""
    if _SHARED.get():
        _SHARED.set(False)
        if _item_memory is not None:
            _item_memory.shared_done()


def init_item_memory(slot: Any) -> None:
    """Set up per-item measurement in a worker process (called once, from init_worker)."""
    global _item_memory
    try:
        _item_memory = ItemMemory(slot)
    except OSError:  # no /proc: items are not measured
        _item_memory = None


def note_peak(meta: dict[str, Any] | None, limit: int | None) -> dict[str, Any] | None:
    """``meta`` with the item's ``peak_rss`` when measured (a no-op outside loky workers)."""
    memory = _item_memory
    return meta if memory is None else memory.note(meta, limit)


def ignore_recycling_warning() -> None:
    """loky warns (in its manager thread, where a warnings-as-errors filter would kill the thread)
    when it retires a worker for memory; durablemap retires workers on purpose."""
    warnings.filterwarnings("ignore", message="A worker was restarted", category=UserWarning)
    # what loky versions without _RecycledWorkerPid say for the same
    warnings.filterwarnings("ignore", message="A worker stopped while some jobs were given", category=UserWarning)
