"""The default executor: a reusable loky process pool, with worker slots for crash attribution."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from typing import Any

import cloudpickle
from loky import get_reusable_executor

from durablemap._errors import ValidationError
from durablemap._faults import Death
from durablemap._slots import Slots, SlotState
from durablemap._worker import init_worker, run_chunk_from_file
from durablemap.executors._base import ChunkResult, MapSpec
from durablemap.executors._itemfile import UnpicklableItem, inert_pickle, isolate, write_items
from durablemap.executors._leftovers import quiet_resource_tracker, sweep_dead_jobs

__all__ = ["LokyExecutor", "default_workers", "describe_unpicklable", "shipped_inputs"]

_IDLE_TIMEOUT = 60.0
# Inputs shipped inside the spec (every worker unpickles them whole) only when they are this small;
# larger ones go to a file of encoded items that workers read item by item (see _itemfile).
_SMALL_INPUTS = 1024  # items of a list or tuple
_SMALL_PICKLE = 1 << 16  # bytes, pickled
_slot_dir: str | None = None


def default_workers() -> int:
    """The CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _process_slot_dir() -> str:
    # One directory per coordinator process, so the pool's initializer arguments never change and
    # loky keeps reusing the same workers across maps and runs.
    global _slot_dir
    if _slot_dir is None or not os.path.isdir(_slot_dir):
        # What killed jobs left behind goes first; then nothing of this job's is left to warn about.
        sweep_dead_jobs()
        quiet_resource_tracker()
        _slot_dir = tempfile.mkdtemp(prefix=f"durablemap-{os.getpid()}-")
        atexit.register(shutil.rmtree, _slot_dir, True)
    return _slot_dir


