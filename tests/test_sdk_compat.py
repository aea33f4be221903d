"""Code written for the AWS SDK runs with its imports changed (issue 15): the smallest reproductions
of what the SDK's own map and parallel examples and conformance handlers needed, each through the
public API.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from durablemap import (
    BatchItemStatus,
    CompletionReason,
    DurableContext,
    ParallelBranch,
    StepContext,
    durable_execution,
    durable_parallel_branch,
)
from durablemap.config import CompletionConfig, MapConfig, NestingType, ParallelConfig, StepConfig
from durablemap.lambda_service import OperationPayload, OperationStatus, OperationSubType, OperationType
from durablemap.retries import LinearRetryStrategyConfig, RetryStrategyConfig
from durablemap.serdes import ExtendedTypeSerDes, JsonSerDes
from durablemap.testing import DurableTestRunner, InvocationStatus, OperationNotFoundError

# -- handlers (module level: items are pickled for the worker processes) ---------------------------


def doubled(ctx: DurableContext, x: int, index: int, _items: Any) -> int:
    return ctx.step(lambda _: x * 2, name=f"s{index}")


@durable_execution
def map_and_parallel(event: Any, context: DurableContext) -> dict[str, Any]:
    flat = event.get("flat", False)
    nesting = NestingType.FLAT if flat else NestingType.NESTED
    m = context.map([1, 2, 3], doubled, name="m", config=MapConfig(nesting_type=nesting))
    p = context.parallel([lambda ctx: ctx.step(lambda _: "a", name="pa"),
                          lambda ctx: ctx.step(lambda _: "b", name="pb")],
                         name="p", config=ParallelConfig(nesting_type=nesting))
    return {"m": m.get_results(), "p": p.get_results()}


@durable_parallel_branch(name="greet")
def greet(ctx: DurableContext, who: str, punctuation: str = "!") -> str:
    return ctx.step(lambda _: f"hello {who}{punctuation}", name="say")


@durable_parallel_branch(name="plain")
def plain(ctx: DurableContext) -> str:
    return "plain"


@durable_parallel_branch()
def unnamed(ctx: DurableContext) -> int:
    return 7


@durable_execution
def branches(event: Any, context: DurableContext) -> list[Any]:
    functions = [greet("ada"), greet("bob", punctuation="?"), plain(), plain, unnamed()]
    return context.parallel(functions, name="branches").get_results()


def sometimes_fails(ctx: DurableContext, item: int, index: int, _items: Any) -> int:
    def body(step: StepContext) -> int:
        if item % 3 == 0:
            raise ValueError(f"item {item} failed on attempt {step.attempt}")
        return item * 2

    return ctx.step(body, name=f"item_{index}",
                    config=StepConfig(retry_strategy=RetryStrategyConfig(max_attempts=1)))


@durable_execution
def tolerant(event: Any, context: DurableContext) -> dict[str, Any]:
    config = MapConfig(completion_config=CompletionConfig(tolerated_failure_count=3))
    result = context.map(list(range(1, 11)), sometimes_fails, name="tolerant", config=config)
    return {"succeeded": result.success_count, "failed": result.failure_count,
            "errors": [e.message for e in result.get_errors() if e is not None],
            "reason": str(result.completion_reason)}


# -- 1. get_context finds maps and parallels ------------------------------------------------------


def test_get_context_finds_maps_and_parallels_as_the_sdk_does() -> None:
    with DurableTestRunner(map_and_parallel, workers=2) as runner:
        result = runner.run(input={}, timeout=60)
    assert result.status is InvocationStatus.SUCCEEDED
    m, p = result.get_context("m"), result.get_context("p")
    assert (m.sub_type, p.sub_type) == (OperationSubType.MAP, OperationSubType.PARALLEL)
    assert m.operation_type is OperationType.CONTEXT and m.status is OperationStatus.SUCCEEDED
    assert m.result.get_results() == [2, 4, 6]
    assert [c.name for c in m.child_operations] == ["map-item-0", "map-item-1", "map-item-2"]
    assert m.get_context("map-item-1").children[0].name == "s1"  # items are contexts too
    with pytest.raises(OperationNotFoundError, match=r"No context operation .* named 's0'"):
        result.get_context("s0")


# -- 2. FLAT records the items' operations directly under the map ---------------------------------


def test_flat_nesting_records_inner_operations_under_the_map() -> None:
    with DurableTestRunner(map_and_parallel, workers=2) as runner:
        result = runner.run(input={"flat": True}, timeout=60)
    assert result.result == {"m": [2, 4, 6], "p": ["a", "b"]}
    m, p = result.get_context("m"), result.get_context("p")
    assert [(c.name, c.sub_type, c.status) for c in m.children] == [
        (f"s{i}", OperationSubType.STEP, OperationStatus.SUCCEEDED) for i in range(3)]
    assert [c.result for c in m.children] == [2, 4, 6]
    assert [c.name for c in p.children] == ["pa", "pb"]
    assert m.get_step("s2").result == 6


def test_flat_map_shows_its_steps_in_the_cli(tmp_path: Path) -> None:
    store = tmp_path / "store"
    map_and_parallel.run({"flat": True}, store=store, execution_id="flat", workers=2)
    env = {**os.environ, "DURABLEMAP_STORE": str(store)}
    shown = subprocess.run([sys.executable, "-m", "durablemap", "show", "flat", "--json"], env=env,
                           capture_output=True, text=True, check=True)
    tree = json.loads(shown.stdout)
    ops = tree["operations"] if isinstance(tree, dict) and "operations" in tree else tree
    by_name = {op["name"]: op for op in ops}
    assert [c["name"] for c in by_name["m"]["children"]] == ["s0", "s1", "s2"]
    assert [c["name"] for c in by_name["p"]["children"]] == ["pa", "pb"]
    text = subprocess.run([sys.executable, "-m", "durablemap", "show", "flat"], env=env,
                          capture_output=True, text=True, check=True).stdout
    assert "s0" in text and "s2" in text


# -- 3. @durable_parallel_branch makes a factory ----------------------------------------------------


def test_durable_parallel_branch_is_a_factory_as_in_the_sdk() -> None:
    branch = greet("ada")
    assert isinstance(branch, ParallelBranch) and branch.name == "greet"
    assert isinstance(plain(), ParallelBranch) and unnamed().name is None
    with DurableTestRunner(branches, workers=2) as runner:
        result = runner.run(input={}, timeout=60)
    assert result.result == ["hello ada!", "hello bob?", "plain", "plain", 7]
    names = [c.name for c in result.get_parallel("branches").children]
    assert names == ["greet", "greet", "plain", "plain", "parallel-branch-4"]


# -- 4. a retry config given as the retry strategy -----------------------------------------------


def test_step_config_takes_a_retry_config_as_its_strategy() -> None:
    assert StepConfig(retry_strategy=LinearRetryStrategyConfig(max_attempts=2)).retry_strategy is not None
    with DurableTestRunner(tolerant, workers=2) as runner:
        result = runner.run(input={}, timeout=60)
    assert result.status is InvocationStatus.SUCCEEDED
    assert result.result["succeeded"] == 7 and result.result["failed"] == 3
    # max_attempts=1: each failing step ran once, with no retry.
    assert sorted(result.result["errors"]) == [f"item {i} failed on attempt 1" for i in (3, 6, 9)]
    assert result.result["reason"] == "CompletionReason.ALL_COMPLETED"


# -- 5. str-valued enums that print as the SDK's ------------------------------------------------------


def test_batch_enums_compare_as_str_and_print_as_the_sdk() -> None:
    assert str(CompletionReason.ALL_COMPLETED) == "CompletionReason.ALL_COMPLETED"
    assert f"{CompletionReason.MIN_SUCCESSFUL_REACHED}" == "CompletionReason.MIN_SUCCESSFUL_REACHED"
    assert str(BatchItemStatus.SUCCEEDED) == "BatchItemStatus.SUCCEEDED"
    assert BatchItemStatus.SUCCEEDED == "SUCCEEDED" and CompletionReason("ALL_COMPLETED") == "ALL_COMPLETED"
    assert CompletionReason.ALL_COMPLETED.value == "ALL_COMPLETED"
    assert json.dumps({"r": CompletionReason.ALL_COMPLETED}) == '{"r": "ALL_COMPLETED"}'
    assert JsonSerDes().deserialize(JsonSerDes().serialize([BatchItemStatus.FAILED])) == ["FAILED"]


# -- 6. smaller names the SDK's tests use -------------------------------------------------------------


def test_operation_payload_and_a_context_free_extended_serdes() -> None:
    serdes = ExtendedTypeSerDes()
    payload: OperationPayload = serdes.serialize({"t": (1, 2), 3: "x"})
    assert serdes.deserialize(payload) == {"t": (1, 2), 3: "x"}
    assert isinstance(payload, OperationPayload)


@durable_execution
def trivial(event: Any, context: DurableContext) -> int:
    return 1


@pytest.mark.durable_execution(handler=trivial)
def test_the_durable_runner_fixture_runs_locally(durable_runner: DurableTestRunner) -> None:
    assert durable_runner.mode == "local"
    with durable_runner:
        assert durable_runner.run(input={}, timeout=30).result == 1
