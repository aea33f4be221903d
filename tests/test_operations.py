"""Operations inside map items (CONTRACT section 6, issue 3): steps, retries, waits, child contexts,
parallel and nested maps, FLAT nesting, non-determinism detection and the replay-silent logger.

Items run in real loky worker processes unless a test says otherwise, so calls are counted by
appending lines to files under ``tmp_path``: a test reads them back after the run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import psutil
import pytest

from durablemap import (
    DurableContext,
    DurableExecutionsError,
    Duration,
    ExecutionError,
    NonDeterministicExecutionError,
    StepContext,
    durable_execution,
    durable_step,
    durable_with_child_context,
)
from durablemap._clock import Clock, VirtualClock
from durablemap._errors import RetryableSerDesError
from durablemap._records import decode_record
from durablemap._store import Store, decode_key, execution_prefix, path_str
from durablemap.config import MapConfig, NestingType, ParallelConfig, StepConfig, StepSemantics
from durablemap.executors import LokyExecutor
from durablemap.retries import RetryPresets, RetryStrategyConfig, create_retry_strategy

# -- helpers ---------------------------------------------------------------------------------------


def note(log_dir: str, line: str) -> None:
    """Append one line to ``log_dir/calls`` (O_APPEND: lines from many processes do not mix)."""
    with open(os.path.join(log_dir, "calls"), "a") as fh:
        fh.write(line + "\n")


def calls(log_dir: Path | str) -> list[str]:
    """The lines ``note`` wrote, in the order they were written."""
    path = os.path.join(log_dir, "calls")
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return fh.read().splitlines()


def records(store: Path, execution_id: str) -> dict[str, Any]:
    """Every record of an execution by operation id (``"1/0/2"``), decoded."""
    out: dict[str, Any] = {}
    with Store.open(store, readonly=True) as handle:
        for key, raw in handle.scan(execution_prefix(execution_id)):
            out[path_str(decode_key(key)[1])] = decode_record(raw)
    return out


def run(handler: Any, event: Any, tmp_path: Path, **kwargs: Any) -> Any:
    kwargs.setdefault("execution_id", "test")
    return handler.run(event, store=tmp_path / "store", workers=2, progress=False, **kwargs)


def loky_workers() -> list[psutil.Process]:
    """This process's live loky worker processes."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "loky" in " ".join(child.cmdline()) and "resource_tracker" not in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


@pytest.fixture(autouse=True, scope="module")
def _no_workers_left() -> Any:
    """The reusable pool serves every test of this module; at the end it is shut down and no worker
    process may be left (loky's resource trackers are per-process singletons and stay)."""
    yield
    LokyExecutor(2).stop_running()
    _gone, alive = psutil.wait_procs(loky_workers(), timeout=10)
    assert not alive, f"worker processes left behind: {alive}"


# -- the seed's example: operations within map functions -------------------------------------------


@durable_step
def fetch_user_data(step_context: StepContext, user_id: str) -> dict[str, Any]:
    """Fetch user data from external service."""
    return {"user_id": user_id, "name": "Jane Doe", "email": "jane_doe@example.com"}


@durable_step
def send_notification(step_context: StepContext, user: dict[str, Any]) -> dict[str, Any]:
    """Send notification to user."""
    return {"sent": True, "email": user["email"]}


def process_user(context: DurableContext, user_id: str, index: int, user_ids: list[str]) -> dict[str, Any]:
    user = context.step(fetch_user_data(user_id))
    notification = context.step(send_notification(user))
    return {"user_id": user_id, "notification_sent": notification["sent"]}


@durable_execution
def seed_handler(event: dict[str, Any], context: DurableContext) -> dict[str, Any]:
    user_ids = ["user_1", "user_2", "user_3"]
    result = context.map(user_ids, process_user)
    return result.to_dict()


