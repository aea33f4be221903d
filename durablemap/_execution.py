"""``@durable_execution``: a handler that runs as a durable execution on this machine.

``handler.run(event)`` opens the store, takes the execution's lock, calls the handler with a root
DurableContext, and records the outcome. Running the same execution again calls the handler again;
every operation already recorded returns its recorded outcome without running user code.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, overload

from durablemap._batch import BatchResult
from durablemap._clock import Clock
from durablemap._context import DurableContext
from durablemap._errors import ErrorObject, ValidationError
from durablemap._observe import Observers
from durablemap._records import Kind, RecordWriter, Status, SubType, decode_record
from durablemap._state import ExecutionState, Settings
from durablemap._store import Store, op_key
from durablemap._stored import StoredItems
from durablemap.serdes import serialize_value

__all__ = ["DurableFunction", "default_execution_id", "default_store_path", "durable_execution"]

R = TypeVar("R")
Handler = Callable[[Any, DurableContext], R]


def default_store_path() -> str:
    """``$DURABLEMAP_STORE``, else ``./.durablemap``."""
    return os.environ.get("DURABLEMAP_STORE") or os.path.join(os.getcwd(), ".durablemap")


def _handler_module(func: Callable[..., Any]) -> str:
    module = getattr(func, "__module__", None) or "handler"
    if module == "__main__":
        # A script run directly and the same file run by `durablemap run path.py:handler` share ids.
        main_file = getattr(sys.modules.get("__main__"), "__file__", None)
        if main_file:
            return str(os.path.splitext(os.path.basename(main_file))[0])
    return module


def _stable_repr(value: Any) -> Any:
    # A set's order changes from one process to the next: sort it, so that the same event gives the
    # same execution id on every run.
    if isinstance(value, set | frozenset):
        return sorted(map(repr, value))
    return repr(value)


def default_execution_id(func: Callable[..., Any], event: Any) -> str:
    """The handler's module and qualified name and a hash of the event: the same script on the same
    input resumes the same execution."""
    encoded = json.dumps(event, sort_keys=True, default=_stable_repr, separators=(",", ":"))
    digest = hashlib.blake2b(encoded.encode(), digest_size=8).hexdigest()
    qualname = str(getattr(func, "__qualname__", "handler"))
    return f"{_handler_module(func)}.{qualname}-{digest}"


class DurableFunction:
    """A durable handler: call it, or ``.run(event, ...)``, to run (or resume) an execution."""

    def __init__(self, func: Handler[Any], *, store: str | os.PathLike[str] | None = None,
                 workers: int | None = None, executor: Any = None, progress: bool | None = None) -> None:
        functools.update_wrapper(self, func)
        self.func = func
        self.store = store
        self.workers = workers
        self.executor = executor
        self.progress = progress

    def __call__(self, event: Any = None) -> Any:
        """The same as ``run(event)``."""
        return self.run(event)

    def run(self, event: Any = None, *, store: str | os.PathLike[str] | None = None,
            execution_id: str | None = None, workers: int | None = None, retry_failed: bool = False,
            progress: bool | None = None, executor: Any = None, observers: list[Any] | None = None,
            clock: Clock | None = None, memory_budget: int | None = None,
            worker_memory_limit: int | None = None, concurrency: int | None = None) -> Any:
        """Run the handler as execution ``execution_id`` (default: derived from the handler and the
        event) on ``store`` (default: ``$DURABLEMAP_STORE``, else ``./.durablemap``).

        ``memory_budget`` (bytes, coordinator and workers together) holds back new items while
        memory is over it; ``worker_memory_limit`` (bytes) recycles a worker above it after its item
        and kills it at 1.5 times that. Both default to ``$DURABLEMAP_MEMORY_BUDGET`` /
        ``$DURABLEMAP_WORKER_MEMORY_LIMIT``, and ``MapConfig`` overrides them per map.

        ``concurrency``: how many items of a map whose ``MapConfig.max_concurrency`` is None may run
        at once across the workers (default 256). Workers run items that mostly wait (I/O, sleeps,
        ``await``) several at once, on threads or an event loop, up to this bound or the map's
        ``max_concurrency``; CPU-bound items run one per worker whatever it says."""
        if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int)
                                        or concurrency < 1):
            raise ValidationError(f"handler.run(concurrency=...) must be a whole number of at least 1 (items "
                                  f"of a map running at once), got: {concurrency!r}")
        path = os.fspath(store or self.store or default_store_path())
        execution_id = execution_id or default_execution_id(self.func, event)
        store_handle = Store.for_process(path)
        observer_list = list(observers or [])
        show = self.progress if progress is None else progress
        if show is None:
            show = sys.stderr.isatty()
        if show:
            from durablemap._progress import ProgressObserver
            observer_list.append(ProgressObserver())
        state = ExecutionState(
            store_path=store_handle.path, execution_id=execution_id, clock=clock or Clock(),
            retry_failed=retry_failed,
            executor=make_executor(executor or self.executor, workers or self.workers),
            observers=Observers(observer_list),
            settings=Settings(grace_seconds=_env_float("DURABLEMAP_GRACE_SECONDS", 5.0),
                              memory_budget=memory_budget or None,
                              worker_memory_limit=worker_memory_limit or None, concurrency=concurrency))
        store_handle.acquire_lock(execution_id)
        try:
            with _sigterm_as_interrupt():
                return self._run_locked(state, store_handle, event)
        finally:
            for observer in observer_list:
                close = getattr(observer, "close", None)
                if close is not None:
                    close()
            store_handle.release_lock(execution_id)

    def _run_locked(self, state: ExecutionState, store: Store, event: Any) -> Any:
        key = op_key(state.execution_id, ())
        raw = store.get(key)
        meta = dict(decode_record(raw).meta or {}) if raw else {}
        meta.setdefault("handler", f"{_handler_module(self.func)}:{getattr(self.func, '__qualname__', '?')}")
        meta.setdefault("created", time.time())
        meta["started"] = time.time()
        meta["runs"] = int(meta.get("runs", 0)) + 1
        meta["pid"] = os.getpid()
        self._put(store, state, key, Status.STARTED, None, None, meta)
        context = DurableContext(state, ())
        try:
            result = self.func(event, context)
        except KeyboardInterrupt:
            meta["interrupted"] = time.time()
            self._put(store, state, key, Status.STARTED, None, None, meta)
            print(f"durablemap: interrupted; finished work is recorded in {state.store_path}. Run the "
                  f"same command again to resume execution '{state.execution_id}'.", file=sys.stderr)
            raise
        except Exception as exc:
            meta["ended"] = time.time()
            self._put(store, state, key, Status.FAILED, None, ErrorObject.from_exception(exc).to_dict(), meta)
            raise
        meta["ended"] = time.time()
        payload: bytes | str | None = None
        if isinstance(result, BatchResult) and isinstance(result.all, StoredItems):
            # A large map's result: its items are in the map's records already; copying them into
            # this record would build every item at once. handler.run still returns the result.
            meta["result_repr"] = repr(result)[:1000]
        else:
            try:
                payload = serialize_value(None, result, "", state.execution_id)
            except Exception:
                meta["result_repr"] = repr(result)[:1000]
        self._put(store, state, key, Status.SUCCEEDED, payload, None, meta)
        return result

    @staticmethod
    def _put(store: Store, state: ExecutionState, key: bytes, status: str, payload: Any,
             error: dict[str, Any] | None, meta: dict[str, Any]) -> None:
        writer = RecordWriter(store, key, Kind.EXECUTION, meta.get("handler"), SubType.EXECUTION)
        writer.put(status, payload, error, meta)
        store.index_put("executions", state.execution_id.encode(), writer.record(
            status, meta={k: meta[k] for k in ("handler", "created", "started", "ended", "runs") if k in meta}))


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise ValidationError(f"${name} must be a number of seconds, got {value!r}.") from None


def make_executor(executor: Any, workers: int | None) -> Any:
    """The executor a run asked for: loky by default, ``"inline"``, ``"loky"`` or an instance."""
    from durablemap.executors import InlineExecutor, LokyExecutor
    if executor is None or executor == "loky":
        return LokyExecutor(workers)
    if executor == "inline":
        return InlineExecutor()
    if isinstance(executor, str):
        raise ValidationError(f"executor must be 'loky', 'inline' or an executor object, got {executor!r}.")
    return executor


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    # SIGTERM (a scheduler stopping the job) gets the same orderly stop as Ctrl-C.
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt("SIGTERM")

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@overload
def durable_execution(func: Handler[R]) -> DurableFunction: ...


@overload
def durable_execution(func: None = None, *, store: str | os.PathLike[str] | None = None,
                      workers: int | None = None, executor: Any = None,
                      progress: bool | None = None, **_sdk_options: Any) -> Callable[[Handler[R]], DurableFunction]: ...


def durable_execution(func: Handler[R] | None = None, *, store: str | os.PathLike[str] | None = None,
                      workers: int | None = None, executor: Any = None, progress: bool | None = None,
                      **_sdk_options: Any) -> DurableFunction | Callable[[Handler[R]], DurableFunction]:
    """Make ``func(event, context)`` a durable handler. Use bare or with keyword arguments
    (``store``, ``workers``, ``executor``, ``progress``); the AWS SDK's own options (``boto3_client``,
    ``plugins``) are accepted and ignored."""
    def wrap(f: Handler[R]) -> DurableFunction:
        return DurableFunction(f, store=store, workers=workers, executor=executor, progress=progress)
    return wrap(func) if func is not None else wrap