class LokyExecutor:
    """Runs chunks in loky worker processes; a map's function is written once to a file that each
    worker loads once, its inputs (unless small) to a file of items each worker reads only as its
    items need them (see _itemfile)."""

    chunk_seconds = 0.05  # large enough to hide what a loky task costs (~0.15 ms)
    threads = True  # a worker runs several items of a chunk at once when they wait (see _inflight)
    shares_store = True  # workers on this machine open the store themselves and commit their chunks

    def __init__(self, workers: int | None = None) -> None:
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise ValidationError(f"workers must be a whole number of at least 1, got: {workers!r}")
        self.workers = workers or default_workers()
        self.slots = Slots(_process_slot_dir())
        self._written: dict[int, Sequence[Any]] = {}  # map token -> the inputs written to its item file

    def _pool(self) -> Any:
        return get_reusable_executor(
            max_workers=self.workers, timeout=_IDLE_TIMEOUT, initializer=init_worker,
            initargs=(self.slots.directory, os.getpid()),
        )

    def publish(self, spec: MapSpec) -> Any:
        """Pickle the spec to a file the workers read, its inputs (unless small) to a file of items
        each worker reads only as its items need them; unpicklable parts raise ValidationError."""
        inputs_path = os.path.join(self.slots.directory, f"inputs-{spec.token}.bin")
        try:
            shipped = shipped_inputs(spec.inputs, inputs_path)
            if shipped is not spec.inputs:
                self._written[spec.token] = spec.inputs  # to rewrite a block of it (see deaths)
            data = cloudpickle.dumps(replace(spec, inputs=shipped))
        except UnpicklableItem as exc:
            raise ValidationError(describe_unpicklable(spec, exc.cause, exc)) from None
        except Exception as exc:
            raise ValidationError(describe_unpicklable(spec, exc)) from None
        path = os.path.join(self.slots.directory, f"spec-{spec.token}.pkl")
        with open(path, "wb") as fh:
            fh.write(data)
        return (spec.token, path)

    def unpublish(self, ref: Any) -> None:
        """Remove the spec file and the inputs file."""
        self._written.pop(ref[0], None)
        for path in (ref[1], os.path.join(self.slots.directory, f"inputs-{ref[0]}.bin")):
            with contextlib.suppress(OSError):
                os.unlink(path)

    def submit(self, ref: Any, indexes: Sequence[int], concurrency: int = 1) -> Future[ChunkResult]:
        """Queue a chunk on the pool."""
        future: Future[ChunkResult] = self._pool().submit(run_chunk_from_file, ref, indexes, concurrency)
        return future

    def chunks_in_flight(self) -> int:
        """Two per worker: one running, one queued behind it."""
        return 2 * self.workers

    def is_broken(self, error: BaseException) -> bool:
        """loky breaks the whole pool when one worker dies."""
        return isinstance(error, BrokenProcessPool)

    def settle_break(self, futures: Sequence[Future[ChunkResult]]) -> None:
        """loky fails every chunk in flight, then kills the surviving workers: wait for both, so that
        a record one of them commits in that window is seen, and no item of it runs twice."""
        wait(futures, timeout=30)
        deadline = time.monotonic() + 10
        while self.slots.live_pids() and time.monotonic() < deadline:
            time.sleep(0.01)

    def deaths(self, token: int) -> list[Death] | None:
        """The dead workers' slots that name an item of map ``token``, with the evidence each left.
        A worker that died decoding a block of the map's item file, several items pickled as one,
        died of one of them, not knowing which (another worker may have died of the same block):
        that block is rewritten an item to a pickle (``_itemfile.isolate``), and the items of the
        worker go back uncharged, to be decoded one by one next time, each named in the slot as it
        is."""
        dead = self.slots.dead_running(token)
        isolated = {s.pid for s in dead if s.decoding >= 0 and self._isolate(token, s.decoding)}
        return [Death(s.index, self.slots.died_by_own_hand(s), s.pid) for s in dead if s.pid not in isolated]

    def _isolate(self, token: int, index: int) -> bool:
        inputs = self._written.get(token)
        if inputs is None:
            return False
        try:
            return isolate(os.path.join(self.slots.directory, f"inputs-{token}.bin"), inputs, index)
        except (OSError, UnpicklableItem):
            return False

    def names_culprit(self, error: BaseException) -> bool:
        """Not used: slots name the items (deaths)."""
        return False

    def running(self, token: int) -> list[SlotState]:
        """The slots of workers running an item of map ``token``."""
        return self.slots.running(token)

    def kill_worker(self, pid: int) -> str:
        """Dump the worker's stack to its stack file, read it, then SIGKILL the worker."""
        stack = _dump_stack(self.slots.directory, pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return stack

    def restart(self) -> None:
        """loky hands out a fresh pool once the broken one is gone."""
        self._pool()

    def stop_running(self) -> None:
        """Kill the workers (items still running are abandoned); the next map gets fresh ones."""
        self._pool().shutdown(wait=True, kill_workers=True)
        # A pool that broke earlier may have left workers loky no longer tracks: their slots know them.
        for pid in self.slots.live_pids():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def worker_pids(self) -> list[int]:
        """Live worker pids, from their slots."""
        return self.slots.live_pids()


def shipped_inputs(inputs: Sequence[Any], path: str) -> Sequence[Any]:
    """The inputs as the workers get them: as they are when they pickle small (a range, a lazy
    sequence that pickles as a path, a short list), else written to an item file at ``path``. A
    list or tuple ships as it is only if unpickling it runs no code (see ``_itemfile.inert_pickle``):
    otherwise it goes to the file however short, where an item whose unpickling kills the worker is
    found and charged alone (see ``_itemfile``), where inside the spec it would kill every worker
    that loads the map."""
    if isinstance(inputs, range) or not len(inputs):
        return inputs
    sequence = isinstance(inputs, list | tuple)
    if not sequence or len(inputs) <= _SMALL_INPUTS:
        try:
            pickled = inert_pickle(inputs) if sequence else cloudpickle.dumps(inputs)
            if pickled is not None and len(pickled) <= _SMALL_PICKLE:
                return inputs
        except Exception:
            pass  # written item by item below: the error then names the item
    return write_items(inputs, path)


def describe_unpicklable(spec: MapSpec, exc: Exception, item: UnpicklableItem | None = None) -> str:
    """Say which part of a map cannot be pickled for the worker processes, and what to do."""
    where = f"map '{spec.path[-1] if spec.path else ''}'"
    culprit = "its configuration (item_serdes or item_namer results)"
    if not _picklable(spec.func):
        culprit = f"the function {getattr(spec.func, '__qualname__', spec.func)!r}"
    elif item is not None:
        culprit = f"inputs[{item.index}] (a {type(item.item).__name__})"
    elif not _picklable(spec.inputs):
        culprit = "the inputs"
        for index in range(min(len(spec.inputs), 10_000)):
            if not _picklable(spec.inputs[index]):
                culprit = f"inputs[{index}] (a {type(spec.inputs[index]).__name__})"
                break
    return (
        f"{culprit} of {where} cannot be pickled to send to the worker processes ({type(exc).__name__}: "
        f"{exc}). Pass module-level functions and plain data (no locks, open files, sockets or "
        "database connections: open those inside the item), or run with executor='inline'."
    )


def _picklable(obj: Any) -> bool:
    try:
        cloudpickle.dumps(obj)
    except Exception:
        return False
    return True


def _dump_stack(directory: str, pid: int) -> str:
    """What the worker ``pid`` is running: faulthandler writes all its threads' stacks to its stack
    file on SIGUSR1 (see ``_worker.init_worker``)."""
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
