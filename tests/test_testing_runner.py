"""durablemap.testing (CONTRACT section 8, issue 6): the runner's operation views, timeouts, the
pytest plugin, and crash injection on a map with steps.

Handlers are module-level so that crash_test's subprocesses can import them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from durablemap import (
    BatchResult,
    DurableContext,
    ErrorObject,
    ParallelBranch,
    StepContext,
    ValidationError,
    durable_execution,
    durable_step,
    durable_with_child_context,
)
from durablemap.config import MapConfig
from durablemap.lambda_service import OperationStatus, OperationSubType, OperationType
from durablemap.testing import (
    DurableFunctionTestRunner,
    DurableTestRunner,
    InvocationStatus,
    OperationNotFoundError,
    crash_test,
)

pytest_plugins = ["pytester"]


def _loky_workers() -> set[int]:
    out = set()
    for child in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "resource_tracker" not in cmdline:
            out.add(child.pid)
    return out


@pytest.fixture(autouse=True)
def no_processes_left_behind() -> Iterator[None]:
    before = _loky_workers()
    yield
    left = [psutil.Process(pid) for pid in _loky_workers() - before if psutil.pid_exists(pid)]
    _gone, alive = psutil.wait_procs(left, timeout=10)
    assert not alive, f"processes left behind: {alive}"


# -- handlers -----------------------------------------------------------------------------------------


@durable_step
def double(step_context: StepContext, x: int) -> int:
    return x * 2


@durable_step
def add_one(step_context: StepContext, x: int) -> int:
    return x + 1


def pipeline_item(context: DurableContext, item: int, index: int, items: list[int]) -> int:
    return context.step(add_one(context.step(double(item))))


@durable_execution
def pipeline(event: dict[str, Any], context: DurableContext) -> list[int]:
    """A map with two steps per item: the shape crash injection is for."""
    return context.map(event["items"], pipeline_item, name="pipeline").get_results()


@durable_with_child_context
def audit(context: DurableContext, total: int) -> str:
    return context.step(lambda _: f"total={total}", name="format")


def branch_a(context: DurableContext) -> str:
    return "a"


def branch_b(context: DurableContext) -> str:
    return context.step(lambda _: "b", name="inner")


@durable_execution
def everything(event: Any, context: DurableContext) -> dict[str, Any]:
    start = context.step(double(21), name="start")
    context.wait(3600, name="an_hour")  # skipped: the runner's clock is virtual
    mapped = context.map([1, 2, 3], pipeline_item, name="pipeline")
    note = context.run_in_child_context(audit(sum(mapped.get_results())), name="audit")
    both = context.parallel([branch_a, branch_b], name="branches")
    return {"start": start, "mapped": mapped.get_results(), "note": note, "both": both.get_results()}


@durable_execution
def failing(event: Any, context: DurableContext) -> None:
    def boom(_: StepContext) -> None:
        raise ValueError("no such customer")
    from durablemap.config import StepConfig
    from durablemap.retries import RetryStrategyConfig, create_retry_strategy
    no_retry = StepConfig(retry_strategy=create_retry_strategy(RetryStrategyConfig(max_attempts=1)))
    context.step(boom, name="lookup", config=no_retry)


def big_item(context: DurableContext, item: int, index: int, items: list[int]) -> str:
    return str(index) * 2048


@durable_execution
def big_map(event: Any, context: DurableContext) -> int:
    """A map whose BatchResult exceeds 256 KiB: its record keeps a summary, items are rebuilt."""
    result = context.map(list(range(160)), big_item, name="big", config=MapConfig(summary_generator=lambda r: "big"))
    return result.success_count


@durable_execution
def blocks_forever(event: Any, context: DurableContext) -> None:
    threading.Event().wait()


@durable_execution
def not_deterministic(event: dict[str, Any], context: DurableContext) -> list[int]:
    """Returns how many times its code outside operations has run: a resume changes the result."""
    with open(event["counter"], "a") as fh:
        fh.write(".")
    with open(event["counter"]) as fh:
        runs = len(fh.read())
    return [*context.map(event["items"], pipeline_item, name="pipeline").get_results(), runs]


# -- the runner ----------------------------------------------------------------------------------------


def test_runner_views_every_operation_kind() -> None:
    with DurableTestRunner(everything) as runner:
        result = runner.run(input={}, timeout=60)

    assert result.status is InvocationStatus.SUCCEEDED
    assert result.error is None
    assert result.result == {"start": 42, "mapped": [3, 5, 7], "note": "total=15", "both": ["a", "b"]}
    assert [(op.name, op.sub_type) for op in result.operations] == [
        ("start", "Step"), ("an_hour", "Wait"), ("pipeline", "Map"), ("audit", "RunInChildContext"),
        ("branches", "Parallel")]
    assert all(op.status is OperationStatus.SUCCEEDED for op in result.get_all_operations())

    step = result.get_step("start")
    assert (step.result, step.attempt, step.operation_type, step.id) == (42, 1, OperationType.STEP, "1")
    assert result.get_wait("an_hour").result is None

    map_op = result.get_map("pipeline")
    assert isinstance(map_op.result, BatchResult)
    assert map_op.result.get_results() == [3, 5, 7]
    assert [item.name for item in map_op.children] == ["map-item-0", "map-item-1", "map-item-2"]
    item = map_op.get_context("map-item-1")
    assert item.sub_type is OperationSubType.MAP_ITERATION and item.result == 5
    assert [(s.name, s.result) for s in item.children] == [("double", 4), ("add_one", 5)]
    assert item.get_step("add_one").id == "3/1/2"

    assert result.get_context("audit").get_step("format").result == "total=15"
    parallel = result.get_parallel("branches")
    assert parallel.result.get_results() == ["a", "b"]
    assert parallel.get_context("parallel-branch-1").get_step("inner").result == "b"
    # 5 top-level, 3 items x 2 steps, 1 audit step, 2 branches + 1 inner step
    assert len(result.get_all_operations()) == 5 + 3 * 3 + 1 + 3
    assert result.get_operation("3/2/1").result == 6


def test_get_finds_only_the_kind_asked_and_says_what_exists() -> None:
    with DurableFunctionTestRunner(everything) as runner:
        result = runner.run(input={})
    with pytest.raises(OperationNotFoundError, match=r"'pipeline' \(Map\)"):
        result.get_step("pipeline")
    with pytest.raises(OperationNotFoundError):
        result.get_map("double")  # only inside the items: get_* searches one level


def test_failed_handler_reports_status_error_and_failed_step() -> None:
    with DurableTestRunner(failing) as runner:
        result = runner.run(input={})
    assert result.status is InvocationStatus.FAILED
    assert result.result is None
    assert isinstance(result.error, ErrorObject)
    assert "no such customer" in result.error.message
    step = result.get_step("lookup")
    assert step.status is OperationStatus.FAILED
    assert step.error is not None and step.error.type == "ValueError"
    assert step.result is None


def test_summarised_map_is_rebuilt_from_its_items() -> None:
    with DurableTestRunner(big_map, workers=2) as runner:
        result = runner.run(input={}, timeout=60)
    map_op = result.get_map("big")
    assert map_op.meta.get("replay_children") is True  # the record holds only a summary
    assert map_op.result.total_count == 160
    assert map_op.result.results[7].result == "7" * 2048


def test_timeout_raises_timeout_error() -> None:
    with DurableTestRunner(blocks_forever, executor="inline") as runner, \
            pytest.raises(TimeoutError, match=r"did not finish within 0\.5 s"):
        runner.run(input={}, timeout=0.5)


def test_each_run_gets_a_fresh_store_removed_on_close() -> None:
    import os
    with DurableTestRunner(pipeline, executor="inline") as runner:
        first = runner.run(input={"items": [1]})
        second = runner.run(input={"items": [1]})
        assert first.store_path != second.store_path
        assert os.path.isdir(first.store_path)
        # a fresh store: the second run ran its steps again rather than replaying the first's
        assert second.get_map("pipeline").children[0].get_step("double").status is OperationStatus.SUCCEEDED
    assert not os.path.exists(first.store_path) and not os.path.exists(second.store_path)


@pytest.mark.durable_execution(handler=pipeline, lambda_function_name="pipeline", workers=1)
def test_marker_options_reach_the_runner(durable_runner: DurableTestRunner) -> None:
    assert durable_runner.workers == 1
    with durable_runner:
        result = durable_runner.run(input={"items": [1, 2]})
    assert result.result == [3, 5]


def test_plugin_registers_the_marker_and_explains_a_missing_one(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.durable_execution(handler=print, lambda_function_name="x")
        def test_marked(durable_runner):
            assert durable_runner.handler.func is print

        def test_unmarked(durable_runner):
            pass
    """)
    outcome = pytester.runpytest_inprocess("--strict-markers", "-p", "no:cacheprovider")
    outcome.assert_outcomes(passed=1, errors=1)
    outcome.stdout.fnmatch_lines(["*has no @pytest.mark.durable_execution(handler=...) marker*"])


