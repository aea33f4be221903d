"""What runs inside a worker process: a chunk of map items, each with its own context (the
operations layer's DurableContext, which the spec carries: the runtime does not import it).

    coordinator ── MapSpec (func, inputs, serdes; once per worker per map) ──> worker cache
    coordinator ── ChunkTask (spec ref, indexes) ──────────────────────────> run_chunk
    coordinator <── ChunkResult ((index, record bytes)..., elapsed, fatal) ── run_chunk

Items' results come back as encoded records; the coordinator commits them. Operations inside an
item (steps, waits, child contexts, nested maps) write their own records to the store from here.
A chunk runs its items one after another (the fast path for CPU-bound items), or several at once
when the coordinator allows it or the function is ``async def`` (``_inflight``).
"""

from __future__ import annotations

import asyncio
import contextvars
import faulthandler
import functools
import importlib
import inspect
import os
import signal
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NoReturn, TypeVar

import cloudpickle
import msgpack

from durablemap import _inflight, _logs, _memory
from durablemap._clock import set_turn
from durablemap._errors import (
    UNPICKLE_ADVICE,
    ErrorObject,
    ExecutionError,
    InvocationError,
    ItemTimeoutError,
    SerDesError,
    ValidationError,
    error_type_name,
)
from durablemap._exits import EXITS, describe_exit, is_real_interrupt, watching_signals
from durablemap._fingerprint import fingerprint
from durablemap._gc import paused
from durablemap._memory import init_item_memory, note_peak
from durablemap._records import ItemRecords, compact_code, item_keys, item_records
from durablemap._slots import LOADING, SlotWriter
from durablemap._state import item_slot
from durablemap._store import Store, path_str
from durablemap._store._runs import RUN_MAX
from durablemap._timeskip import await_turn, sleeper_path
from durablemap._timings import chunk_meta, stamp_chunk
from durablemap.executors._base import ChunkResult, MapSpec
from durablemap.executors._itemfile import ItemFile, mark_decoding
from durablemap.serdes import (
    deserialize_value,
    new_packer,
    pack_default,
    serialize_value,
    unpack_default,
)

__all__ = ["ChunkResult", "MapSpec", "failed_outcome", "init_worker", "run_chunk", "run_chunk_from_file", "run_item",
           "run_item_async"]


_slot: SlotWriter | None = None
# How many run_chunk calls are active in this thread or task (nested maps nest them): per context,
# since several items of a chunk run at once, each perhaps running a nested map.
_DEPTH: contextvars.ContextVar[int] = contextvars.ContextVar("durablemap_depth", default=0)
_specs: OrderedDict[str, MapSpec] = OrderedDict()
_virtual_maps: set[int] = set()  # tokens of the maps whose coordinator moves a virtual clock (_timeskip)
_SPEC_CACHE = 4


def init_worker(slot_dir: str, parent_pid: int) -> None:
    """Set up a loky worker: ignore Ctrl-C (the coordinator decides), dump stacks on SIGUSR1 (for
    item timeouts), publish a slot, and exit when the coordinator is gone."""
    global _slot
    # Ctrl-C and SIGTERM, sent to the whole process group, are the coordinator's to handle: it
    # lets items finish or stops the workers itself. A worker killed by them would count as a crash.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _slot = SlotWriter(slot_dir)
    mark_decoding(*_slot.decoding_field())
    init_item_memory(_slot)
    set_turn(functools.partial(_await_turn, slot_dir))
    stack_file = open(os.path.join(slot_dir, f"{os.getpid()}.stack"), "w")  # noqa: SIM115 - lives as long as the worker
    faulthandler.register(signal.SIGUSR1, file=stack_file, all_threads=True)
    # Evidence for fault attribution (_faults): a fatal signal leaves faulthandler's report in the
    # stack file, an os._exit marks the slot first. loky kills the other workers after one dies:
    # without evidence, they would look like culprits too.
    faulthandler.enable(file=stack_file, all_threads=True)
    os._exit = _marked_exit
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True,
                     name="durablemap-parent-watch").start()
    setup = os.environ.get("DURABLEMAP_WORKER_SETUP")
    if setup:  # "module:function", run once per worker (durablemap.testing's crash hooks)
        module, _, name = setup.partition(":")
        getattr(importlib.import_module(module), name)()


