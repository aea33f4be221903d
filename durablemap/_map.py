"""The map and parallel operations: validation, replay of a finished map, and the map record.

Running the items is the coordinator's job (``_coordinator``); this module decides whether they
need to run at all, and records the outcome.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable, Sequence
from operator import countOf, itemgetter
from typing import TYPE_CHECKING, Any, TypeVar

from durablemap import _stored
from durablemap._batch import BatchItem, BatchItemStatus, BatchResult, CompletionReason
from durablemap._board import FAILED, RUNNING, SUCCEEDED
from durablemap._clock import VirtualClock
from durablemap._completion import CompletionPolicy
from durablemap._context import check_identity, failed_again
from durablemap._coordinator import Coordinator, Prior
from durablemap._errors import (
    ChildContextError,
    ErrorObject,
    NonDeterministicExecutionError,
    SerDesError,
    ValidationError,
)
from durablemap._fingerprint import fingerprint
from durablemap._gc import paused
from durablemap._logs import logger_levels
from durablemap._memory import MemoryLimits
from durablemap._observe import MapInfo
from durablemap._records import (
    CHECKPOINT_SIZE_LIMIT_BYTES,
    Kind,
    Record,
    RecordWriter,
    Status,
    SubType,
    all_compact,
    as_record,
    compact_code,
    item_outcome,
)
from durablemap._step import operation_name
from durablemap._store import op_key, path_str
from durablemap.config import (
    CompletionConfig,
    CompletionStatus,
    MapConfig,
    NestingType,
    ParallelBranch,
    ParallelBranchFactory,
    ParallelConfig,
)
from durablemap.executors._base import MapSpec
from durablemap.serdes import deserialize_value, serialize_value

if TYPE_CHECKING:
    from durablemap._context import DurableContext

__all__ = ["replay_batch", "run_map", "run_parallel"]

T = TypeVar("T")
# A BatchResult of this many items serializes to more than CHECKPOINT_SIZE_LIMIT_BYTES with the default serdes
# (each item's dict alone takes over 30 bytes), so it is not serialized just to find that out.
_SURELY_LARGE = CHECKPOINT_SIZE_LIMIT_BYTES // 30 + 1


class _CallbackFailed(Exception):
    """A user callback of the map machinery (item_namer, should_complete) raised."""


def run_map(ctx: DurableContext, inputs: Sequence[Any], func: Callable[..., T], name: str | None,
            config: MapConfig[Any] | None) -> BatchResult[T]:
    """``context.map``: see CONTRACT section 3."""
    config = config or MapConfig()
    _validate(inputs, func, "context.map()", "func")
    config.completion_config._validate_for_total(len(inputs))
    return _run_batch(ctx, inputs, func, name or operation_name(func), config, SubType.MAP, SubType.MAP_ITERATION,
                      config.item_namer)


def run_parallel(ctx: DurableContext, functions: Sequence[Any], name: str | None,
                 config: ParallelConfig | None) -> BatchResult[Any]:
    """``context.parallel``: each function runs as an item of a map over the functions."""
    config = config or ParallelConfig()
    if not isinstance(functions, Sequence) or isinstance(functions, str | bytes):
        raise ValidationError("context.parallel() takes a list of functions; pass list(functions).")
    for index, function in enumerate(functions):
        if not callable(function):
            raise ValidationError(f"context.parallel(): functions[{index}] is not callable "
                                  f"({type(function).__name__}); pass functions taking a DurableContext.")
    config.completion_config._validate_for_total(len(functions))
    branches = [f.branch() if isinstance(f, ParallelBranchFactory) else f for f in functions]
    return _run_batch(ctx, branches, _call_branch, name, config, SubType.PARALLEL, SubType.PARALLEL_BRANCH,
                      _branch_name)


def _call_branch(context: DurableContext, branch: Callable[[DurableContext], T], index: int,
                 branches: Sequence[Any]) -> T:
    return branch(context)


def _branch_name(branch: Any, index: int) -> str | None:
    return branch.name if isinstance(branch, ParallelBranch) else None  # "" is a name, as in the SDK


def _validate(inputs: Any, func: Any, where: str, what: str) -> None:
    if not isinstance(inputs, Sequence) and not (hasattr(inputs, "__len__") and hasattr(inputs, "__getitem__")):
        raise ValidationError(
            f"{where} needs a sequence of inputs (list, tuple, range, or an object with __len__ and "
            f"__getitem__), got {type(inputs).__name__}: pass list(...) of it so every item has a "
            "stable index to be recorded under.")
    if not callable(func):
        raise ValidationError(f"{where}: {what} must be callable, got {type(func).__name__}.")


def _run_batch(ctx: DurableContext, inputs: Sequence[Any], func: Callable[..., Any], name: str | None,
               config: MapConfig[Any] | ParallelConfig, sub_type: str, item_sub_type: str,
               namer: Callable[[Any, int], str | None] | None) -> BatchResult[Any]:
    path = ctx.next_path()
    record = ctx.lookup(path, Kind.CONTEXT, sub_type, name)
    state = ctx.state
    flat = config.nesting_type == NestingType.FLAT
    if record is not None and bool(record.get("flat", False)) != flat:
        was, now = ("FLAT", "NESTED") if record.get("flat") else ("NESTED", "FLAT")
        raise NonDeterministicExecutionError(
            f"Non-deterministic operation identity at id='{path_str(path)}': the map was recorded with "
            f"nesting_type {was}, and is now {now}. Restore the previous nesting_type, or start a new "
            "execution (another execution_id, or `durablemap rm ID`).", step_id=path_str(path))
    if record is not None and record.finished:
        rerun = failed_again(record, state) or (
            state.retry_failed and record.status == Status.SUCCEEDED and record.get("failed", 0) > 0)
        if rerun:
            ctx.mark_rerun()
        elif record.status == Status.FAILED:
            ErrorObject.from_dict(record.error or {}).raise_as_operation_error(ChildContextError)
        elif not config.recompute_changed_inputs:
            if record.get("inputs") not in (None, len(inputs)):
                raise _drift(path_str(path), name, f"it had {record.get('inputs')} inputs, now {len(inputs)}")
            return replay_batch(state, path, record, config.serdes, config.item_serdes or config.serdes)
    return _execute(ctx, path, record, inputs, func, name, config, sub_type, item_sub_type, namer)


def _execute(ctx: DurableContext, path: tuple[int, ...], record: Record | None, inputs: Sequence[Any],
             func: Callable[..., Any], name: str | None, config: MapConfig[Any] | ParallelConfig,
             sub_type: str, item_sub_type: str,
             namer: Callable[[Any, int], str | None] | None) -> BatchResult[Any]:
    state = ctx.state
    key = op_key(state.execution_id, path)
    op_id = path_str(path)
    flat = config.nesting_type == NestingType.FLAT
    put = RecordWriter(state.store(), key, Kind.CONTEXT, name, sub_type).put
    # One [start, end] per run of this map (see _timings); this run's end is set when it finishes.
    timeline = [*(record.get("timeline") or [] if record is not None else []), [time.time(), None]]

    def fail(exc: BaseException) -> ChildContextError:
        error = ErrorObject.from_exception(exc)
        timeline[-1][1] = time.time()
        put(Status.FAILED, error=error.to_dict(), meta={"inputs": len(inputs), "flat": flat, "timeline": timeline})
        return error.to_operation_error(ChildContextError)  # type: ignore[return-value]

    try:
        names = [namer(inputs[i], i) for i in range(len(inputs))] if namer is not None else None
    except Exception as exc:
        raise fail(exc) from exc
    item_serdes = config.item_serdes or config.serdes
    executor = state.map_executor()
    spec = MapSpec(int.from_bytes(os.urandom(8), "big") >> 1, state.for_worker(), path, func, inputs,
                   item_serdes, flat, item_sub_type, names, fingerprints=not flat, key_prefix=key,
                   commit_in_worker=not flat and executor.shares_store, item_timeout=config.item_timeout,
                   coordinator_pid=os.getpid(), log_levels=logger_levels(), context=type(ctx),
                   is_async=_is_async(func, inputs, sub_type), urgent=_urgent(config.completion_config))
    limits = MemoryLimits.resolve(state.settings, config.memory_budget, config.worker_memory_limit)
    spec.worker_memory_limit = limits.worker_limit
    # The testing runner's clock across worker processes (see _timeskip): where items may run
    # several at once in workers with slots (no memory limit measures them one by one).
    spec.virtual_time = (isinstance(state.clock, VirtualClock) and getattr(executor, "slots", None) is not None
                         and executor.threads and not (limits.budget or limits.worker_limit))
    lazy = not flat and len(inputs) >= _stored.LAZY_MIN_ITEMS  # items stay in the store
    spec.values_unused = lazy and spec.commit_in_worker
    ref = executor.publish(spec)
    try:
        if record is None or record.status == Status.STARTED:  # first run, or a resume: a new segment
            put(Status.STARTED, meta={"inputs": len(inputs), "flat": flat, "timeline": timeline})
        # Read even without the map's own record: a store salvaged after damage may have lost it but
        # kept its items' records, which a first run has none of (the lookup then costs a seek).
        prior = _read_prior(state, path, inputs, item_serdes, names, item_sub_type,
                            config.recompute_changed_inputs, lazy)
        predicate = config.completion_config.should_complete
        info = MapInfo(state.execution_id, op_id, name, len(inputs), len(path))
        coordinator = Coordinator(
            state=state, executor=executor, spec=spec, ref=ref,
            policy=CompletionPolicy(config.completion_config, len(inputs)),
            predicate=_guarded(predicate) if predicate is not None else None,
            max_concurrency=config.max_concurrency, item_timeout=config.item_timeout,
            max_crashes=config.max_worker_crashes, names=names, prior=prior, info=info,
            observers=state.observers, memory=limits)
        outcome = coordinator.run()
    except _CallbackFailed as exc:
        raise fail(exc.__cause__ or exc) from exc.__cause__
    finally:
        executor.unpublish(ref)
    # The board's counts come along, so that counting and the absence of failures need no scan.
    counts = (outcome.succeeded, outcome.failed, len(outcome.started))
    result: BatchResult[Any] = (
        BatchResult.of_columns(outcome.items, outcome.reason, counts) if outcome.items is not None else
        _stored.stored_result(state.store(), state.execution_id, path, item_serdes, inputs=len(inputs),
                              reason=outcome.reason, started=outcome.started, succeeded=outcome.succeeded,
                              failed=outcome.failed))
    meta = {"inputs": len(inputs), "flat": flat, "reason": outcome.reason.value, "total": outcome.total,
            "started": outcome.started, "succeeded": outcome.succeeded, "failed": outcome.failed,
            **coordinator.memory_meta()}
    timeline[-1][1] = time.time()
    meta["timeline"] = timeline
    if record is not None and record.get("memory_samples") and meta.get("memory_samples") is not None:
        meta["memory_samples"] = [*record.get("memory_samples"), *meta["memory_samples"]]  # a retry's too
    return _record_result(result, meta, config, put, fail, op_id, state.execution_id, spec.flat)


def _urgent(criteria: CompletionConfig) -> int:
    """``MapSpec.urgent``: which outcomes may complete the map (1 a success, 2 a failure)."""
    custom = criteria.should_complete is not None
    success = custom or criteria.min_successful is not None
    failure = custom or (criteria.tolerated_failure_count, criteria.tolerated_failure_percentage) != (None, None)
    return success | (2 * failure)


def _is_async(func: Callable[..., Any], inputs: Sequence[Any], sub_type: str) -> bool:
    """Whether the items are coroutines, to run on an event loop: an ``async def`` map function, or
    parallel branches that are all coroutine functions (a mix runs on threads, where a branch's
    coroutine runs on a loop of its own)."""
    if sub_type == SubType.PARALLEL:
        return bool(inputs) and all(_is_coroutine_function(branch) for branch in inputs)
    return _is_coroutine_function(func)


def _is_coroutine_function(func: Any) -> bool:
    target = func
    for _ in range(3):  # a ParallelBranch, and the bound function of a decorated branch in it
        inner = getattr(target, "func", None)
        if inspect.isfunction(target) or not callable(inner):
            break
        target = inner
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(type(target).__call__)


def _guarded(predicate: Callable[[CompletionStatus], Any]) -> Callable[[CompletionStatus], Any]:
    def guarded(status: CompletionStatus) -> Any:
        try:
            return predicate(status)
        except Exception as exc:
            raise _CallbackFailed(str(exc)) from exc
    return guarded


def _record_result(result: BatchResult[Any], meta: dict[str, Any], config: MapConfig[Any] | ParallelConfig,
                   put: Callable[..., None], fail: Callable[[BaseException], ChildContextError],
                   op_id: str, execution_id: str, flat: bool) -> BatchResult[Any]:
    payload: bytes | str | None = None
    if config.serdes is not None or result.total_count < _SURELY_LARGE or flat:
        try:
            payload = serialize_value(config.serdes, result, op_id, execution_id)
        except SerDesError as exc:
            put(Status.FAILED, error=ErrorObject.from_exception(exc).to_dict(), meta=meta)
            raise
    if payload is None or (len(payload) > CHECKPOINT_SIZE_LIMIT_BYTES and not flat):
        # Too large for one record: keep a summary; a replay rebuilds the items from their records.
        try:
            if config.summary_generator is not None:
                meta["summary"] = str(config.summary_generator(result))
        except Exception as exc:
            raise fail(exc) from exc
        meta["replay_children"] = True
        put(Status.SUCCEEDED, None, meta=meta)
        return result
    put(Status.SUCCEEDED, payload, meta=meta)
    if config.serdes is None:
        # The items' values are already round-tripped; the default serdes gives this very
        # BatchResult back, so decoding what was just encoded would change nothing.
        return result
    replayed: BatchResult[Any] = deserialize_value(config.serdes, payload, op_id, execution_id)
    return replayed


def _read_prior(state: Any, path: tuple[int, ...], inputs: Sequence[Any], item_serdes: Any,
                names: Sequence[str | None] | None, sub_type: str, recompute: bool, lazy: bool = False) -> Prior:
    """The outcomes earlier runs recorded for this map's items (resume); with ``lazy``, only their
    statuses. An item whose input changed since its outcome was recorded raises
    NonDeterministicExecutionError, or with ``recompute`` runs again."""
    prior = Prior(done=bytearray(len(inputs)) if lazy else None)
    op_id = path_str(path)
    changed: list[int] = []
    code = compact_code(sub_type) if names is None else None
    for indexes, records in _stored.record_batches(state.store(), op_key(state.execution_id, path), op_id):
        if code is not None and all_compact(records) and countOf(map(itemgetter(0), records), code) == len(records):
            _compact_prior(prior, indexes, records, inputs, changed)
            continue
        for index, fields in zip(indexes, records, strict=True):
            _one_prior(state, prior, path, index, fields, inputs, item_serdes, names, sub_type, changed)
    if changed and not recompute:
        shown = ", ".join(map(str, changed[:5])) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise _drift(op_id, None, f"the inputs of items {shown} changed since their results were recorded")
    return prior


def _compact_prior(prior: Prior, indexes: list[int], records: list[list[Any]], inputs: Sequence[Any],
                   changed: list[int]) -> None:
    """``_one_prior`` for a batch of compact records of this map's sub-type (SUCCEEDED, default
    names and serdes: nothing to check of their identity): only their inputs' fingerprints."""
    n, done, items = len(inputs), prior.done, prior.items
    for index, fields in zip(indexes, records, strict=True):
        if index >= n:
            return  # the inputs shrank: items past the end are not part of this run
        fp = fields[1]
        if type(fp) is dict:
            fp = fp.get("fp")
        if fp is not None and fp != fingerprint(inputs[index]):
            changed.append(index)
        elif done is not None:
            done[index] = SUCCEEDED
        else:
            items[index] = BatchItem(index, BatchItemStatus.SUCCEEDED, fields[2], None)


