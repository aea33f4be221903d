"""context.map through the public API: completion criteria (reference section 4.4), ordering,
max_concurrency, replay and the BatchResult API, on real worker processes."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from durablemap import (
    BatchCompletionError,
    BatchResult,
    ChildContextError,
    CompletionReason,
    DurableContext,
    ParallelBranch,
    ValidationError,
    durable_execution,
    durable_parallel_branch,
)
from durablemap.config import (
    CompletionConfig,
    CompletionOutcome,
    CompletionStatus,
    MapConfig,
    ParallelConfig,
    complete_batch,
    continue_batch,
)


def index_or_raise(ctx: DurableContext, item: dict[str, Any], index: int, items: Any) -> int:
    if index in item["fail"]:
        raise ValueError(f"bad{index}")
    return index


@durable_execution
def failing_map(event: dict[str, Any], context: DurableContext) -> BatchResult[int]:
    completion = event["completion"]
    config = MapConfig(max_concurrency=event.get("mc"), completion_config=completion)
    items = [{"fail": event["fail"]} for _ in range(event["n"])]
    return context.map(items, index_or_raise, name="scenario", config=config)


def assert_counts_are_the_items(result: BatchResult[Any]) -> None:
    """What a result counts (kept from the map's board, no scan) is what its items say."""
    items = list(result.all)
    of = {status: [item for item in items if item.status.value == status] for status in ("SUCCEEDED", "FAILED",
                                                                                          "STARTED")}
    assert (result.success_count, result.failure_count, result.started_count, result.total_count) == (
        len(of["SUCCEEDED"]), len(of["FAILED"]), len(of["STARTED"]), len(items))
    assert result.has_failure == bool(of["FAILED"])
    assert (result.succeeded(), result.failed(), result.started()) == (of["SUCCEEDED"], of["FAILED"], of["STARTED"])
    assert result.get_errors() == [item.error for item in of["FAILED"]]


def statuses(result: BatchResult[Any]) -> list[tuple[int, str]]:
    return [(item.index, item.status.value[:2] if item.status.value != "SUCCEEDED" else "S")
            for item in result.all]


S, F = "S", "FA"

# (completion config, n, failing indexes, expected [(index, status)], reason) with max_concurrency=1,
# so the outcome does not depend on timing. Rows of reference section 4.4, with durablemap's default.
SCENARIOS = [
    pytest.param(CompletionConfig(), 5, {1}, [(0, S), (1, F), (2, S), (3, S), (4, S)],
                 CompletionReason.ALL_COMPLETED, id="default-runs-everything"),
    pytest.param(CompletionConfig.all_successful(), 5, {1}, [(0, S), (1, F)],
                 CompletionReason.FAILURE_TOLERANCE_EXCEEDED, id="all_successful"),
    pytest.param(CompletionConfig.first_successful(), 5, {0}, [(0, F), (1, S)],
                 CompletionReason.MIN_SUCCESSFUL_REACHED, id="first_successful"),
    pytest.param(CompletionConfig.first_successful(), 3, {0, 1, 2}, [(0, F), (1, F), (2, F)],
                 CompletionReason.ALL_COMPLETED, id="first_successful-all-fail"),
    pytest.param(CompletionConfig(tolerated_failure_count=1), 6, {1, 3, 4}, [(0, S), (1, F), (2, S), (3, F)],
                 CompletionReason.FAILURE_TOLERANCE_EXCEEDED, id="tolerated_count"),
    pytest.param(CompletionConfig(tolerated_failure_percentage=25), 8, {1, 3, 4},
                 [(0, S), (1, F), (2, S), (3, F), (4, F)],
                 CompletionReason.FAILURE_TOLERANCE_EXCEEDED, id="tolerated_percentage-strict"),
    pytest.param(CompletionConfig(min_successful=3, tolerated_failure_count=1), 8, {0},
                 [(0, F), (1, S), (2, S), (3, S)], CompletionReason.MIN_SUCCESSFUL_REACHED, id="min3-tol1"),
    pytest.param(CompletionConfig(min_successful=1, tolerated_failure_count=0), 3, {0}, [(0, F)],
                 CompletionReason.FAILURE_TOLERANCE_EXCEEDED, id="tolerance-before-min"),
    pytest.param(CompletionConfig(min_successful=2, tolerated_failure_count=5), 4, {0, 1, 2},
                 [(0, F), (1, F), (2, F), (3, S)], CompletionReason.ALL_COMPLETED, id="min2-never-reached"),
    pytest.param(CompletionConfig.all_completed(), 4, {2}, [(0, S), (1, S), (2, F), (3, S)],
                 CompletionReason.ALL_COMPLETED, id="all_completed"),
    pytest.param(CompletionConfig.all_successful(), 0, set(), [], CompletionReason.ALL_COMPLETED, id="empty"),
]


@pytest.mark.parametrize(("completion", "n", "fail", "expected", "reason"), SCENARIOS)
def test_completion_scenarios(tmp_path: Path, completion: CompletionConfig, n: int, fail: set[int],
                              expected: list[tuple[int, str]], reason: CompletionReason) -> None:
    event = {"completion": completion, "n": n, "fail": sorted(fail), "mc": 1}
    result = failing_map.run(event, store=tmp_path / "store", execution_id="x", workers=2)
    assert statuses(result) == expected
    assert result.completion_reason is reason
    assert result.total_count == len(expected)
    assert_counts_are_the_items(result)
    for item in result.failed():
        assert item.error is not None and item.error.type == "ValueError"
        assert item.error.message == f"bad{item.index}"
    # A replay gives the same BatchResult without running anything.
    again = failing_map.run(event, store=tmp_path / "store", execution_id="x", workers=2)
    assert again.to_dict() == result.to_dict()


def test_first_successful_with_failure_has_failed_status(tmp_path: Path) -> None:
    event = {"completion": CompletionConfig.first_successful(), "n": 5, "fail": [0], "mc": 1}
    result = failing_map.run(event, store=tmp_path / "s", workers=2)
    assert result.completion_reason is CompletionReason.MIN_SUCCESSFUL_REACHED
    assert result.status.value == "FAILED"
    assert result.has_failure


def test_min_successful_greater_than_inputs_is_rejected_before_anything_runs(tmp_path: Path) -> None:
    event = {"completion": CompletionConfig(min_successful=4), "n": 3, "fail": [], "mc": None}
    with pytest.raises(ValidationError, match="min_successful cannot be greater than total items: 4 > 3"):
        failing_map.run(event, store=tmp_path / "s", workers=2)


def test_throw_if_error_raises_first_failure(tmp_path: Path) -> None:
    event = {"completion": CompletionConfig.all_completed(), "n": 6, "fail": [2, 4], "mc": None}
    result = failing_map.run(event, store=tmp_path / "s", workers=2)
    with pytest.raises(ChildContextError) as info:
        result.throw_if_error()
    assert str(info.value) == "bad2"
    assert info.value.error_type == "ValueError"
    assert BatchResult.from_dict(result.to_dict()) == result


# -- custom predicates -------------------------------------------------------------------------
def stop_after_two(status: CompletionStatus) -> Any:
    return complete_batch(CompletionOutcome.FAILED) if status.success_count >= 2 else continue_batch()


def stop_at_once(status: CompletionStatus) -> Any:
    return complete_batch()


def broken_predicate(status: CompletionStatus) -> Any:
    raise RuntimeError("predicate exploded")


@pytest.mark.parametrize(("predicate", "count", "reason"), [
    (stop_after_two, 2, CompletionReason.CUSTOM_COMPLETION_FAILED),
    (stop_at_once, 0, CompletionReason.CUSTOM_COMPLETION_SUCCEEDED),
])
def test_should_complete(tmp_path: Path, predicate: Any, count: int, reason: CompletionReason) -> None:
    event = {"completion": CompletionConfig(should_complete=predicate), "n": 5, "fail": [], "mc": 1}
    result = failing_map.run(event, store=tmp_path / "s", workers=2)
    assert result.completion_reason is reason
    assert result.total_count == count
    if reason is CompletionReason.CUSTOM_COMPLETION_FAILED:
        with pytest.raises(BatchCompletionError):
            result.throw_if_error()


def test_raising_predicate_fails_the_map_with_child_context_error(tmp_path: Path) -> None:
    event = {"completion": CompletionConfig(should_complete=broken_predicate), "n": 3, "fail": [], "mc": 1}
    with pytest.raises(ChildContextError, match="predicate exploded"):
        failing_map.run(event, store=tmp_path / "s", execution_id="p", workers=2)
    # The failure is recorded: a re-run raises the same error without calling anything.
    with pytest.raises(ChildContextError, match="predicate exploded"):
        failing_map.run(event, store=tmp_path / "s", execution_id="p", workers=2)


# -- early completion does not wait for items in flight --------------------------------------
def slow_unless_one(ctx: DurableContext, item: str, index: int, items: Any) -> int:
    if index == 1:
        raise ValueError("fast failure")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not os.path.exists(os.path.join(item, "release")):
        time.sleep(0.01)
    Path(item, f"done-{index}").touch()
    return index


@durable_execution
def early_exit(event: dict[str, Any], context: DurableContext) -> BatchResult[int]:
    config = MapConfig(completion_config=CompletionConfig.all_successful())
    return context.map([event["dir"]] * 6, slow_unless_one, config=config)


def test_early_completion_reports_in_flight_items_started_without_waiting(tmp_path: Path) -> None:
    result = early_exit.run({"dir": str(tmp_path)}, store=tmp_path / "s", workers=2)
    assert result.completion_reason is CompletionReason.FAILURE_TOLERANCE_EXCEEDED
    by_index = {item.index: item.status.value for item in result.all}
    assert by_index[1] == "FAILED"
    assert all(status == "STARTED" for index, status in by_index.items() if index != 1)
    assert 0 in by_index
    assert not list(tmp_path.glob("done-*")), "map waited for items in flight"
    assert_counts_are_the_items(result)
    # Replay reports the same STARTED items.
    again = early_exit.run({"dir": str(tmp_path)}, store=tmp_path / "s", workers=2)
    assert again.to_dict() == result.to_dict()


# -- concurrency and ordering ------------------------------------------------------------------
def measure_concurrency(ctx: DurableContext, item: str, index: int, items: Any) -> int:
    marker = Path(item, f"running-{index}")
    marker.touch()
    try:
        time.sleep(0.03 + (index % 3) * 0.01)
        return len(list(Path(item).glob("running-*")))
    finally:
        marker.unlink()


@durable_execution
def concurrency_map(event: dict[str, Any], context: DurableContext) -> BatchResult[int]:
    return context.map([event["dir"]] * event["n"], measure_concurrency,
                       config=MapConfig(max_concurrency=event["mc"]))


@pytest.mark.parametrize("mc", [1, 2, 3])
def test_max_concurrency_is_never_exceeded(tmp_path: Path, mc: int) -> None:
    result = concurrency_map.run({"dir": str(tmp_path), "n": 18, "mc": mc}, store=tmp_path / "s", workers=4)
    assert result.success_count == 18
    peak = max(result.get_results())
    assert 1 <= peak <= mc


def jittered(ctx: DurableContext, item: int, index: int, items: Any) -> dict[str, int]:
    time.sleep(((item * 7919) % 5) / 500)
    return {"item": item, "square": item * item}


@durable_execution
def ordered(event: Any, context: DurableContext) -> BatchResult[dict[str, int]]:
    return context.map(list(range(60)), jittered)


def test_results_are_in_input_order(tmp_path: Path) -> None:
    result = ordered.run(None, store=tmp_path / "s", workers=3)
    assert [item.index for item in result.all] == list(range(60))
    assert result.get_results() == [{"item": i, "square": i * i} for i in range(60)]


# -- replay calls no item function -------------------------------------------------------------
def logged(ctx: DurableContext, item: str, index: int, items: Any) -> int:
    with open(item, "a") as fh:
        fh.write(f"{index}\n")
    return index * 10


@durable_execution
def logging_map(event: dict[str, Any], context: DurableContext) -> list[int]:
    return context.map([event["log"]] * 40, logged).get_results()


def test_replay_calls_no_item_function(tmp_path: Path) -> None:
    log = tmp_path / "log"
    first = logging_map.run({"log": str(log)}, store=tmp_path / "s", workers=2)
    assert first == [i * 10 for i in range(40)]
    assert sorted(map(int, log.read_text().split())) == list(range(40))
    second = logging_map.run({"log": str(log)}, store=tmp_path / "s", workers=2)
    assert second == first
    assert len(log.read_text().split()) == 40


def test_inline_executor_gives_the_same_result(tmp_path: Path) -> None:
    log = tmp_path / "log"
    result = logging_map.run({"log": str(log)}, store=tmp_path / "s", executor="inline")
    assert result == [i * 10 for i in range(40)]


# -- names, inputs, item_namer -------------------------------------------------------------------
def square(ctx: DurableContext, item: int, index: int, items: Any) -> int:
    return item * item


@durable_execution
def bad_inputs(event: Any, context: DurableContext) -> Any:
    return context.map((x for x in range(3)), square)


def test_generator_inputs_are_rejected_with_advice(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="list"):
        bad_inputs.run(None, store=tmp_path / "s")


class LazySquares:
    """A user's lazy sequence: only __len__ and __getitem__."""

    def __len__(self) -> int:
        return 25

    def __getitem__(self, index: int) -> int:
        return index * 3


@durable_execution
def lazy(event: Any, context: DurableContext) -> list[int]:
    return context.map(LazySquares(), square).get_results()


def test_lazy_sequence_inputs(tmp_path: Path) -> None:
    assert lazy.run(None, store=tmp_path / "s", workers=2) == [(3 * i) ** 2 for i in range(25)]


@durable_execution
def named(event: Any, context: DurableContext) -> Any:
    config = MapConfig(item_namer=lambda item, index: f"sq-{item}")
    return context.map(range(4), square, config=config).to_dict()


def test_range_inputs_and_item_namer(tmp_path: Path) -> None:
    out = named.run(None, store=tmp_path / "s", workers=2)
    assert [entry["result"] for entry in out["all"]] == [0, 1, 4, 9]


# -- parallel ------------------------------------------------------------------------------------
@durable_parallel_branch(name="fetch-users")
def fetch_users(context: DurableContext) -> list[str]:
    return ["ada", "bob"]


def fetch_orders(context: DurableContext) -> int:
    return 42


def broken_branch(context: DurableContext) -> int:
    raise RuntimeError("branch down")


@durable_execution
def branches(event: dict[str, Any], context: DurableContext) -> Any:
    functions = [fetch_users, fetch_orders, ParallelBranch(lambda ctx: "inline", name="third")]
    if event.get("broken"):
        functions.insert(1, broken_branch)
    config = ParallelConfig(max_concurrency=1) if event.get("broken") else None
    return context.parallel(functions, name="gather", config=config).to_dict()


def test_parallel_runs_each_branch_and_replays(tmp_path: Path) -> None:
    out = branches.run({}, store=tmp_path / "s", execution_id="p", workers=2)
    assert [entry["result"] for entry in out["all"]] == [["ada", "bob"], 42, "inline"]
    assert out["completionReason"] == "ALL_COMPLETED"
    assert branches.run({}, store=tmp_path / "s", execution_id="p", workers=2) == out


def test_parallel_defaults_to_all_successful(tmp_path: Path) -> None:
    out = branches.run({"broken": True}, store=tmp_path / "s", workers=2)
    assert [(entry["index"], entry["status"]) for entry in out["all"]] == [(0, "SUCCEEDED"), (1, "FAILED")]
    assert out["completionReason"] == "FAILURE_TOLERANCE_EXCEEDED"
    assert out["all"][1]["error"]["ErrorMessage"] == "branch down"