def test_seed_example_steps_within_map_functions(tmp_path: Path) -> None:
    out = run(seed_handler, {}, tmp_path)
    assert [e["status"] for e in out["all"]] == ["SUCCEEDED"] * 3
    assert [e["result"] for e in out["all"]] == [
        {"user_id": f"user_{i + 1}", "notification_sent": True} for i in range(3)]
    recs = records(tmp_path / "store", "test")
    # the map is operation 1, item i is 1/i, its two steps are 1/i/1 and 1/i/2, named after the functions
    for i in range(3):
        assert recs[f"1/{i}"].sub_type == "MapIteration"
        assert (recs[f"1/{i}/1"].name, recs[f"1/{i}/1"].status) == ("fetch_user_data", "SUCCEEDED")
        assert (recs[f"1/{i}/2"].name, recs[f"1/{i}/2"].status) == ("send_notification", "SUCCEEDED")
    assert run(seed_handler, {}, tmp_path) == out


# -- a map whose items run steps: results, replay, resume at the unfinished step --------------------


def stepping_item(context: DurableContext, item: dict[str, Any], index: int, items: Any) -> int:
    log = item["log"]

    def first(step_context: StepContext) -> int:
        note(log, f"first {index}")
        return index * 10

    def second(step_context: StepContext) -> int:
        note(log, f"second {index}")
        return index + 1

    a = context.step(first, config=StepConfig(retry_strategy=RetryPresets.none()))
    if index == item["fail_after_first"] and not os.path.exists(os.path.join(log, "fixed")):
        raise ValueError(f"item {index} not ready")
    b = context.step(second, config=StepConfig(retry_strategy=RetryPresets.none()))
    return a + b


@durable_execution
def stepping_map(event: dict[str, Any], context: DurableContext) -> list[Any]:
    items = [{"log": event["log"], "fail_after_first": event["fail_after_first"]}] * event["n"]
    return context.map(items, stepping_item, name="stepping").to_dict()["all"]


def test_items_run_steps_and_a_second_run_calls_no_step(tmp_path: Path) -> None:
    event = {"log": str(tmp_path), "n": 5, "fail_after_first": -1}
    first = run(stepping_map, event, tmp_path)
    assert [e["result"] for e in first] == [i * 10 + i + 1 for i in range(5)]
    assert sorted(calls(tmp_path)) == sorted([f"first {i}" for i in range(5)] + [f"second {i}" for i in range(5)])
    again = run(stepping_map, event, tmp_path)
    assert again == first
    assert len(calls(tmp_path)) == 10  # nothing ran again


def test_an_unfinished_item_resumes_after_its_recorded_step(tmp_path: Path) -> None:
    event = {"log": str(tmp_path), "n": 3, "fail_after_first": 1}
    first = run(stepping_map, event, tmp_path)
    assert [e["status"] for e in first] == ["SUCCEEDED", "FAILED", "SUCCEEDED"]
    assert first[1]["error"]["ErrorMessage"] == "item 1 not ready"
    (tmp_path / "fixed").touch()
    second = run(stepping_map, event, tmp_path, retry_failed=True)
    assert [e["result"] for e in second] == [1, 12, 23]
    # item 1's first step replayed; only its second step ran on the second run
    assert calls(tmp_path).count("first 1") == 1
    assert calls(tmp_path).count("second 1") == 1
    assert len(calls(tmp_path)) == 6


# -- FLAT nesting ----------------------------------------------------------------------------------


def flat_item(context: DurableContext, item: dict[str, Any], index: int, items: Any) -> int:
    note(item["log"], f"body {index}")

    def work(step_context: StepContext) -> int:
        note(item["log"], f"step {index}")
        return index * index

    value = context.step(work, name=f"work-{index}")
    if index == 2 and not os.path.exists(os.path.join(item["log"], "resumed")):
        open(os.path.join(item["log"], "resumed"), "w").close()
        raise ExecutionError("simulated end of the run")
    return value


@durable_execution
def flat_map(event: dict[str, Any], context: DurableContext) -> list[Any]:
    config = MapConfig(max_concurrency=1, nesting_type=NestingType.FLAT)
    items = [{"log": event["log"]}] * 4
    return context.map(items, flat_item, name="flat", config=config).get_results()


