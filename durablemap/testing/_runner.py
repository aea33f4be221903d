"""``DurableTestRunner``: run a durable handler in a test and inspect every recorded operation.

    runner.run(input)
      ├─ a fresh temporary store, a VirtualClock (waits and retry delays are skipped)
      ├─ handler.run(input, ...) in the calling thread, real worker processes, a SIGALRM guard
      └─ snapshot every record of the execution (one ordered scan) -> DurableTestResult
              result.operations / get_map(name) / ...  -> OperationView (tree built lazily)

The snapshot is taken before the run's store is removed, so results stay readable after the runner
is closed. Views decode nothing until asked: ``children`` and ``result`` are built on first use.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from enum import StrEnum
from types import FrameType, TracebackType
from typing import Any

from durablemap import ErrorObject, SerDesError, ValidationError
from durablemap._clock import Clock, VirtualClock
from durablemap._execution import DurableFunction, default_execution_id, durable_execution, make_executor
from durablemap._store import Store
from durablemap.lambda_service import OperationStatus, OperationSubType, OperationType
from durablemap.store import ExecutionRecords, Operation, StoreReader

# The public names are listed once, in durablemap.testing.__all__.

#: The execution id every test run uses (each run has a store of its own).
TEST_EXECUTION_ID = "durablemap-test"


class InvocationStatus(StrEnum):
    """How a test run ended."""

    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    #: Never returned by :meth:`DurableTestRunner.run` (a run always finishes or raises); kept
    #: because code written for the AWS testing SDK names it.
    PENDING = "PENDING"


class OperationNotFoundError(LookupError):
    """``get_map``/``get_step``/... found no operation of that name and kind."""


_DEFAULT_ITEM_NAMES: dict[str, str] = {OperationSubType.MAP_ITERATION: "map-item-{}",
                       OperationSubType.PARALLEL_BRANCH: "parallel-branch-{}"}
_BATCH_SUB_TYPES = frozenset((OperationSubType.MAP, OperationSubType.PARALLEL))


class _Snapshot:
    """Every record of one execution (read through the public ``StoreReader.read_execution``),
    with a parent -> children index."""

    def __init__(self, records: ExecutionRecords) -> None:
        self.execution_id = records.execution_id
        self.source = records
        self.operations: dict[tuple[int, ...], Operation] = {(): records.operation("")}
        self.operations.update((op.path, op) for op in records.operations())
        self.children: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        self.operations.update(_in_flight_items(self.operations))
        for path in sorted(self.operations):  # id order: children come out in index order
            if path:
                self.children.setdefault(self._parent(path), []).append(path)

    def _parent(self, path: tuple[int, ...]) -> tuple[int, ...]:
        """The operation ``path`` is shown under: its parent, or for an operation inside an item of
        a FLAT map or parallel (the items record nothing) the map itself, as the SDK records it."""
        parent = path[:-1]
        if parent not in self.operations and len(path) >= 2:
            batch = self.operations.get(path[:-2])
            if batch is not None and str(batch.sub_type) in _BATCH_SUB_TYPES and batch.meta.get("flat", False):
                return path[:-2]
        return parent

    @classmethod
    def read(cls, store_path: str, execution_id: str) -> _Snapshot:
        with StoreReader.open(store_path) as reader:
            return cls(reader.read_execution(execution_id))


def _in_flight_items(operations: dict[tuple[int, ...], Operation]) -> dict[tuple[int, ...], Operation]:
    """The items of finished maps and parallels that were in flight when they completed early: shown
    STARTED, as the map reports them (whether or not a worker recorded them after), as in the SDK,
    where every item started is an operation."""
    shown: dict[tuple[int, ...], Operation] = {}
    for path, op in operations.items():
        if str(op.sub_type) not in _BATCH_SUB_TYPES or not op.finished:
            continue
        item_type = (OperationSubType.MAP_ITERATION if str(op.sub_type) == OperationSubType.MAP
                     else OperationSubType.PARALLEL_BRANCH)
        for index in op.meta.get("started") or ():
            item = operations.get((*path, index))
            shown[(*path, index)] = Operation(
                f"{op.id}/{index}", op.kind, str(item_type), item.name if item else None, "STARTED", None,
                dict(item.meta) if item else {}, None, op.execution_id)
    return shown


class _OperationSearch:
    """``get_*`` lookups over a list of operation views (direct children only, as in the SDK)."""

    def _search_space(self) -> list[OperationView]:
        raise NotImplementedError

    def get_operation_by_name(self, name: str, sub_type: str | None = None) -> OperationView:
        """The first operation named ``name`` (and of ``sub_type``, when given)."""
        ops = self._search_space()
        for op in ops:
            if op.name == name and (sub_type is None or op.sub_type == sub_type):
                return op
        raise self._not_found(name, f"{sub_type} operation" if sub_type else "operation")

    def _not_found(self, name: str, kind: str) -> OperationNotFoundError:
        ops = self._search_space()
        found = ", ".join(f"{op.name!r} ({op.sub_type})" for op in ops) or "none"
        return OperationNotFoundError(
            f"No {kind} named {name!r} here; the operations here are: {found}. Name the operation "
            "(name=...) or look one level down with .children / get_all_operations().")

    def get_map(self, name: str) -> OperationView:
        """The map operation named ``name``; its ``result`` is a BatchResult."""
        return self.get_operation_by_name(name, OperationSubType.MAP)

    def get_parallel(self, name: str) -> OperationView:
        """The parallel operation named ``name``; its ``result`` is a BatchResult."""
        return self.get_operation_by_name(name, OperationSubType.PARALLEL)

    def get_step(self, name: str) -> OperationView:
        """The step named ``name``."""
        return self.get_operation_by_name(name, OperationSubType.STEP)

    def get_wait(self, name: str) -> OperationView:
        """The wait named ``name``."""
        return self.get_operation_by_name(name, OperationSubType.WAIT)

    def get_context(self, name: str) -> OperationView:
        """The context operation named ``name``: a child context (``run_in_child_context``), a map, a
        parallel, a map item or a parallel branch (in the SDK all of them are context operations)."""
        for op in self._search_space():
            if op.name == name and op.operation_type == OperationType.CONTEXT:
                return op
        raise self._not_found(name, "context operation (child context, map, parallel, item or branch)")

    def get_all_operations(self) -> list[OperationView]:
        """Every operation below this point, depth first, in the order they were started."""
        out: list[OperationView] = []
        for op in self._search_space():
            out.append(op)
            out.extend(op.get_all_operations())
        return out


class OperationView(_OperationSearch):
    """One recorded operation of a test run: read-only, built from the run's records."""

    def __init__(self, snapshot: _Snapshot, path: tuple[int, ...]) -> None:
        self._snapshot = snapshot
        self._op = op = snapshot.operations[path]
        self.path = path
        #: The operation's id, as the CLI shows it (``"1/3/2"``).
        self.id = op.id
        #: ``OperationType``: EXECUTION, CONTEXT, STEP or WAIT.
        self.operation_type = OperationType(op.kind)
        #: ``OperationStatus``: SUCCEEDED, FAILED, STARTED or PENDING.
        self.status = OperationStatus(op.status)
        #: ``OperationSubType``: "Map", "MapIteration", "Parallel", "ParallelBranch", "Step", ...
        self.sub_type = OperationSubType(op.sub_type or "")
        default = _DEFAULT_ITEM_NAMES.get(str(op.sub_type))
        #: The operation's name; map items and branches get their default names.
        self.name: str | None = op.name if op.name is not None else (default.format(path[-1]) if default else None)
        #: The recorded error (an ErrorObject), or None.
        self.error = op.error
        #: Operation-specific facts the record keeps (attempt, counts, deadline, ...).
        self.meta: dict[str, Any] = dict(op.meta)
        self._children: list[OperationView] | None = None
        self._result: Any = _UNSET

    @property
    def attempt(self) -> int:
        """A step's last attempt number (from 1); 0 for other operations."""
        return int(self.meta.get("attempt", 0))

    @property
    def children(self) -> list[OperationView]:
        """The operations recorded directly under this one (a map's items, a context's operations)."""
        if self._children is None:
            self._children = [OperationView(self._snapshot, p) for p in self._snapshot.children.get(self.path, ())]
        return self._children

    @property
    def child_operations(self) -> list[OperationView]:
        """The same as ``children`` (the AWS testing SDK's name)."""
        return self.children

    def _search_space(self) -> list[OperationView]:
        return self.children

    @property
    def result(self) -> Any:
        """The deserialized result: a BatchResult for maps and parallels, the value otherwise
        (None for waits, failed operations, and values written by a custom serdes)."""
        if self._result is _UNSET:
            self._result = self._decode_result()
        return self._result

    def _decode_result(self) -> Any:
        op = self._op
        if str(op.sub_type) in _BATCH_SUB_TYPES and op.finished:
            if op.status == OperationStatus.FAILED:
                return None
            try:
                return self._snapshot.source.batch_result(self.id)
            except SerDesError:
                return None  # a custom serdes wrote it: the runner cannot know how to read it
        if op.payload is None or op.status != OperationStatus.SUCCEEDED:
            return None
        try:
            return op.result()
        except SerDesError:
            return op.payload

    def __repr__(self) -> str:
        return f"<OperationView {self.id} {self.sub_type} {self.name!r} {self.status}>"