def _one_prior(state: Any, prior: Prior, path: tuple[int, ...], index: int, fields: list[Any],
               inputs: Sequence[Any], item_serdes: Any, names: Sequence[str | None] | None, sub_type: str,
               changed: list[int]) -> None:
    """What the item record ``fields`` of item ``index`` tells a resume: a finished outcome, a stale
    FAILED record (retry_failed), a crash count, or drift (``changed``)."""
    done, n = prior.done, len(inputs)
    if index >= n:
        return  # the inputs shrank: items past the end are not part of this run
    outcome = item_outcome(fields, item_serdes, index, path_str(path), state.execution_id)
    record = as_record(fields)
    status, meta = record.status, record.meta
    check_identity(record, (*path, index), Kind.CONTEXT, sub_type,
                   names[index] if names is not None else record.name)
    recorded_fp = meta.get("fp") if meta else None
    if status in _DONE and recorded_fp is not None and recorded_fp != fingerprint(inputs[index]):
        changed.append(index)
        return
    if outcome is not None and (status == Status.SUCCEEDED or not state.retry_failed):
        if done is not None:
            done[index] = SUCCEEDED if outcome[0] == BatchItemStatus.SUCCEEDED else FAILED
        else:
            prior.items[index] = BatchItem(index, *outcome)
    elif outcome is not None:  # a FAILED item run again (retry_failed): its record is stale
        prior.stale[index] = record
    elif status == Status.STARTED:
        prior.crashes[index] = int((meta or {}).get("crashes", 0))