def test_flat_nesting_records_no_items_and_resume_reruns_bodies_whose_steps_replay(tmp_path: Path) -> None:
    event = {"log": str(tmp_path)}
    with pytest.raises(ExecutionError, match="simulated"):
        run(flat_map, event, tmp_path)
    assert calls(tmp_path) == ["body 0", "step 0", "body 1", "step 1", "body 2", "step 2"]
    recs = records(tmp_path / "store", "test")
    assert not [op for op in recs if op.count("/") == 1], "FLAT records no item contexts"
    assert recs["1"].status == "STARTED"
    assert {op: r.name for op, r in recs.items() if op.count("/") == 2} == {
        "1/0/1": "work-0", "1/1/1": "work-1", "1/2/1": "work-2"}

    assert run(flat_map, event, tmp_path) == [0, 1, 4, 9]
    # every body ran again, but the steps of the first run replayed
    assert calls(tmp_path)[6:] == ["body 0", "body 1", "body 2", "body 3", "step 3"]
    recs = records(tmp_path / "store", "test")
    assert not [op for op in recs if op.count("/") == 1]
    assert recs["1"].status == "SUCCEEDED"
    assert run(flat_map, event, tmp_path) == [0, 1, 4, 9]
    assert len(calls(tmp_path)) == 11


# -- waits -----------------------------------------------------------------------------------------


def waiting_item(context: DurableContext, item: dict[str, Any], index: int, items: Any) -> str:
    context.wait(Duration.from_hours(2), name="long")
    context.wait(5)
    return f"woke {index}"


@durable_execution
def waiting_map(event: Any, context: DurableContext) -> list[Any]:
    return context.map([0, 1, 2], waiting_item).get_results()


def test_an_item_waits_on_a_virtual_clock(tmp_path: Path) -> None:
    assert run(waiting_map, None, tmp_path, clock=VirtualClock()) == ["woke 0", "woke 1", "woke 2"]
    recs = records(tmp_path / "store", "test")
    for i in range(3):
        long, short = recs[f"1/{i}/1"], recs[f"1/{i}/2"]
        assert (long.kind, long.name, long.status, long.get("seconds")) == ("WAIT", "long", "SUCCEEDED", 7200)
        assert (short.name, short.status, short.get("seconds")) == (None, "SUCCEEDED", 5)


class InterruptingClock(Clock):
    """A real clock whose first sleep ends the run, as a crash during a wait would."""

    def sleep(self, seconds: float) -> None:
        raise ExecutionError("simulated crash while waiting")


class RecordingClock(Clock):
    """A real clock that writes down every sleep it is asked for, then sleeps."""

    def __init__(self, log: str) -> None:
        self.log = log

    def sleep(self, seconds: float) -> None:
        note(self.log, f"sleep {seconds!r}")
        super().sleep(seconds)


def one_second_item(context: DurableContext, item: str, index: int, items: Any) -> float:
    context.wait(1, name="pause")

    def after(step_context: StepContext) -> float:
        return context.state.clock.time()

    return context.step(after, name="after")


@durable_execution
def one_second_map(event: Any, context: DurableContext) -> list[Any]:
    return context.map(["only"], one_second_item).get_results()


def test_a_resumed_wait_waits_only_until_its_recorded_deadline(tmp_path: Path) -> None:
    with pytest.raises(ExecutionError, match="simulated crash while waiting"):
        run(one_second_map, None, tmp_path, clock=InterruptingClock())
    wait = records(tmp_path / "store", "test")["1/0/1"]
    assert (wait.status, wait.get("seconds")) == ("STARTED", 1)
    deadline = wait.get("deadline")

    [woke] = run(one_second_map, None, tmp_path, clock=RecordingClock(str(tmp_path)))
    assert woke >= deadline
    [asked] = [float(line.split()[1]) for line in calls(tmp_path)]
    assert asked < 1.0, "the resumed wait asked for less than the whole second"
    assert records(tmp_path / "store", "test")["1/0/1"].get("deadline") == deadline

    # a resume after the deadline does not wait at all (and a finished wait replays)
    assert run(one_second_map, None, tmp_path, clock=RecordingClock(str(tmp_path))) == [woke]
    assert len(calls(tmp_path)) == 1


def test_wait_rejects_less_than_a_second(tmp_path: Path) -> None:
    @durable_execution
    def handler(event: Any, context: DurableContext) -> None:
        context.wait(0.5)

    from durablemap import ValidationError
    with pytest.raises(ValidationError, match="at least 1 second"):
        run(handler, None, tmp_path, executor="inline")