_UNSET: Any = object()


class DurableFunctionTestResult(_OperationSearch):
    """The outcome of one test run: status, the handler's return value or error, and operations."""

    def __init__(self, status: InvocationStatus, result: Any, error: ErrorObject | None,
                 snapshot: _Snapshot, store_path: str) -> None:
        #: ``InvocationStatus.SUCCEEDED`` or ``InvocationStatus.FAILED``.
        self.status = status
        #: What the handler returned (None when it raised).
        self.result = result
        #: The handler's error as an ErrorObject, or None.
        self.error = error
        #: The execution id the run used.
        self.execution_id = snapshot.execution_id
        #: The store directory the run used (removed when the runner closes, unless it was given).
        self.store_path = store_path
        self._snapshot = snapshot
        self._operations: list[OperationView] | None = None

    @property
    def operations(self) -> list[OperationView]:
        """The top-level operations, in the order the handler started them."""
        if self._operations is None:
            self._operations = [OperationView(self._snapshot, p) for p in self._snapshot.children.get((), ())]
        return self._operations

    def _search_space(self) -> list[OperationView]:
        return self.operations

    def get_operation(self, operation_id: str) -> OperationView:
        """The operation with this id (``"1/3/2"``), at any depth."""
        for op in self.get_all_operations():
            if op.id == operation_id:
                return op
        raise OperationNotFoundError(f"No operation with id {operation_id!r} was recorded in this run.")

    def __repr__(self) -> str:
        return f"<DurableFunctionTestResult {self.status} {len(self.operations)} top-level operations>"