def _await_turn(slot_dir: str, wake_at: float) -> None:
    """A virtual sleep (the testing runner's clock) of a top-level item waits until its coordinator
    says time may move (see _timeskip); elsewhere (a nested map's item) it returns at once."""
    if _slot is None or _DEPTH.get() != 1 or _inflight.on_event_loop():
        return  # an item on an event loop would block the others there: its sleep is skipped at once
    token, index = _slot.current()
    if token not in _virtual_maps:
        return  # its coordinator does not move the clock (see MapSpec.virtual_time)
    if index < 0:
        index = _inflight.CURRENT_ITEM.get()
    if index >= 0:
        await_turn(sleeper_path(slot_dir, token, index), wake_at)


_real_exit = os._exit


def _marked_exit(status: int) -> NoReturn:
    """``os._exit`` in a worker: mark the slot (see ``_slots.SlotWriter.mark_exit``), then exit."""
    if _slot is not None:
        _slot.mark_exit(status, _inflight.CURRENT_ITEM.get())
    _real_exit(status)


def _watch_parent(parent_pid: int) -> None:
    # A worker whose coordinator was SIGKILLed would otherwise live on as an orphan.
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid:
            os._exit(0)


def run_chunk_from_file(ref: tuple[int, str], indexes: Sequence[int], concurrency: int = 1) -> ChunkResult:
    """Run a chunk of the map whose spec was published at ``ref`` (loaded once, then cached), up to
    ``concurrency`` items at once."""
    token, path = ref
    key = f"{token}:{path}"
    spec = _specs.get(key)
    if spec is None:
        for ended in [k for k in _specs if not os.path.exists(k.partition(":")[2])]:
            del _specs[ended]  # a map that ended: its inputs file (see executors._itemfile) closes
        spec = _load_spec(token, path)
        _specs[key] = spec
        while len(_specs) > _SPEC_CACHE:
            _specs.popitem(last=False)
    return run_chunk(spec, indexes, concurrency)


def _load_spec(token: int, path: str) -> MapSpec:
    """Unpickle the spec of map ``token``, the slot saying so meanwhile: unpickling runs code (the
    function's imports, ``__reduce__``) that may kill the worker, and such a death is the map's,
    not an item's (see ``_faults.FaultLedger.pool_broke``)."""
    slot = _slot if _DEPTH.get() == 0 else None
    if slot is not None:
        slot.begin(token, LOADING)
    try:
        with open(path, "rb") as fh:
            spec: MapSpec = cloudpickle.load(fh)
    except BaseException as exc:  # SystemExit too: sent back, it would end the coordinator's process
        raise ValidationError(
            f"a worker process cannot unpickle its function, its configuration or its inputs "
            f"({error_type_name(exc)}: {exc}). {UNPICKLE_ADVICE}") from None
    finally:
        if slot is not None:
            slot.end()
    return spec


def run_chunk(spec: MapSpec, indexes: Sequence[int], concurrency: int = 1) -> ChunkResult:
    """Run the items at ``indexes``: one after another, or up to ``concurrency`` at once (always
    on an event loop for an async function); stop at an error that ends the execution."""
    start, cpu = time.perf_counter(), time.process_time()
    depth = _DEPTH.get() + 1  # a nested map's chunk runs inside an item: the slot keeps naming the outer item
    depth_token = _DEPTH.set(depth)
    slot = _slot if depth == 1 else None
    if spec.virtual_time and depth == 1:
        _virtual_maps.add(spec.token)
    result = ChunkResult(spec.token, indexes, [], [], {}, 0.0)
    # The cyclic collector would scan the growing result lists again and again on a chunk of tiny
    # items; it runs once the chunk is done instead.
    try:
        with paused():
            if spec.is_async or (concurrency > 1 and len(indexes) > 1):
                _run_watched(spec, indexes, result, slot, functools.partial(_run_many, limit=concurrency), depth)
                _memory.shared_peak_done()
            else:
                _run_one_by_one(spec, indexes, result, slot, depth)
            result.elapsed = time.perf_counter() - start
            result.cpu = time.process_time() - cpu
            if spec.values_unused and result.committed:  # recorded in the store: only counted
                result.unsent, result.values = len(result.values), []
            return result
    finally:
        _DEPTH.reset(depth_token)