# -- retries ---------------------------------------------------------------------------------------


def retrying_item(context: DurableContext, item: dict[str, Any], index: int, items: Any) -> Any:
    def flaky(step_context: StepContext) -> str:
        note(item["log"], f"attempt {index} {step_context.attempt}")
        if step_context.attempt <= item["failures"]:
            raise item["error"](f"failure {step_context.attempt} of item {index}")
        return f"ok after {step_context.attempt}"

    config = StepConfig(retry_strategy=create_retry_strategy(RetryStrategyConfig(**item["retry"])))
    return context.step(flaky, name="flaky", config=config)


@durable_execution
def retrying_map(event: dict[str, Any], context: DurableContext) -> list[Any]:
    item = {"log": event["log"], "failures": event["failures"], "error": event["error"], "retry": event["retry"]}
    return context.map([item] * event.get("n", 1), retrying_item).to_dict()["all"]


def test_retries_see_attempts_one_two_three_and_succeed(tmp_path: Path) -> None:
    event = {"log": str(tmp_path), "failures": 2, "error": ValueError, "n": 2,
             "retry": {"max_attempts": 3, "initial_delay": Duration(30)}}
    clock = VirtualClock()
    out = run(retrying_map, event, tmp_path, execution_id="retry", clock=clock)
    assert [e["result"] for e in out] == ["ok after 3", "ok after 3"]
    for i in range(2):
        assert [line for line in calls(tmp_path) if line.startswith(f"attempt {i}")] == [
            f"attempt {i} 1", f"attempt {i} 2", f"attempt {i} 3"]
    step = records(tmp_path / "store", "retry")["1/0/1"]
    assert (step.status, step.get("attempt")) == ("SUCCEEDED", 3)


def test_exhausted_retries_fail_the_item_with_step_error_and_the_original_message(tmp_path: Path) -> None:
    event = {"log": str(tmp_path), "failures": 99, "error": KeyError,
             "retry": {"max_attempts": 3, "initial_delay": Duration(1)}}
    [entry] = run(retrying_map, event, tmp_path, clock=VirtualClock())
    assert entry["status"] == "FAILED"
    assert entry["error"]["ErrorType"] == "durablemap.StepError"
    assert entry["error"]["ErrorMessage"] == "'failure 3 of item 0'"
    assert calls(tmp_path) == ["attempt 0 1", "attempt 0 2", "attempt 0 3"]
    step = records(tmp_path / "store", "test")["1/0/1"]
    assert (step.status, step.error["ErrorType"]) == ("FAILED", "KeyError")
    # a replay raises the same StepError again without running the step
    assert run(retrying_map, event, tmp_path, clock=VirtualClock()) == [entry]
    assert len(calls(tmp_path)) == 3


def test_an_error_type_not_listed_as_retryable_is_not_retried(tmp_path: Path) -> None:
    event = {"log": str(tmp_path), "failures": 99, "error": ValueError,
             "retry": {"max_attempts": 5, "retryable_error_types": [KeyError]}}
    [entry] = run(retrying_map, event, tmp_path, clock=VirtualClock())
    assert entry["status"] == "FAILED"
    assert (entry["error"]["ErrorType"], entry["error"]["ErrorMessage"]) == ("durablemap.StepError", "failure 1 of item 0")
    assert calls(tmp_path) == ["attempt 0 1"]


def test_the_default_strategy_retries_six_times_in_total(tmp_path: Path) -> None:
    @durable_execution
    def handler(event: Any, context: DurableContext) -> Any:
        def always(step_context: StepContext) -> None:
            note(str(tmp_path), f"attempt {step_context.attempt}")
            raise RuntimeError("down")
        return context.step(always, name="always")

    from durablemap import StepError
    clock = VirtualClock()
    with pytest.raises(StepError, match="down"):
        run(handler, None, tmp_path, executor="inline", clock=clock)
    assert calls(tmp_path) == [f"attempt {n}" for n in range(1, 7)]
    assert clock.slept > 0  # the delays were taken from the (virtual) clock


# -- AT_MOST_ONCE_PER_RETRY: an interrupted attempt is not run again --------------------------------