# -- crash injection -------------------------------------------------------------------------------------


def test_crash_killing_the_whole_job_mid_map_resumes_without_rerunning() -> None:
    items = list(range(8))
    report = crash_test(pipeline, {"items": items}, after=5, kill="job")
    assert report.crashed
    assert report.resumed_result == [2 * i + 1 for i in items]
    assert report.total_operations == 8 * 3 + 1  # 16 steps, 8 items, the map
    # What the crash left plus what the resume recorded is everything, each exactly once.
    assert report.recorded_before_resume >= 5
    assert report.recorded_by_resume > 0
    assert report.recorded_before_resume + report.recorded_by_resume == report.total_operations
    assert report.ran_twice == {}
    assert report.resumed is not None
    assert report.resumed.get_map("pipeline").result.success_count == 8


def test_crash_at_a_random_point_is_reproducible_from_the_seed() -> None:
    report = crash_test(pipeline, {"items": [1, 2, 3]}, seed=7)
    again = crash_test(pipeline, {"items": [1, 2, 3]}, seed=7, check=False)
    assert report.after == again.after
    assert 1 <= report.after <= report.total_operations
    assert again.problems() == []


@pytest.mark.parametrize("after", [3, None])
def test_crash_killing_one_worker_reruns_only_its_unrecorded_work(after: int | None) -> None:
    report = crash_test(pipeline, {"items": list(range(6))}, after=after, kill="worker", seed=5)
    assert report.crashed
    assert report.resumed_result == [2 * i + 1 for i in range(6)]
    assert report.ran_twice == {}


