"""Fault isolation with real worker processes: a worker that dies takes down nothing but its item.

Like loky's own tests, a table of small "bad" callables crashes a worker at each stage, all run
through one parametrised test.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import resource
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from durablemap import (
    BatchResult,
    DurableContext,
    ExecutionError,
    ItemTimeoutError,
    NonDeterministicExecutionError,
    SerDesError,
    ValidationError,
    durable_execution,
)
from durablemap._errors import RetryableSerDesError
from durablemap.config import MapConfig, NestingType
from durablemap.serdes import SerDes, SerDesContext


def exit_3() -> None:
    os._exit(3)


def sigkill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def segfault() -> None:
    ctypes.string_at(0)


def cpu_rlimit() -> None:
    # Killed by the kernel (SIGXCPU) once the worker has used one more second of CPU.
    used = resource.getrusage(resource.RUSAGE_SELF)
    soft = int(used.ru_utime + used.ru_stime) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (soft, resource.RLIM_INFINITY))
    while True:
        pass


BAD = {"exit_3": exit_3, "sigkill": sigkill_self, "segfault": segfault, "cpu_rlimit": cpu_rlimit}


def maybe_crash(ctx: DurableContext, item: dict[str, Any], index: int, items: Any) -> int:
    if index == item["bad_index"]:
        marker = Path(item["dir"], f"attempt-{index}-{time.monotonic_ns()}")
        marker.touch()
        if item["always"] or len(list(Path(item["dir"]).glob(f"attempt-{index}-*"))) == 1:
            BAD[item["how"]]()
    time.sleep(0.01)
    return index * 2


@durable_execution
def crashing(event: dict[str, Any], context: DurableContext) -> BatchResult[int]:
    items = [event] * 12
    return context.map(items, maybe_crash, config=MapConfig(max_worker_crashes=event.get("max", 3)))


@pytest.mark.parametrize("how", sorted(BAD))
def test_a_crashing_item_fails_alone(tmp_path: Path, how: str) -> None:
    event = {"dir": str(tmp_path), "bad_index": 5, "always": True, "how": how}
    result = crashing.run(event, store=tmp_path / "s", workers=2)
    assert [i.index for i in result.succeeded()] == [i for i in range(12) if i != 5]
    assert result.get_results() == [i * 2 for i in range(12) if i != 5]
    (failed,) = result.failed()
    assert failed.index == 5
    assert failed.error is not None and failed.error.type == "durablemap.WorkerCrashedError"
    assert "item 5" in (failed.error.message or "") and "3 times" in (failed.error.message or "")
    assert len(list(tmp_path.glob("attempt-5-*"))) == 3
    # The failure is recorded: a re-run replays it without crashing anything again.
    again = crashing.run(event, store=tmp_path / "s", workers=2)
    assert again.to_dict() == result.to_dict()
    assert len(list(tmp_path.glob("attempt-5-*"))) == 3


def test_worker_crash_names_the_exit_code(tmp_path: Path) -> None:
    event = {"dir": str(tmp_path), "bad_index": 0, "always": True, "how": "exit_3", "max": 1}
    result = crashing.run(event, store=tmp_path / "s", workers=2)
    message = result.failed()[0].error.message  # type: ignore[union-attr]
    assert "exit code" in message and "3" in message
    with pytest.raises(Exception) as info:
        result.throw_if_error()
    assert info.value.error_type == "durablemap.WorkerCrashedError"  # type: ignore[attr-defined]


@pytest.mark.parametrize("how", ["exit_3", "segfault"])
def test_an_item_that_crashes_only_once_succeeds(tmp_path: Path, how: str) -> None:
    event = {"dir": str(tmp_path), "bad_index": 7, "always": False, "how": how}
    result = crashing.run(event, store=tmp_path / "s", workers=2)
    assert result.success_count == 12 and not result.has_failure
    assert len(list(tmp_path.glob("attempt-7-*"))) == 2


class ExitsReading(Sequence[int]):
    """Inputs read in the worker (a lazy sequence, as durablemap.inputs gives): reading item
    ``bad`` calls os._exit."""

    def __init__(self, n: int, bad: int) -> None:
        self.n, self.bad = n, bad

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.n))]
        if index == self.bad:
            os._exit(3)
        return index


def twice(ctx: DurableContext, item: int, index: int, items: Any) -> int:
    return item * 2


@durable_execution
def reading_crashes(event: Any, context: DurableContext) -> BatchResult[int]:
    return context.map(ExitsReading(20_000, 15_000), twice, config=MapConfig(max_worker_crashes=1))


def test_a_worker_that_dies_reading_an_input_is_charged_to_that_item(tmp_path: Path) -> None:
    # Reading an item's input is part of running it: the item whose input kills its worker is the
    # one FAILED, not the item before it in its chunk (which had finished). Item 15,000 is far enough
    # in for the map to run its chunks one item after another (the loop that reads items lazily).
    result = reading_crashes.run(None, store=tmp_path / "s", workers=2)
    assert [item.index for item in result.failed()] == [15_000]
    assert result.get_results() == [i * 2 for i in range(20_000) if i != 15_000]


def exit_now(code: int) -> None:
    os._exit(code)


def fault_now(code: int) -> None:
    ctypes.string_at(0)  # a segfault: faulthandler's report is the evidence


class KillsUnpickling:
    """An input whose unpickling kills the process that unpickles it: an ``os._exit`` or a segfault
    called from ``__reduce__``, as an extension module's state or a class's ``__setstate__`` may."""

    def __init__(self, how: Any, code: int = 3) -> None:
        self.how, self.code = how, code

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.how, (self.code,))


def length_or_index(ctx: DurableContext, item: Any, index: int, items: Any) -> Any:
    return len(item)


@durable_execution
def unpickling_crashes(event: Any, context: DurableContext) -> BatchResult[int]:
    n, bad = event["n"], event["bad"]
    inputs: list[Any] = [f"row-{i:06d}" if i % 2 else {"row": i} for i in range(n)]
    inputs[bad] = KillsUnpickling(exit_now if event["how"] == "exit" else fault_now)
    return context.map(inputs, length_or_index, config=MapConfig(max_worker_crashes=1))


@pytest.mark.parametrize(("n", "bad", "how"), [(100, 50, "exit"), (20_000, 15_000, "exit"), (3_000, 1_500, "segfault")])
def test_an_input_that_kills_its_worker_as_it_is_unpickled_fails_that_item_only(
        tmp_path: Path, n: int, bad: int, how: str) -> None:
    # A short list (it used to travel inside the map's spec: every worker died loading it, for ever)
    # and longer ones (items pickled a block at a time: the death was charged to the first item of
    # the chunk, and then to the next, one innocent item FAILED per death).
    result = unpickling_crashes.run({"n": n, "bad": bad, "how": how}, store=tmp_path / "s", workers=2)
    assert [item.index for item in result.failed()] == [bad]
    (failed,) = result.failed()
    assert failed.error is not None and failed.error.type == "durablemap.WorkerCrashedError"
    assert result.get_results() == [10 if i % 2 else 1 for i in range(n) if i != bad]


def kill_me(code: int) -> None:
    os.kill(os.getpid(), signal.SIGKILL)  # no evidence: as an OOM kill, or a C library's exit()


def raise_it(code: int) -> None:
    if code == 4:
        raise SystemExit(4)
    raise ValueError("this thing cannot be rebuilt here")


def with_extra(ctx: DurableContext, item: int, index: int, items: Any, extra: Any = None) -> int:
    return item


@durable_execution
def unloadable_function(event: Any, context: DurableContext) -> Any:
    first = context.map(list(range(10)), with_extra, name="fine").get_results()
    if event["poison"]:
        how = {"exit": exit_now, "sigkill": kill_me, "raise": raise_it}[event["poison"]]
        poison = KillsUnpickling(how, event.get("code", 3))
        return context.map(list(range(10)), functools.partial(with_extra, extra=poison), name="poisoned")
    return first


@pytest.mark.parametrize(("poison", "error"), [
    ("exit", r"died \(exit code .*loading map 'poisoned' 3 times in a row.*unpickl"),
    ("sigkill", r"died \(.*SIGKILL.*loading map 'poisoned' 10 times in a row.*unpickl"),
])
def test_a_function_that_kills_the_workers_that_unpickle_it_is_a_clear_error(
        tmp_path: Path, poison: str, error: str) -> None:
    # Every worker dies loading the map, before any item: no item is to blame. The map stops with a
    # ValidationError that says so, instead of breaking the pool for ever; what finished stays.
    with pytest.raises(ValidationError, match=error):
        unloadable_function.run({"poison": poison}, store=tmp_path / "s", workers=2, execution_id="unloadable")
    assert unloadable_function.run({"poison": None}, store=tmp_path / "s", workers=2,
                                   execution_id="unloadable") == list(range(10))


@pytest.mark.parametrize(("code", "raised"), [(3, "ValueError: this thing cannot be rebuilt here"),
                                              (4, "SystemExit: 4")])
def test_a_function_that_raises_as_workers_unpickle_it_is_a_clear_error(tmp_path: Path, code: int, raised: str) -> None:
    # It used to come out of the map as the bare exception; a SystemExit ended the job's process.
    with pytest.raises(ValidationError, match=rf"Map 'poisoned': a worker process cannot unpickle its function.*"
                                              rf"\({raised}\).*executor='inline'"):
        unloadable_function.run({"poison": "raise", "code": code}, store=tmp_path / "s", workers=2)


# -- item timeout ------------------------------------------------------------------------------
def hangs_on_three(ctx: DurableContext, item: int, index: int, items: Any) -> int:
    if index == 3:
        stuck_in_here(600)
    return item


def stuck_in_here(seconds: float) -> None:
    time.sleep(seconds)


@durable_execution
def timing_out(event: Any, context: DurableContext) -> BatchResult[int]:
    return context.map(list(range(8)), hangs_on_three, config=MapConfig(item_timeout=1.0))


def test_item_timeout_fails_the_item_with_its_stack(tmp_path: Path) -> None:
    result = timing_out.run(None, store=tmp_path / "s", workers=2)
    assert [i.index for i in result.succeeded()] == [0, 1, 2, 4, 5, 6, 7]
    (failed,) = result.failed()
    assert failed.index == 3
    assert failed.error is not None and failed.error.type == "durablemap.ItemTimeoutError"
    assert "item_timeout" in (failed.error.message or "")
    assert "stuck_in_here" in (failed.error.data or ""), failed.error.data
    assert issubclass(ItemTimeoutError, Exception)


# -- bad input ---------------------------------------------------------------------------------
@durable_execution
def unpicklable_func(event: Any, context: DurableContext) -> Any:
    import threading
    lock = threading.Lock()

    def uses_lock(ctx: DurableContext, item: int, index: int, items: Any) -> int:
        with lock:
            return item
    return context.map([1, 2, 3], uses_lock)


def identity(ctx: DurableContext, item: Any, index: int, items: Any) -> Any:
    return item


@durable_execution
def unpicklable_inputs(event: Any, context: DurableContext) -> Any:
    import threading
    return context.map([1, 2, threading.Lock()], identity)


def test_unpicklable_function_is_named_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"uses_lock.*pickle"):
        unpicklable_func.run(None, store=tmp_path / "s", workers=2)


def test_unpicklable_input_is_named_by_index(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"inputs\[2\].*pickle"):
        unpicklable_inputs.run(None, store=tmp_path / "s", workers=2)


class Opaque:
    pass


def returns_unserializable(ctx: DurableContext, item: int, index: int, items: Any) -> Any:
    return Opaque() if index == 1 else {index}  if index == 2 else item


@durable_execution
def unserializable(event: Any, context: DurableContext) -> BatchResult[Any]:
    return context.map([0, 1, 2, 3], returns_unserializable)


def test_unserializable_results_fail_their_items(tmp_path: Path) -> None:
    result = unserializable.run(None, store=tmp_path / "s", workers=2)
    assert [i.status.value for i in result.all] == ["SUCCEEDED", "FAILED", "FAILED", "SUCCEEDED"]
    for failed in result.failed():
        assert failed.error is not None and failed.error.type == "durablemap.SerDesError"
        assert f"item {failed.index}" in (failed.error.message or "")
    assert "Opaque" in (result.all[1].error.message or "")  # type: ignore[union-attr]
    assert "set" in (result.all[2].error.message or "")  # type: ignore[union-attr]
    assert SerDesError.__name__ == "SerDesError"


class Unpicklable(Exception):
    def __reduce__(self) -> Any:
        raise TypeError("this exception refuses to be pickled")


def raises_unpicklable(ctx: DurableContext, item: int, index: int, items: Any) -> int:
    if index == 1:
        raise Unpicklable("a strange failure")
    return item


@durable_execution
def strange_errors(event: Any, context: DurableContext) -> BatchResult[int]:
    return context.map([0, 1, 2], raises_unpicklable)


def test_an_exception_that_cannot_be_pickled_still_fails_its_item_with_text(tmp_path: Path) -> None:
    result = strange_errors.run(None, store=tmp_path / "s", workers=2)
    failed = result.all[1]
    assert failed.status.value == "FAILED"
    assert failed.error is not None
    assert failed.error.message == "a strange failure"
    assert failed.error.type is not None and failed.error.type.endswith("Unpicklable")


# -- input drift ---------------------------------------------------------------------------------
def double(ctx: DurableContext, item: dict[str, Any], index: int, items: Any) -> int:
    if index == 4 and Path(item["dir"], "stop").exists():
        # An error that ends the execution: the map stops with items 0-3 recorded, unfinished.
        raise ExecutionError("stopping the job half-way")
    return int(item["v"]) * 2


@durable_execution
def drifting(event: dict[str, Any], context: DurableContext) -> list[int | None]:
    config = MapConfig(max_concurrency=1, recompute_changed_inputs=event.get("recompute", False))
    items = [{"v": v, "dir": event["dir"]} for v in event["items"]]
    result = context.map(items, double, config=config)
    return [item.result for item in result.all]


def test_changed_inputs_are_detected_on_resume(tmp_path: Path) -> None:
    store, run = tmp_path / "s", {"execution_id": "d", "workers": 2}
    (tmp_path / "stop").touch()
    with pytest.raises(ExecutionError):
        drifting.run({"items": [0, 1, 2, 3, 4, 5], "dir": str(tmp_path)}, store=store, **run)
    (tmp_path / "stop").unlink()
    # Inputs 1 and 3 changed since their results were recorded: no silent replay of stale results.
    with pytest.raises(NonDeterministicExecutionError, match=r"items 1, 3 changed") as info:
        drifting.run({"items": [0, 10, 2, 30, 4, 5], "dir": str(tmp_path)}, store=store, **run)
    assert "recompute_changed_inputs" in str(info.value)
    recomputed = drifting.run({"items": [0, 10, 2, 30, 4, 5], "dir": str(tmp_path), "recompute": True},
                              store=store, **run)
    assert recomputed == [0, 20, 4, 60, 8, 10]
    # A finished map whose inputs grew is not replayed as if nothing happened either.
    with pytest.raises(NonDeterministicExecutionError, match="had 6 inputs, now 7"):
        drifting.run({"items": [0, 10, 2, 30, 4, 5, 6], "dir": str(tmp_path)}, store=store, **run)


# -- a store holding garbage -------------------------------------------------------------------
def test_garbage_records_give_store_error(tmp_path: Path) -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from durablemap import StoreError
    from durablemap._records import decode_record
    from durablemap._store import Store, op_key

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200))
    def decode(data: bytes) -> None:
        with contextlib.suppress(StoreError):
            decode_record(data)

    decode()

    # A map whose item records are garbage: resuming it says which record, as a StoreError.
    store = Store.open(tmp_path / "s")
    store.put(op_key("g", (1,)), b"\x93garbage")
    with pytest.raises(StoreError, match="cannot be decoded"):
        logging_handler.run(None, store=tmp_path / "s", execution_id="g", workers=2)


@durable_execution
def logging_handler(event: Any, context: DurableContext) -> Any:
    return context.map([1, 2], identity).get_results()


# -- errors that end the run, not the item ------------------------------------------------------
class FlakySerDes(SerDes[Any]):
    """A serdes whose backend is down: the whole run should fail and be retried, not the item."""

    def serialize(self, value: Any, serdes_context: SerDesContext) -> bytes:
        raise RetryableSerDesError("the serialization backend is unavailable; try later")

    def deserialize(self, data: str | bytes, serdes_context: SerDesContext) -> Any:
        return data


@durable_execution
def flaky_serdes(event: Any, context: DurableContext) -> Any:
    return context.map([1, 2, 3], identity, config=MapConfig(item_serdes=FlakySerDes()))


def test_retryable_serdes_error_propagates_with_its_type(tmp_path: Path) -> None:
    with pytest.raises(RetryableSerDesError, match="try later"):
        flaky_serdes.run(None, store=tmp_path / "s", workers=2)


@durable_execution
def nesting(event: dict[str, Any], context: DurableContext) -> Any:
    config = MapConfig(max_concurrency=1, nesting_type=NestingType[event["nesting"]])
    return context.map([{"v": v, "dir": event["dir"]} for v in range(6)], double, config=config).get_results()


def test_switching_nesting_type_on_resume_is_detected(tmp_path: Path) -> None:
    store, run = tmp_path / "s", {"execution_id": "n", "workers": 2}
    (tmp_path / "stop").touch()
    with pytest.raises(ExecutionError):
        nesting.run({"nesting": "NESTED", "dir": str(tmp_path)}, store=store, **run)
    (tmp_path / "stop").unlink()
    with pytest.raises(NonDeterministicExecutionError, match="nesting_type NESTED, and is now FLAT"):
        nesting.run({"nesting": "FLAT", "dir": str(tmp_path)}, store=store, **run)
    assert nesting.run({"nesting": "NESTED", "dir": str(tmp_path)}, store=store, **run) == [0, 2, 4, 6, 8, 10]


def count_tags(ctx: DurableContext, item: dict[str, Any], index: int, items: Any) -> int:
    if index == 4 and Path(item["dir"], "stop").exists():
        raise ExecutionError("stopping the job half-way")
    return len(item["tags"])


@durable_execution
def tagged(event: dict[str, Any], context: DurableContext) -> Any:
    items = [{"tags": {f"tag-{i}-{j}" for j in range(i + 3)}, "dir": event["dir"]} for i in range(6)]
    return context.map(items, count_tags, config=MapConfig(max_concurrency=1)).get_results()


def test_inputs_without_a_stable_encoding_resume_without_false_drift(tmp_path: Path) -> None:
    """A set's order changes from process to process: such inputs are not fingerprinted, so an
    unchanged input is never taken for a changed one."""
    (tmp_path / "stop").touch()
    with pytest.raises(ExecutionError):
        tagged.run({"dir": str(tmp_path)}, store=tmp_path / "s", execution_id="t", workers=2)
    (tmp_path / "stop").unlink()
    assert tagged.run({"dir": str(tmp_path)}, store=tmp_path / "s", execution_id="t", workers=2) == [
        3, 4, 5, 6, 7, 8]