def at_most_once_item(context: DurableContext, item: dict[str, Any], index: int, items: Any) -> Any:
    def charge(step_context: StepContext) -> str:
        note(item["log"], f"charge attempt {step_context.attempt}")
        if step_context.attempt == 1:
            os._exit(3)  # the worker dies after the step's STARTED record, before any result
        return f"charged on attempt {step_context.attempt}"

    retry = create_retry_strategy(RetryStrategyConfig(max_attempts=item["max_attempts"], initial_delay=Duration(1)))
    config = StepConfig(retry_strategy=retry, step_semantics=StepSemantics.AT_MOST_ONCE_PER_RETRY)
    return context.step(charge, name="charge", config=config)


@durable_execution
def at_most_once_map(event: dict[str, Any], context: DurableContext) -> list[Any]:
    return context.map([{"log": event["log"], "max_attempts": event["max_attempts"]}], at_most_once_item,
                       name="payments").to_dict()["all"]


def test_at_most_once_interrupted_attempt_counts_as_failed_and_is_not_rerun(tmp_path: Path) -> None:
    event = {"log": str(tmp_path), "max_attempts": 3}
    [entry] = run(at_most_once_map, event, tmp_path, clock=VirtualClock())
    assert entry["status"] == "SUCCEEDED"
    assert entry["result"] == "charged on attempt 2"
    assert calls(tmp_path) == ["charge attempt 1", "charge attempt 2"]


def test_at_most_once_interruption_without_retries_fails_the_item(tmp_path: Path) -> None:
    event = {"log": str(tmp_path), "max_attempts": 1}
    [entry] = run(at_most_once_map, event, tmp_path, clock=VirtualClock())
    assert entry["status"] == "FAILED"
    assert entry["error"]["ErrorType"] == "durablemap.StepError"
    assert "interrupted" in entry["error"]["ErrorMessage"]
    assert calls(tmp_path) == ["charge attempt 1"]
    step = records(tmp_path / "store", "test")["1/0/1"]
    assert step.error["ErrorType"] == "durablemap.StepInterruptedError"


# -- child contexts --------------------------------------------------------------------------------


@durable_with_child_context
def enrich(context: DurableContext, value: int, log: str) -> dict[str, int]:
    def double(step_context: StepContext) -> int:
        note(log, f"double {value}")
        return value * 2

    doubled = context.step(double)
    return {"value": value, "doubled": doubled}


def child_item(context: DurableContext, item: dict[str, Any], index: int, items: Any) -> Any:
    return context.run_in_child_context(enrich(item["value"], item["log"]))


@durable_execution
def child_map(event: dict[str, Any], context: DurableContext) -> list[Any]:
    return context.map([{"value": v, "log": event["log"]} for v in (1, 2)], child_item).get_results()


def test_child_context_inside_an_item(tmp_path: Path) -> None:
    event = {"log": str(tmp_path)}
    assert run(child_map, event, tmp_path) == [{"value": 1, "doubled": 2}, {"value": 2, "doubled": 4}]
    recs = records(tmp_path / "store", "test")
    assert (recs["1/0/1"].sub_type, recs["1/0/1"].name) == ("RunInChildContext", "enrich")
    assert (recs["1/0/1/1"].sub_type, recs["1/0/1/1"].name) == ("Step", "double")
    assert run(child_map, event, tmp_path) == [{"value": 1, "doubled": 2}, {"value": 2, "doubled": 4}]
    assert sorted(calls(tmp_path)) == ["double 1", "double 2"]


# -- nested maps and parallel inside items ---------------------------------------------------------


def leaf(context: DurableContext, item: dict[str, Any], index: int, items: Any) -> int:
    note(item["log"], f"leaf {item['path']} pid {os.getpid()}")

    def square(step_context: StepContext) -> int:
        note(item["log"], f"square {item['path']}")
        return item["value"] ** 2

    return context.step(square)


def middle(context: DurableContext, item: dict[str, Any], index: int, items: Any) -> int:
    note(item["log"], f"middle {item['path']}")
    inner = [{"log": item["log"], "value": item["value"] + j, "path": f"{item['path']}.{j}"} for j in range(3)]
    return sum(context.map(inner, leaf, config=MapConfig(max_concurrency=2)).get_results())