_DONE = frozenset((Status.SUCCEEDED, Status.FAILED))


def _drift(op_id: str, name: str | None, what: str) -> NonDeterministicExecutionError:
    return NonDeterministicExecutionError(
        f"Map '{name or op_id}' (operation {op_id}) cannot resume: {what}. Recorded results would not "
        "match the new inputs. Pass MapConfig(recompute_changed_inputs=True) to run changed items "
        "again, restore the old inputs, or start a new execution (another execution_id, or "
        "`durablemap rm ID`).", step_id=op_id)


def replay_batch(source: Any, path: tuple[int, ...], record: Record, serdes: Any = None,
                 item_serdes: Any = None) -> BatchResult[Any]:
    """The recorded BatchResult of the finished map at ``path``: from its record, or rebuilt from
    its item records (a large map's read from them on demand, see ``_stored``). ``source`` has the
    ``execution_id`` and a ``store()`` holding its records (an ExecutionState, or a reader of a
    store); ``serdes`` and ``item_serdes`` are the map's (None: the default serdes)."""
    op_id = path_str(path)
    if record.payload is not None:
        result: BatchResult[Any] = deserialize_value(serdes, record.payload, op_id, source.execution_id)
        return result
    started = list(record.get("started") or ())
    reason = CompletionReason(record.get("reason", "ALL_COMPLETED"))
    inputs, succeeded, failed = record.get("inputs"), record.get("succeeded"), record.get("failed")
    store = source.store()
    if (isinstance(inputs, int) and inputs >= _stored.LAZY_MIN_ITEMS and not record.get("flat")
            and isinstance(succeeded, int) and isinstance(failed, int)):
        return _stored.stored_result(store, source.execution_id, path, item_serdes, inputs=inputs, reason=reason,
                                     started=started, succeeded=succeeded, failed=failed)
    key, skip = op_key(source.execution_id, path), frozenset(started)
    if isinstance(inputs, int):
        columns = _stored.batch_columns(store, key, op_id, inputs, started, item_serdes, source.execution_id)
        counts = (columns.codes.count(SUCCEEDED), columns.codes.count(FAILED), columns.codes.count(RUNNING))
        return BatchResult.of_columns(columns, reason, counts)
    items: list[BatchItem[Any]] = []  # a record of an older version, without the number of inputs
    with paused(promote=True):  # a million new records and items would otherwise set off full collections over them
        for indexes, records in _stored.record_batches(store, key, op_id, 0, inputs):
            items += _stored.batch_items(indexes, records, skip, item_serdes, op_id, source.execution_id)
    if started:
        items.extend(BatchItem(index, BatchItemStatus.STARTED) for index in started)
        items.sort(key=lambda item: item.index)
    return BatchResult(items, reason)