def _run_one_by_one(spec: MapSpec, indexes: Sequence[int], result: ChunkResult, slot: SlotWriter | None,
                    depth: int) -> None:
    """Run the chunk's items one after another, then record them in one durable commit."""
    wall, clock = time.time(), time.monotonic()
    plain = spec.item_serdes is None and spec.names is None and not spec.timeout_in_worker
    run = _run_plain_items if plain else _run_any_items
    marks: list[float] = []  # the clock before each item, then after the last (see _timings)
    # Plain results to be stored as runs (see _store._runs): their records are packed after the loop,
    # a run at a time, where each item's would cost a pack call.
    store = spec.state.store() if spec.commit_in_worker else None
    rows: list[tuple[Any, Any, Any]] | None = [] if plain and isinstance(store, Store) else None
    loop = (functools.partial(run, marks=marks) if rows is None
            else functools.partial(_run_plain_items, marks=marks, rows=rows))
    _run_watched(spec, indexes, result, slot, loop, depth)
    marks.append(time.monotonic())
    if slot is not None:
        slot.end()
    if result.fatal is not None:
        result.indexes = indexes[:len(result.records)]
    runs, kept = _runs(result, rows, spec.sub_type) if rows else ([], result.indexes)
    if result.records:  # the chunk's timings go in its last record (see _timings)
        stamp_chunk(result.records, chunk_meta(wall + marks[0] - clock, result.indexes, marks))
    if spec.commit_in_worker and result.records:
        # Records committed here, durably, before the results go back: the coordinator then
        # only counts them, and the fsync waits in this worker instead of in the coordinator.
        keys = item_keys(spec.key_prefix, kept)
        if runs and isinstance(store, Store):
            store.put_runs(spec.key_prefix, runs, keys, result.records)
        else:
            spec.state.store().put_columns(keys, result.records)
        result.records, result.committed = [], True


def _runs(result: ChunkResult, rows: list[tuple[Any, Any, Any]], sub_type: str,
          ) -> tuple[list[tuple[int, int, bytes]], Sequence[int]]:
    """The runs of a chunk whose plain results the item loop kept in ``rows`` (their records
    ``_IN_RUN``), and the indexes of the records left in ``result.records``: each stretch of at
    least ``_RUN_MIN`` such items in a row goes in runs, the others get a record each, and so does
    the chunk's last item (its record keeps the chunk's timings)."""
    records, indexes = result.records, result.indexes
    build = item_records(sub_type)
    runs: list[tuple[int, int, bytes]] = []
    kept_records: list[bytes] = []
    kept: list[int] = []
    row = 0
    position, size = 0, len(records)
    contiguous = type(indexes) is range and indexes.step == 1 and len(indexes) == size
    while position < size:
        if records[position]:  # a record of its own
            kept_records.append(records[position])
            kept.append(indexes[position])
            position += 1
            continue
        stop = position
        while stop < size - 1 and not records[stop]:  # the chunk's last item is never in a run
            stop += 1
        stretch = rows[row:row + stop - position]
        if contiguous and len(stretch) >= _RUN_MIN:
            try:
                runs.extend(_packed_runs(indexes[position], stretch))
                row, position = row + len(stretch), stop
                continue
            except OverflowError:  # an int past 64 bits: records one by one (see ItemRecords.plain)
                pass
        for _, fp, value in rows[row:row + max(stop - position, 1)]:
            one = build.plain(fp, value)
            kept_records.append(one if one is not None else _record(build, value, fp, b"", None)[1])
            kept.append(indexes[position])
            row, position = row + 1, position + 1
    result.records = kept_records
    return runs, kept


def _packed_runs(first: int, rows: list[tuple[Any, Any, Any]]) -> list[tuple[int, int, bytes]]:
    """The runs of the records ``rows`` of items ``first``, ``first + 1``... (see _store._runs)."""
    runs = []
    for start in range(0, len(rows), RUN_MAX):
        part = rows[start:start + RUN_MAX]
        packed = _pack_rows(part)
        runs.append((first + start, len(part), packed[_array_header_size(len(part)):]))
    return runs


def _array_header_size(count: int) -> int:
    """The size of the msgpack array header of ``count`` elements."""
    return 1 if count < 16 else 3 if count < 65536 else 5