def outer(context: DurableContext, item: dict[str, Any], index: int, items: Any) -> int:
    note(item["log"], f"outer {index} pid {os.getpid()}")
    inner = [{"log": item["log"], "value": 10 * index + j, "path": f"{index}.{j}"} for j in range(2)]
    return sum(context.map(inner, middle).get_results())


@durable_execution
def nested_maps(event: dict[str, Any], context: DurableContext) -> list[int]:
    return context.map([{"log": event["log"]}] * 2, outer, name="outer").get_results()


def _expected_nested() -> list[int]:
    return [sum((10 * i + j + k) ** 2 for j in range(2) for k in range(3)) for i in range(2)]


def test_a_nested_map_two_levels_deep(tmp_path: Path) -> None:
    event = {"log": str(tmp_path)}
    assert run(nested_maps, event, tmp_path) == _expected_nested()
    lines = calls(tmp_path)
    assert sorted(line for line in lines if line.startswith("square")) == sorted(
        f"square {i}.{j}.{k}" for i in range(2) for j in range(2) for k in range(3))
    assert len(lines) == 2 + 4 + 12 + 12
    # nested items run inside the worker of their outer item: no pool per worker, no other process
    pid_of = {line.split()[1]: line.split()[-1] for line in lines if line.startswith(("outer", "leaf"))}
    for path, pid in pid_of.items():
        assert pid == pid_of[path.split(".")[0]] != str(os.getpid())
    recs = records(tmp_path / "store", "test")
    # ids: outer map 1, its item i is 1/i, the map inside it 1/i/1, its item j 1/i/1/j, and so on
    leaf_steps = sorted(op for op, r in recs.items() if r.kind == "STEP")
    assert leaf_steps == sorted(f"1/{i}/1/{j}/1/{k}/1" for i in range(2) for j in range(2) for k in range(3))
    assert {recs[f"1/{i}/1/{j}"].sub_type for i in range(2) for j in range(2)} == {"MapIteration"}
    assert all(r.status == "SUCCEEDED" for r in recs.values())

    # the same ids in a fresh execution, whatever order the items finished in
    assert run(nested_maps, event, tmp_path, execution_id="other") == _expected_nested()
    assert sorted(records(tmp_path / "store", "other")) == sorted(recs)
    # replay runs nothing
    before = len(calls(tmp_path))
    assert run(nested_maps, event, tmp_path) == _expected_nested()
    assert len(calls(tmp_path)) == before


def branch(name: str, log: str) -> Any:
    def run_branch(context: DurableContext) -> str:
        note(log, f"branch {name}")
        return context.step(lambda _: name.upper(), name=f"shout-{name}")
    return run_branch


def parallel_item(context: DurableContext, item: dict[str, Any], index: int, items: Any) -> list[Any]:
    branches = [branch(f"{index}{letter}", item["log"]) for letter in "abc"]
    result = context.parallel(branches, name="fan-out", config=ParallelConfig(max_concurrency=2))
    return result.get_results()


@durable_execution
def parallel_in_map(event: dict[str, Any], context: DurableContext) -> list[Any]:
    return context.map([{"log": event["log"]}] * 2, parallel_item).get_results()


def test_a_parallel_inside_a_map_item(tmp_path: Path) -> None:
    event = {"log": str(tmp_path)}
    assert run(parallel_in_map, event, tmp_path) == [["0A", "0B", "0C"], ["1A", "1B", "1C"]]
    recs = records(tmp_path / "store", "test")
    assert (recs["1/0/1"].sub_type, recs["1/0/1"].name) == ("Parallel", "fan-out")
    assert [recs[f"1/1/1/{b}"].sub_type for b in range(3)] == ["ParallelBranch"] * 3
    assert recs["1/1/1/2/1"].name == "shout-1c"
    assert run(parallel_in_map, event, tmp_path) == [["0A", "0B", "0C"], ["1A", "1B", "1C"]]
    assert len(calls(tmp_path)) == 6


# -- non-determinism -------------------------------------------------------------------------------


