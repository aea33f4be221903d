"""Configuration types: defaults, factories, and every validation message."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

import durablemap.config as config_module
from durablemap._batch import BatchItemStatus
from durablemap._errors import ValidationError
from durablemap.config import (
    ChildConfig,
    CompletionConfig,
    CompletionDecision,
    CompletionItemStatus,
    CompletionOutcome,
    CompletionStatus,
    Duration,
    MapConfig,
    NestingType,
    ParallelBranch,
    ParallelConfig,
    StepConfig,
    StepSemantics,
    complete_batch,
    continue_batch,
    durable_parallel_branch,
)
from durablemap.retries import JitterStrategy, RetryPresets
from durablemap.serdes import JsonSerDes


def test_all_names_exist() -> None:
    for name in config_module.__all__:
        assert getattr(config_module, name) is not None
    assert config_module.BatchItemStatus is BatchItemStatus
    assert config_module.JitterStrategy is JitterStrategy
    with pytest.raises(AttributeError):
        _ = config_module.NoSuchName


# Duration


def test_duration() -> None:
    assert Duration().to_seconds() == 0
    assert Duration(7).to_seconds() == 7
    assert Duration.from_seconds(2.9) == Duration(2)
    assert Duration.from_minutes(1.5) == Duration(90)
    assert Duration.from_hours(2) == Duration(7200)
    assert Duration.from_days(1) == Duration(86400)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Duration(1).seconds = 2  # type: ignore[misc]


def test_duration_negative() -> None:
    with pytest.raises(ValidationError, match=r"^Duration seconds must be positive$"):
        Duration(-1)
    with pytest.raises(ValidationError, match=r"^Duration seconds must be positive$"):
        Duration.from_minutes(-1)
    with pytest.raises(ValidationError, match="must be a number"):
        Duration("5")  # type: ignore[arg-type]


# CompletionConfig


def test_completion_config_defaults_and_factories() -> None:
    assert dataclasses.astuple(CompletionConfig()) == (None, None, None, None)
    assert CompletionConfig.first_successful() == CompletionConfig(min_successful=1)
    assert CompletionConfig.all_completed() == CompletionConfig(tolerated_failure_percentage=100)
    assert CompletionConfig.all_successful() == CompletionConfig(
        tolerated_failure_count=0, tolerated_failure_percentage=0
    )
    assert [f.name for f in dataclasses.fields(CompletionConfig)] == [
        "min_successful",
        "tolerated_failure_count",
        "tolerated_failure_percentage",
        "should_complete",
    ]
    assert isinstance(CompletionConfig.__dict__["all_successful"], staticmethod)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_successful": 0}, "min_successful must be at least 1, got: 0"),
        ({"min_successful": -3}, "min_successful must be at least 1, got: -3"),
        ({"tolerated_failure_count": -1}, "tolerated_failure_count must be non-negative, got: -1"),
        ({"tolerated_failure_percentage": 101}, "tolerated_failure_percentage must be between 0 and 100, got: 101"),
        ({"tolerated_failure_percentage": -0.5}, "tolerated_failure_percentage must be between 0 and 100, got: -0.5"),
        ({"should_complete": 3}, "should_complete must be callable"),
        (
            {"should_complete": lambda s: continue_batch(), "min_successful": 1},
            "should_complete cannot be combined with min_successful, tolerated_failure_count, or "
            "tolerated_failure_percentage",
        ),
        (
            {"should_complete": lambda s: continue_batch(), "tolerated_failure_count": 0},
            "should_complete cannot be combined with min_successful, tolerated_failure_count, or "
            "tolerated_failure_percentage",
        ),
        (
            {"should_complete": lambda s: continue_batch(), "tolerated_failure_percentage": 10},
            "should_complete cannot be combined with min_successful, tolerated_failure_count, or "
            "tolerated_failure_percentage",
        ),
    ],
)
def test_completion_config_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=f"^{re.escape(message)}$"):
        CompletionConfig(**kwargs)


def test_completion_config_bounds_are_accepted() -> None:
    CompletionConfig(min_successful=1, tolerated_failure_count=0, tolerated_failure_percentage=0)
    CompletionConfig(tolerated_failure_percentage=100.0)
    CompletionConfig(should_complete=lambda s: continue_batch())


def test_validate_for_total() -> None:
    CompletionConfig(min_successful=3)._validate_for_total(3)
    CompletionConfig()._validate_for_total(0)
    with pytest.raises(ValidationError, match=r"^min_successful cannot be greater than total items: 4 > 3$"):
        CompletionConfig(min_successful=4)._validate_for_total(3)


# Predicate types


def test_completion_decisions() -> None:
    assert continue_batch() == CompletionDecision(False)
    assert complete_batch() == CompletionDecision(True, CompletionOutcome.SUCCEEDED)
    assert complete_batch(CompletionOutcome.FAILED).outcome is CompletionOutcome.FAILED
    with pytest.raises(ValidationError, match="needs an outcome"):
        CompletionDecision(True)
    with pytest.raises(ValidationError, match="cannot have an outcome"):
        CompletionDecision(False, CompletionOutcome.FAILED)
    assert [o.value for o in CompletionOutcome] == ["SUCCEEDED", "FAILED"]


def test_completion_status_types() -> None:
    item = CompletionItemStatus(2)
    assert (item.index, item.name, item.status) == (2, None, None)
    status = CompletionStatus(1, 2, 3, 4)
    assert status.items == ()
    assert status.completed_count == 3


def test_enums() -> None:
    assert [n.value for n in NestingType] == ["NESTED", "FLAT"]
    assert [s.name for s in StepSemantics] == ["AT_MOST_ONCE_PER_RETRY", "AT_LEAST_ONCE_PER_RETRY"]


# MapConfig / ParallelConfig

MAP_FIELDS = [
    "max_concurrency",
    "completion_config",
    "serdes",
    "item_serdes",
    "summary_generator",
    "nesting_type",
    "item_namer",
    "item_timeout",
    "max_worker_crashes",
    "recompute_changed_inputs",
    "worker_memory_limit",
    "memory_budget",
]


def test_map_config_defaults() -> None:
    assert [f.name for f in dataclasses.fields(MapConfig)] == MAP_FIELDS
    c: MapConfig[int] = MapConfig()
    assert c.max_concurrency is None
    assert c.completion_config == CompletionConfig()
    assert c.nesting_type is NestingType.NESTED
    assert (c.item_timeout, c.max_worker_crashes, c.recompute_changed_inputs) == (None, 3, False)
    assert (c.worker_memory_limit, c.memory_budget, c.item_namer, c.serdes) == (None, None, None, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.max_concurrency = 2  # type: ignore[misc]


def test_parallel_config_defaults() -> None:
    assert [f.name for f in dataclasses.fields(ParallelConfig)] == [f for f in MAP_FIELDS if f != "item_namer"]
    assert ParallelConfig().completion_config == CompletionConfig.all_successful()


def test_map_config_accepts_valid_values() -> None:
    config: MapConfig[int] = MapConfig(
        max_concurrency=1,
        serdes=JsonSerDes(),
        item_serdes=JsonSerDes(),
        summary_generator=str,
        nesting_type=NestingType.FLAT,
        item_namer=lambda item, i: f"n{i}",
        item_timeout=0.5,
        max_worker_crashes=1,
        worker_memory_limit=1,
        memory_budget=10**9,
    )
    assert config.item_timeout == 0.5


BAD_BATCH_CONFIGS = [
    ({"max_concurrency": 0}, "^max_concurrency must be at least 1, got: 0$"),
    ({"max_concurrency": -2}, "^max_concurrency must be at least 1, got: -2$"),
    ({"max_concurrency": 1.5}, "^max_concurrency must be at least 1, got: 1.5$"),
    ({"completion_config": {"min_successful": 1}}, "^completion_config must be a CompletionConfig"),
    ({"serdes": "json"}, "^serdes must be a durablemap.serdes.SerDes instance or None"),
    ({"item_serdes": object()}, "^item_serdes must be a durablemap.serdes.SerDes instance or None"),
    ({"summary_generator": "x"}, "^summary_generator must be callable or None"),
    ({"nesting_type": "FLATTER"}, "^nesting_type must be NestingType.NESTED or NestingType.FLAT"),
    ({"item_timeout": 0}, r"^item_timeout must be a positive number of seconds, or None for no limit, got: 0$"),
    ({"item_timeout": -1.0}, "^item_timeout must be a positive number of seconds"),
    ({"max_worker_crashes": 0}, r"^max_worker_crashes must be an int of at least 1 .*got: 0$"),
    ({"max_worker_crashes": None}, r"^max_worker_crashes must be an int of at least 1 .*got: None$"),
    ({"worker_memory_limit": 0}, "^worker_memory_limit must be a positive number of bytes"),
    ({"memory_budget": -5}, "^memory_budget must be a positive number of bytes"),
]


@pytest.mark.parametrize(("kwargs", "pattern"), BAD_BATCH_CONFIGS)
def test_map_config_validation(kwargs: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ValidationError, match=pattern):
        MapConfig(**kwargs)


@pytest.mark.parametrize(("kwargs", "pattern"), BAD_BATCH_CONFIGS)
def test_parallel_config_validation(kwargs: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ValidationError, match=pattern):
        ParallelConfig(**kwargs)


def test_item_namer_must_be_callable() -> None:
    with pytest.raises(ValidationError, match=r"^item_namer must be callable or None"):
        MapConfig(item_namer="name")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ParallelConfig(item_namer=lambda item, i: "x")  # type: ignore[call-arg]


# Branches, steps, child contexts


def test_parallel_branch() -> None:
    branch: ParallelBranch[int] = ParallelBranch(lambda ctx: ctx + 1, name="inc")
    assert branch(1) == 2
    assert branch.name == "inc"
    assert ParallelBranch(len).name is None
    with pytest.raises(ValidationError, match="must be callable"):
        ParallelBranch(3)  # type: ignore[arg-type]


def test_durable_parallel_branch_decorator() -> None:
    # As in the SDK: the decorated function is a factory of branches; its arguments are bound.
    @durable_parallel_branch("fetch")
    def fetch(ctx: int, factor: int) -> int:
        return ctx * factor

    branch = fetch(10)
    assert isinstance(branch, ParallelBranch)
    assert branch.name == "fetch"
    assert branch(2) == 20

    @durable_parallel_branch()
    def unnamed(ctx: int) -> int:
        return ctx

    assert unnamed().name is None
    assert unnamed()(5) == 5


def test_step_config() -> None:
    c = StepConfig()
    assert (c.retry_strategy, c.step_semantics, c.serdes, c.sub_type) == (
        None,
        StepSemantics.AT_LEAST_ONCE_PER_RETRY,
        None,
        None,
    )
    strategy = RetryPresets.none()
    assert StepConfig(strategy, StepSemantics.AT_MOST_ONCE_PER_RETRY).retry_strategy is strategy
    assert StepConfig(sub_type="my_step-1").sub_type == "my_step-1"
    with pytest.raises(TypeError):
        StepConfig(None, StepSemantics.AT_MOST_ONCE_PER_RETRY, None, "x")  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match=r"^retry_strategy must be callable or None"):
        StepConfig(retry_strategy=5)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"^step_semantics must be"):
        StepConfig(step_semantics="AT_MOST")  # type: ignore[arg-type]


@pytest.mark.parametrize("sub_type", ["has space", "x" * 33, "dot.ted"])
def test_sub_type_validation(sub_type: str) -> None:
    with pytest.raises(ValidationError, match=r"^sub_type must be 1 to 32 characters"):
        StepConfig(sub_type=sub_type)
    with pytest.raises(ValidationError, match=r"^sub_type must be 1 to 32 characters"):
        ChildConfig(sub_type=sub_type)


def test_child_config() -> None:
    assert dataclasses.astuple(ChildConfig()) == (None, None, None)
    assert ChildConfig(sub_type="").sub_type == ""
    assert ChildConfig(JsonSerDes(), "x" * 32, str).sub_type == "x" * 32
    with pytest.raises(ValidationError, match=r"^summary_generator must be callable"):
        ChildConfig(summary_generator=1)  # type: ignore[arg-type]