_pack_rows = msgpack.Packer(use_bin_type=True).pack
_IN_RUN = b""  # the record of an item kept for a run (see _runs); no record is empty
_RUN_MIN = 16  # fewer items than this: a record each


def _run_many(spec: MapSpec, indexes: Sequence[int], result: ChunkResult, slot: SlotWriter | None,
              limit: int) -> dict[str, Any] | None:
    """Run the chunk's items several at once (see _inflight); each recorded as it finishes."""
    flight = _inflight.Flight(spec, indexes, result, slot, limit)
    _memory.share_peak()
    if spec.is_async:
        return _inflight.run_tasks(flight, functools.partial(run_item_async, spec))
    return _inflight.run_threads(flight, functools.partial(run_item, spec), _logs.current(), _logs.adopt)


def _run_watched(spec: MapSpec, indexes: Sequence[int], result: ChunkResult, slot: SlotWriter | None,
                 run: Callable[..., dict[str, Any] | None], depth: int) -> None:
    """Run the chunk's items into ``result``. At the top level (not a map nested in an item), watch
    for a real Ctrl-C (an inline map's items run on the main thread: a real Ctrl-C there must stop
    the job, while an item's own KeyboardInterrupt fails the item), and in a worker process keep the
    log records the items emit, for the coordinator to log (see _logs)."""
    if depth != 1:
        result.fatal = run(spec, indexes, result, slot)
        return
    with watching_signals():
        if spec.coordinator_pid in (0, os.getpid()):
            result.fatal = run(spec, indexes, result, slot)
            return
        with _logs.capture(spec.state.execution_id, spec.path, spec.state, spec.log_levels) as logs:
            result.fatal = run(spec, indexes, result, slot)
        result.logs = logs or None


def _fatal(exc: BaseException, index: int) -> dict[str, Any]:
    return {"type": error_type_name(exc), "message": str(exc), "index": index}


def _run_any_items(spec: MapSpec, indexes: Sequence[int], result: ChunkResult,
                   slot: SlotWriter | None, marks: list[float]) -> dict[str, Any] | None:
    """Run items one by one into ``result``, appending ``time.monotonic()`` to ``marks`` before
    each; the error that ends the execution, if one does."""
    records, values, errors, token = result.records, result.values, result.errors, spec.token
    mark, clock = marks.append, time.monotonic
    for index in indexes:
        mark(slot.begin(token, index) if slot is not None else clock())
        try:
            if spec.timeout_in_worker and spec.item_timeout:
                value, record, error = _run_item_within(spec, index, spec.item_timeout)
            else:
                value, record, error = run_item(spec, index)
        except (ExecutionError, InvocationError) as exc:
            return _fatal(exc, index)
        if error is not None:
            errors[len(records)] = error
        records.append(record)
        values.append(value)
    return None