class DurableTestRunner:
    """Run a durable handler in tests: each ``run`` on a fresh temporary store, with real worker
    processes, and waits and retry delays skipped unless ``real_time=True``.

    Use it as a context manager; closing it removes the stores it made and stops the worker
    processes it started. ``store`` runs on that directory instead (kept, and shared by every run).
    """

    #: Where runs happen: always ``"local"`` (this machine). The AWS examples' runner adapter has
    #: the same attribute ("local" or "cloud"); their tests read it before asserting on captured logs.
    mode = "local"

    def __init__(self, handler: Any, *, store: str | os.PathLike[str] | None = None,
                 workers: int | None = None, executor: Any = None, real_time: bool | None = None,
                 skip_time: bool | None = None, execution_timeout: float | None = None,
                 poll_interval: float | None = None, invocation_timeout: float | None = None,
                 max_invocation_page_bytes: int | None = None) -> None:
        """``skip_time`` and ``execution_timeout`` are the AWS testing SDK's names: ``skip_time=False``
        is ``real_time=True``, and ``execution_timeout`` bounds every ``run`` as ``run``'s own does.
        The SDK's ``poll_interval``, ``invocation_timeout`` and ``max_invocation_page_bytes`` (of its
        service polling) are accepted and ignored: a local run has no service to poll."""
        if real_time is not None and skip_time is not None and real_time == skip_time:
            raise ValidationError(f"DurableTestRunner(real_time={real_time}, skip_time={skip_time}): the two say "
                                  "opposite things; pass one of them (skip_time=False is real_time=True)")
        self.handler: DurableFunction = handler if isinstance(handler, DurableFunction) else durable_execution(handler)
        self.store = os.fspath(store) if store is not None else None
        self.workers = workers
        self.real_time = bool(real_time) if real_time is not None else skip_time is False
        self.execution_timeout = execution_timeout
        self._own_executor = executor is None or isinstance(executor, str)
        self._executor_arg = executor
        self._executor: Any = None
        self._temp_dirs: list[str] = []

    def __enter__(self) -> DurableTestRunner:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker processes this runner started and remove its temporary stores."""
        if self._executor is not None and self._own_executor:
            with contextlib.suppress(Exception):
                self._executor.stop_running()
        self._executor = None
        while self._temp_dirs:
            path = self._temp_dirs.pop()
            with contextlib.suppress(Exception):
                Store.for_process(path).close()
            shutil.rmtree(path, ignore_errors=True)

    def run(self, input: Any = None, timeout: float | None = None,
            execution_timeout: float | None = None, **_sdk_options: Any) -> DurableFunctionTestResult:
        """Run the handler on ``input`` and return what it recorded.

        ``timeout`` / ``execution_timeout`` (seconds; the smaller applies) bound the real time the
        run may take: past it, ``TimeoutError`` is raised. Time skipped by the virtual clock does not
        count. The guard is a ``SIGALRM`` timer, so it works only when ``run`` is called from the
        main thread (elsewhere the run is not bounded). The AWS SDK's other options (``function_name``,
        ...) are accepted and ignored.
        """
        path = self.store or self._new_store()
        if self._executor is None:
            self._executor = make_executor(self._executor_arg, self.workers)
        clock: Clock = Clock() if self.real_time else VirtualClock()
        limits = [t for t in (timeout, execution_timeout, self.execution_timeout) if t is not None]
        execution_id = TEST_EXECUTION_ID if self.store is None else None
        status, value, error = InvocationStatus.SUCCEEDED, None, None
        try:
            with _deadline(min(limits) if limits else None):
                value = self.handler.run(input, store=path, execution_id=execution_id,
                                         executor=self._executor, progress=False, clock=clock)
        except _RunTimedOut:
            raise TimeoutError(
                f"The durable execution did not finish within {min(limits):g} s of real time (virtual "
                "waits do not count). Raise timeout=, or look for an item that never returns.") from None
        except Exception as exc:
            status, error = InvocationStatus.FAILED, ErrorObject.from_exception(exc)
        eid = execution_id or default_execution_id(self.handler.func, input)
        return DurableFunctionTestResult(status, value, error, _Snapshot.read(path, eid), os.path.realpath(path))

    def _new_store(self) -> str:
        path = tempfile.mkdtemp(prefix="durablemap-test-")
        self._temp_dirs.append(path)
        return os.path.join(path, "store")


#: The name the AWS testing SDK gives the runner.
DurableFunctionTestRunner = DurableTestRunner


class _RunTimedOut(Exception):
    """The guard's alarm: turned into TimeoutError once the handler has unwound."""


@contextlib.contextmanager
def _deadline(seconds: float | None) -> Iterator[None]:
    """Raise ``_RunTimedOut`` in the main thread after ``seconds`` of real time, keeping any alarm
    that was already armed (pytest-timeout's, say): it still fires, at its own time."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return
    start = time.monotonic()
    previous_delay, previous_interval = signal.getitimer(signal.ITIMER_REAL)
    previous_fired = False

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        nonlocal previous_fired
        elapsed = time.monotonic() - start
        if elapsed >= seconds - 1e-3:
            raise _RunTimedOut
        # The alarm armed before ours is due first: let its handler run, then re-arm ours.
        previous_fired = True
        signal.setitimer(signal.ITIMER_REAL, seconds - elapsed)
        if callable(previous):
            previous(signum, frame)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, min(seconds, previous_delay) if previous_delay else seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if previous_delay and not previous_fired:
            left = previous_delay - (time.monotonic() - start)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3), previous_interval)