def renaming_item(context: DurableContext, item: dict[str, Any], index: int, items: Any) -> str:
    context.step(lambda _: "done", name=item["step_name"])
    if not os.path.exists(os.path.join(item["log"], "go")):
        raise ExecutionError("simulated end of the run")
    return "finished"


@durable_execution
def renaming_map(event: dict[str, Any], context: DurableContext) -> list[Any]:
    item = {"log": event["log"], "step_name": event["step_name"]}
    return context.map([item], renaming_item, name=event["map_name"]).get_results()


def test_renaming_a_step_inside_an_unfinished_item_is_detected(tmp_path: Path) -> None:
    event = {"log": str(tmp_path), "step_name": "fetch", "map_name": "m"}
    with pytest.raises(ExecutionError, match="simulated"):
        run(renaming_map, event, tmp_path)
    (tmp_path / "go").touch()
    with pytest.raises(NonDeterministicExecutionError, match=r"name recorded='fetch' current='download'"):
        run(renaming_map, {**event, "step_name": "download"}, tmp_path)
    assert run(renaming_map, event, tmp_path) == ["finished"]


def test_renaming_the_map_is_detected(tmp_path: Path) -> None:
    event = {"log": str(tmp_path), "step_name": "fetch", "map_name": "m"}
    with pytest.raises(ExecutionError, match="simulated"):
        run(renaming_map, event, tmp_path)
    with pytest.raises(NonDeterministicExecutionError, match=r"id='1'.*name recorded='m' current='renamed'"):
        run(renaming_map, {**event, "map_name": "renamed"}, tmp_path)


def test_replacing_a_step_by_a_wait_is_detected(tmp_path: Path) -> None:
    @durable_execution
    def handler(event: dict[str, Any], context: DurableContext) -> None:
        if event["wait"]:
            context.wait(1)
        else:
            context.step(lambda _: 1, name="one")

    run(handler, {"wait": False}, tmp_path, executor="inline")
    with pytest.raises(NonDeterministicExecutionError, match="type recorded='STEP' current='WAIT'"):
        run(handler, {"wait": True}, tmp_path, executor="inline")


# -- the logger ------------------------------------------------------------------------------------


@durable_execution
def logging_handler(event: dict[str, Any], context: DurableContext) -> str:
    context.logger.info("before first")
    context.step(lambda _: 1, name="first")
    context.logger.info("between")
    context.step(lambda _: 2, name="second")
    context.logger.info("after second")
    if not os.path.exists(os.path.join(event["log"], "go")):
        raise RuntimeError("stop here")
    context.step(lambda _: 3, name="third")
    context.logger.info("after third")
    return "done"