def _run_plain_items(spec: MapSpec, indexes: Sequence[int], result: ChunkResult,
                     slot: SlotWriter | None, marks: list[float],
                     rows: list[tuple[Any, Any, Any]] | None = None) -> dict[str, Any] | None:
    """``_run_any_items`` for the common case (default serdes, default item names), with
    ``run_item``'s work inlined: this loop is most of a tiny item's cost. One clock read per item
    (an item starts when the one before it ended); a plain result (int, str...) is packed with its
    record in one call, or, given ``rows``, kept there (its record ``_IN_RUN``) to be packed with
    the chunk's others (see ``_runs``)."""
    records, values, errors = result.records, result.values, result.errors
    state, func, inputs, base, limit = spec.state, spec.func, spec.inputs, tuple(spec.path), spec.worker_memory_limit
    make_context, fingerprints = spec.context, spec.fingerprints
    build = item_records(spec.sub_type)
    plain, code = build.plain, compact_code(spec.sub_type)
    pack = new_packer().pack  # this loop's own: packing never re-enters it
    keep = rows.append if rows is not None and code is not None else None
    record: bytes | None
    # Only items of a millisecond or more are measured for memory: tiny items skip the call.
    memory, monotonic, measure = _memory._item_memory, time.monotonic, _memory.MEASURE_SECONDS
    mark = marks.append
    words, seconds = _item_fields(slot, spec.token, indexes)
    started = monotonic()
    current = item_slot(state)  # the item index logs report (see ExecutionState.item_index)
    for index, item in zip(indexes, _items_of(inputs, indexes, words, seconds), strict=True):
        seconds[2] = started  # the slot names the item, its start first (see SlotWriter.item_fields)
        words[1] = index
        mark(started)
        current[0] = index
        fp = (item if type(item) is int and _INT64_MIN <= item <= _INT64_MAX else fingerprint(item)
              ) if fingerprints else None
        try:
            # (Concatenation, not (*base, index): it costs half as much, once per item.)
            value = func(make_context(state, base + (index,)), item, index, inputs)  # noqa: RUF005
            if keep is not None and type(value) in _SELF_DECODING:
                keep((code, fp, value))
                record, payload = _IN_RUN, b""
            else:
                record = plain(fp, value)
                payload = pack(value) if record is None else b""
        except (ExecutionError, InvocationError) as exc:
            return _fatal(exc, index)
        except _ITEM_ERRORS as exc:
            if not isinstance(exc, Exception) and is_real_interrupt(exc):
                raise
            value, record, error = _item_broke(spec, index, exc, _meta(fp, note_peak(None, limit)))
            errors[len(records)] = error
            ended = monotonic()
        else:
            ended = monotonic()  # this item's end is the next one's start (read again after work)
            if memory is not None and ended - started >= measure:
                if record is _IN_RUN:
                    rows.pop()  # type: ignore[union-attr]  # kept above: this item's record has its memory
                value, record = _record(build, value, fp, payload, _measured(memory, slot, started, limit))
                ended = monotonic()
            elif record is None:
                value, record = _record(build, value, fp, payload, None)
                ended = monotonic()
        records.append(record)
        values.append(value)
        started = ended
    if memory is not None and limit:
        memory.note(None, limit)  # the periodic check against the worker limit, skipped above
    return None


def _item_fields(slot: SlotWriter | None, token: int,
                 indexes: Sequence[int]) -> tuple[memoryview[int], memoryview[float]]:
    """Where the item loop writes each item's index and start: the slot's fields once the chunk's
    first item is begun, or scratch fields when there is no slot (a nested map)."""
    if slot is None:
        scratch = memoryview(bytearray(32))
        return scratch.cast("q"), scratch.cast("d")
    if indexes:
        slot.begin(token, indexes[0])
    return slot.item_fields()


def _items_of(inputs: Sequence[Any], indexes: Sequence[int], words: memoryview[int],
              seconds: memoryview[float]) -> Iterable[Any]:
    """The chunk's items: a run of a list, tuple or range sliced at once (its first item named in
    the slot already), a run of an item file read at once (each item that runs code as it decodes
    named first: see ``ItemFile.read_run``), else read one by one as the loop reaches them, each
    named in the slot before it is read: reading an item's input is part of running it (a read that
    kills the worker is charged to that item, not to the one before it)."""
    if type(indexes) is range and indexes.step == 1:
        if type(inputs) is ItemFile:  # items that may run code as they decode are named first
            return inputs.read_run(indexes.start, indexes.stop, words)
        if type(inputs) in _SLICEABLE:
            return inputs[indexes.start:indexes.stop]
    return _named_reads(inputs, indexes, words, seconds)


def _named_reads(inputs: Sequence[Any], indexes: Sequence[int], words: memoryview[int],
                 seconds: memoryview[float]) -> Iterator[Any]:
    """``inputs[i]`` for each of ``indexes``, the slot naming ``i`` (its start first) as it is read."""
    read, clock = inputs.__getitem__, time.monotonic
    for index in indexes:
        seconds[2] = clock()
        words[1] = index
        yield read(index)


def _measured(memory: _memory.ItemMemory, slot: SlotWriter | None, started: float,
              limit: int | None) -> dict[str, Any] | None:
    """The peak memory of an item of a millisecond or more that started at ``started``."""
    if slot is not None:
        slot.started = started
    return memory.note(None, limit)


def _record(build: ItemRecords, value: Any, fp: int | bytes | None, payload: bytes,
            peak: dict[str, Any] | None) -> tuple[Any, bytes]:
    """The result as a replay sees it and the SUCCEEDED record, for a result that is not plain or
    an item whose memory was measured (``payload``: the value's bytes, or empty if not packed)."""
    payload = payload or pack_default(value)
    if type(value) not in _SELF_DECODING:
        value = unpack_default(payload)
    return value, build.fingerprinted(fp, payload) if peak is None else build.succeeded(payload, _meta(fp, peak))