def test_crash_test_catches_a_handler_that_is_not_resumable(tmp_path: Any) -> None:
    event = {"items": [1, 2, 3], "counter": str(tmp_path / "runs")}
    with pytest.raises(AssertionError, match="differs from the uninterrupted run"):
        crash_test(not_deterministic, event, after=2)


def test_crash_test_needs_an_importable_handler() -> None:
    @durable_execution
    def local(event: Any, context: DurableContext) -> None:
        return None

    from durablemap import ValidationError
    with pytest.raises(ValidationError, match="module level"):
        crash_test(local, {})


def named_square(context: DurableContext, item: int, index: int, items: list[int]) -> int:
    return item * item


@durable_execution
def empty_names(event: Any, context: DurableContext) -> dict[str, Any]:
    """Item 0 of the map and the first branch named "" (a name, as the AWS SDK keeps it)."""
    squares = context.map([1, 2], named_square, name="squares",
                          config=MapConfig(item_namer=lambda item, index: "" if index == 0 else f"sq-{index}"))
    both = context.parallel([ParallelBranch(func=branch_a, name=""), branch_b], name="branches")
    return {"squares": squares.get_results(), "both": both.get_results()}


def test_an_empty_name_is_kept_for_items_and_branches() -> None:
    with DurableFunctionTestRunner(empty_names, executor="inline") as runner:
        result = runner.run(input={})
    assert result.status is InvocationStatus.SUCCEEDED, result.error
    assert [child.name for child in result.get_map("squares").children] == ["", "sq-1"]
    assert [child.name for child in result.get_parallel("branches").children] == ["", "parallel-branch-1"]


@durable_execution
def waits_an_hour(event: Any, context: DurableContext) -> str:
    context.wait(3600, name="an_hour")
    return "woke"


def test_the_aws_testing_sdk_constructor_options() -> None:
    """``DurableFunctionTestRunner(handler=..., execution_timeout=..., skip_time=...)`` as the AWS
    examples' harness builds it: skip_time=True skips the hour's wait; skip_time=False waits it in
    real time, so the constructor's execution_timeout stops the run. The SDK's service-polling
    options are accepted."""
    polling = {"poll_interval": 1.0, "invocation_timeout": 900, "max_invocation_page_bytes": None}
    with DurableFunctionTestRunner(handler=waits_an_hour, execution_timeout=60, skip_time=True,
                                   executor="inline", **polling) as runner:
        assert runner.run(input={}).result == "woke"
    with DurableFunctionTestRunner(handler=waits_an_hour, execution_timeout=0.5, skip_time=False,
                                   executor="inline") as runner, \
            pytest.raises(TimeoutError, match=r"did not finish within 0\.5 s"):
        runner.run(input={})
    with pytest.raises(ValidationError, match="opposite things"):
        DurableFunctionTestRunner(waits_an_hour, real_time=True, skip_time=True)