def test_the_context_logger_is_silent_while_replaying(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    event = {"log": str(tmp_path)}
    caplog.set_level(logging.INFO, logger="durablemap.context")
    with pytest.raises(RuntimeError):
        run(logging_handler, event, tmp_path, executor="inline")
    assert [r.getMessage() for r in caplog.records] == ["before first", "between", "after second"]
    assert caplog.records[0].executionArn == "test"
    assert caplog.records[0].operationId == ""
    caplog.clear()
    (tmp_path / "go").touch()
    assert run(logging_handler, event, tmp_path, executor="inline") == "done"
    # what ran before is replayed silently; code after the last recorded operation logs again
    assert [r.getMessage() for r in caplog.records] == ["after second", "after third"]


# -- more step and child-context semantics ---------------------------------------------------------


def test_a_run_killed_while_a_retry_is_pending_resumes_with_the_next_attempt(tmp_path: Path) -> None:
    event = {"log": str(tmp_path), "failures": 1, "error": ValueError,
             "retry": {"max_attempts": 3, "initial_delay": Duration(20)}}
    with pytest.raises(ExecutionError, match="simulated crash while waiting"):
        run(retrying_map, event, tmp_path, clock=InterruptingClock())
    step = records(tmp_path / "store", "test")["1/0/1"]
    assert (step.status, step.get("attempt")) == ("PENDING", 1)
    assert step.get("next_attempt") > 0
    [entry] = run(retrying_map, event, tmp_path, clock=VirtualClock())
    assert entry["result"] == "ok after 2"
    assert calls(tmp_path) == ["attempt 0 1", "attempt 0 2"]


def unserializable_item(context: DurableContext, item: str, index: int, items: Any) -> Any:
    def make_set(step_context: StepContext) -> Any:
        note(item, f"attempt {step_context.attempt}")
        return {1, 2}

    return context.step(make_set, name="make_set")


@durable_execution
def unserializable_map(event: dict[str, Any], context: DurableContext) -> list[Any]:
    return context.map([event["log"]], unserializable_item).to_dict()["all"]


def test_a_step_result_the_serdes_cannot_encode_fails_without_retry(tmp_path: Path) -> None:
    [entry] = run(unserializable_map, {"log": str(tmp_path)}, tmp_path, clock=VirtualClock())
    assert entry["status"] == "FAILED"
    assert entry["error"]["ErrorType"] == "durablemap.SerDesError"
    assert "set" in entry["error"]["ErrorMessage"]
    assert calls(tmp_path) == ["attempt 1"]


def test_a_step_returns_its_round_tripped_value_on_the_first_run_too(tmp_path: Path) -> None:
    import decimal

    @durable_execution
    def handler(event: Any, context: DurableContext) -> Any:
        value = context.step(lambda _: (decimal.Decimal("1.5"), b"raw", {1: "int key"}), name="typed")
        return [type(v).__name__ for v in value], value

    first = run(handler, None, tmp_path, executor="inline")
    assert first[0] == ["Decimal", "bytes", "dict"]
    assert run(handler, None, tmp_path, executor="inline") == first


def big_block(log: str) -> Any:
    def block(child: DurableContext) -> str:
        note(log, "block body")

        def piece(step_context: StepContext) -> str:
            note(log, "piece step")
            return "x" * 300_000

        return child.step(piece)
    return block


@durable_execution
def large_child(event: dict[str, Any], context: DurableContext) -> int:
    return len(context.run_in_child_context(big_block(event["log"]), name="big"))


def test_a_child_result_over_256_kib_is_rebuilt_by_running_the_block_again(tmp_path: Path) -> None:
    event = {"log": str(tmp_path)}
    assert run(large_child, event, tmp_path, executor="inline") == 300_000
    child = records(tmp_path / "store", "test")["1"]
    assert (child.status, child.payload, child.get("replay_children")) == ("SUCCEEDED", None, True)
    assert run(large_child, event, tmp_path, executor="inline") == 300_000
    # the block ran again on replay; the step inside it replayed
    assert calls(tmp_path) == ["block body", "piece step", "block body"]


def test_a_step_logger_names_the_step_and_its_attempt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    @durable_execution
    def handler(event: Any, context: DurableContext) -> None:
        def talk(step_context: StepContext) -> None:
            step_context.logger.info("attempt %d", step_context.attempt)
            if step_context.attempt < 2:
                raise ValueError("again")

        context.wait(1)
        context.step(talk, name="talk", config=StepConfig(retry_strategy=RetryPresets.critical()))

    caplog.set_level(logging.INFO, logger="durablemap.context")
    run(handler, None, tmp_path, executor="inline", clock=VirtualClock())
    assert [(r.getMessage(), r.operationId, r.operationName, r.attempt) for r in caplog.records] == [
        ("attempt 1", "2", "talk", 1), ("attempt 2", "2", "talk", 2)]


def transient_item(context: DurableContext, item: str, index: int, items: Any) -> Any:
    def flaky_serdes(step_context: StepContext) -> None:
        note(item, f"attempt {step_context.attempt}")
        raise RetryableSerDesError("the encoder's resource is busy")

    return context.step(flaky_serdes, name="flaky_serdes")


@durable_execution
def transient_map(event: dict[str, Any], context: DurableContext) -> Any:
    return context.map([event["log"]], transient_item).to_dict()


def test_an_invocation_error_in_a_step_is_not_retried_and_ends_the_run(tmp_path: Path) -> None:
    with pytest.raises(DurableExecutionsError, match="resource is busy"):
        run(transient_map, {"log": str(tmp_path)}, tmp_path, clock=VirtualClock())
    assert calls(tmp_path) == ["attempt 1"]
    recs = records(tmp_path / "store", "test")
    assert "1/0" not in recs, "the item is not recorded FAILED: a later run may succeed"