_SLICEABLE = frozenset((list, tuple, range))
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1  # ints that are their own fingerprint (see _fingerprint)


# Values the default serdes gives back unchanged, type included: no need to decode what was encoded.
_SELF_DECODING = frozenset((int, float, str, bool, type(None)))
_E = TypeVar("_E", bound=BaseException)


_ITEM_ERRORS = (Exception, *EXITS)


def _item_broke(spec: MapSpec, index: int, exc: BaseException,
                meta: dict[str, Any] | None) -> tuple[None, bytes, dict[str, Any]]:
    """The FAILED record of an item that raised (``_item_failed``) or exited (``_item_exited``)."""
    if isinstance(exc, Exception):
        return _item_failed(spec, index, exc, meta)
    return _item_exited(spec, index, None, exc, meta)


def _item_failed(spec: MapSpec, index: int, exc: Exception,
                 meta: dict[str, Any] | None) -> tuple[None, bytes, dict[str, Any]]:
    """The FAILED record of an item whose function raised, or whose result cannot be serialized."""
    if isinstance(exc, SerDesError):
        return _unserializable(spec, index, None, exc, meta)
    return _failed(spec, None, ErrorObject.from_exception(_user_frames(exc)), meta)


def _item_exited(spec: MapSpec, index: int, name: str | None, exc: BaseException,
                 meta: dict[str, Any] | None) -> tuple[None, bytes, dict[str, Any]]:
    """The FAILED record of an item whose code raised SystemExit or KeyboardInterrupt (not a real
    Ctrl-C): it fails that item only, with a message naming what it raised."""
    raised = ErrorObject.from_exception(_user_frames(exc))
    message = describe_exit(exc, f"Item {index} of map '{path_str(spec.path)}'")
    return _failed(spec, name, ErrorObject(message, raised.type, None, raised.stack_trace), meta)


def _user_frames(exc: _E) -> _E:
    """``exc`` with the worker loop's own frame dropped from its traceback: the recorded stack
    starts in the user's function."""
    tb = exc.__traceback__
    return exc.with_traceback(tb.tb_next) if tb is not None and tb.tb_next is not None else exc


def _meta(fp: int | bytes | None, peak: dict[str, Any] | None) -> dict[str, Any] | None:
    if fp is None:
        return peak
    return {"fp": fp} if peak is None else {"fp": fp, **peak}


def _unserializable(spec: MapSpec, index: int, name: str | None, exc: SerDesError,
                    meta: dict[str, Any] | None) -> tuple[None, bytes, dict[str, Any]]:
    return _failed(spec, name, ErrorObject.from_exception(SerDesError(
        f"The result of item {index} of map '{path_str(spec.path)}' cannot be serialized: {exc}")), meta)


def _run_item_within(spec: MapSpec, index: int, seconds: float) -> tuple[Any, bytes, dict[str, Any] | None]:
    """``run_item`` with a time limit, where nothing outside can kill this process for it (a Dask
    worker thread): the item runs in a thread of its own; past the limit it is FAILED with
    ``ItemTimeoutError`` and its stack, and the thread is left to finish on its own."""
    box: dict[str, Any] = {}
    owner = _logs.current()

    def target() -> None:
        try:
            with _logs.adopt(owner):
                box["out"] = run_item(spec, index)
        except BaseException as exc:
            box["error"] = exc

    # In a copy of this context: the item's thread sees its chunk's journal and nesting depth.
    thread = threading.Thread(target=contextvars.copy_context().run, args=(target,),
                              name=f"durablemap-item-{index}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        frame = sys._current_frames().get(thread.ident or -1)
        stack = "".join(traceback.format_stack(frame)) if frame is not None else ""
        error = ErrorObject.from_exception(ItemTimeoutError(
            f"Item {index} of map '{path_str(spec.path)}' ran longer than item_timeout={seconds:g} s. "
            "Its stack is in the error data. On Dask its thread cannot be killed and runs on in the "
            "worker; raise MapConfig.item_timeout if it needs longer, or fix the hang."))
        return _failed(spec, None, ErrorObject(error.message, error.type, stack, error.stack_trace), None)
    if "error" in box:
        raise box["error"]
    result: tuple[Any, bytes, dict[str, Any] | None] = box["out"]
    return result


def run_item(spec: MapSpec, index: int) -> tuple[Any, bytes, dict[str, Any] | None]:
    """Run one item: its result as a replay will see it, its encoded record, and its error dict
    when it FAILED. A coroutine it returns (an async function on a thread) is run to its end."""
    path, name, meta = _item_start(spec, index)
    try:
        value = spec.func(spec.context(spec.state, path), spec.inputs[index], index, spec.inputs)
        if inspect.isawaitable(value):
            value = asyncio.run(_awaited(value))
    except (ExecutionError, InvocationError):
        raise
    except BaseException as exc:
        return _item_raised(spec, index, name, meta, exc)
    return _item_settled(spec, index, name, path, note_peak(meta, spec.worker_memory_limit), value)


async def run_item_async(spec: MapSpec, index: int) -> tuple[Any, bytes, dict[str, Any] | None]:
    """``run_item`` for an item on an event loop: an awaitable result is awaited there."""
    path, name, meta = _item_start(spec, index)
    try:
        value = spec.func(spec.context(spec.state, path), spec.inputs[index], index, spec.inputs)
        if inspect.isawaitable(value):
            value = await value
    except (ExecutionError, InvocationError):
        raise
    except BaseException as exc:
        return _item_raised(spec, index, name, meta, exc)
    return _item_settled(spec, index, name, path, note_peak(meta, spec.worker_memory_limit), value)


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _item_start(spec: MapSpec, index: int) -> tuple[tuple[int, ...], str | None, dict[str, Any] | None]:
    """An item's path, name and first record meta (its input's fingerprint); notes its index."""
    spec.state.item_index = index
    name = spec.names[index] if spec.names is not None else None
    fp = fingerprint(spec.inputs[index]) if spec.fingerprints else None
    return (*spec.path, index), name, ({"fp": fp} if fp is not None else None)


def _item_raised(spec: MapSpec, index: int, name: str | None, meta: dict[str, Any] | None,
                 exc: BaseException) -> tuple[Any, bytes, dict[str, Any] | None]:
    """The FAILED record of an item that raised ``exc``; a real Ctrl-C (and what no item should
    catch, such as a task's cancellation) propagates."""
    if isinstance(exc, Exception):
        return _failed(spec, name, ErrorObject.from_exception(_user_frames(exc)),
                       note_peak(meta, spec.worker_memory_limit))
    if isinstance(exc, EXITS) and not is_real_interrupt(exc):
        return _item_exited(spec, index, name, exc, note_peak(meta, spec.worker_memory_limit))
    raise exc


def _item_settled(spec: MapSpec, index: int, name: str | None, path: tuple[int, ...],
                  meta: dict[str, Any] | None, value: Any) -> tuple[Any, bytes, dict[str, Any] | None]:
    """The SUCCEEDED record of an item that returned ``value`` (FAILED if it cannot be serialized)."""
    state, serdes = spec.state, spec.item_serdes
    try:
        if serdes is None:
            payload = pack_default(value)
            return unpack_default(payload), item_records(spec.sub_type).succeeded(payload, meta, name), None
        encoded = serialize_value(serdes, value, path_str(path), state.execution_id)
    except SerDesError as exc:
        return _unserializable(spec, index, name, exc, meta)
    try:
        returned = deserialize_value(serdes, encoded, path_str(path), state.execution_id)
    except SerDesError as exc:
        return _failed(spec, name, ErrorObject.from_exception(SerDesError(
            f"The result of item {index} of map '{path_str(spec.path)}' was serialized but its serdes "
            f"cannot read it back: {exc}")), meta)
    return returned, item_records(spec.sub_type).serialized(encoded, meta, name), None


def failed_outcome(spec: MapSpec, index: int, error: ErrorObject) -> tuple[None, bytes, dict[str, Any]]:
    """The FAILED outcome of item ``index`` with ``error`` (an item timed out in its worker)."""
    return _failed(spec, spec.names[index] if spec.names is not None else None, error, None)


def _failed(spec: MapSpec, name: str | None, error: ErrorObject,
            meta: dict[str, Any] | None) -> tuple[None, bytes, dict[str, Any]]:
    recorded = error.to_dict()
    return None, item_records(spec.sub_type).failed(recorded, meta, name), recorded
