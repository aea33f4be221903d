"""CompletionPolicy: the reference's table 4.4 replayed at policy level, and its invariants."""

from __future__ import annotations

from collections.abc import Callable, Collection

import pytest
from hypothesis import given
from hypothesis import strategies as st

from durablemap._batch import BatchItem, BatchItemStatus, BatchResult, CompletionReason
from durablemap._completion import CompletionPolicy
from durablemap._errors import BatchCompletionError, ValidationError
from durablemap.config import (
    CompletionConfig,
    CompletionDecision,
    CompletionItemStatus,
    CompletionOutcome,
    CompletionStatus,
    complete_batch,
    continue_batch,
)

S, F, ST = BatchItemStatus.SUCCEEDED, BatchItemStatus.FAILED, BatchItemStatus.STARTED


def simulate(
    config: CompletionConfig,
    n: int,
    failing: Collection[int],
    max_concurrency: int | None = 1,
    finish_first: Callable[[list[int]], int] = min,
) -> BatchResult[int]:
    """Drive the policy as the coordinator does: start items in index order up to the concurrency
    limit, finish one in-flight item at a time (``finish_first`` picks which), re-check after each."""
    policy = CompletionPolicy(config, n)
    limit = max_concurrency or n
    outcomes: dict[int, BatchItemStatus] = {}
    in_flight: list[int] = []
    next_index = succeeded = failed = 0

    def snapshot() -> CompletionStatus:
        items = tuple(CompletionItemStatus(i, None, outcomes.get(i, ST if i in in_flight else None)) for i in range(n))
        return CompletionStatus(succeeded, failed, succeeded + failed, n, items)

    decision = policy.decide(snapshot())
    while not policy.is_complete(succeeded, failed, decision):
        while next_index < n and len(in_flight) < limit and policy.should_continue(failed):
            in_flight.append(next_index)
            next_index += 1
        if not in_flight:
            break
        done = finish_first(in_flight)
        in_flight.remove(done)
        if done in failing:
            outcomes[done], failed = F, failed + 1
        else:
            outcomes[done], succeeded = S, succeeded + 1
        decision = policy.decide(snapshot())
    reason = policy.reason(succeeded, failed, decision)
    for index in in_flight:
        outcomes[index] = ST
    return BatchResult([BatchItem(i, outcomes[i], i if outcomes[i] is S else None) for i in sorted(outcomes)], reason)


def shape(result: BatchResult[int]) -> list[tuple[int, str]]:
    return [(item.index, item.status.value[0] if item.status is not ST else "ST") for item in result.all]


R = CompletionReason
ALL_SUCCESSFUL = CompletionConfig.all_successful()

# Reference table 4.4, one row per case; the SDK's fail-fast default is spelled all_successful() here.
TABLE = [
    (
        "row 1: SDK default (= all_successful), mc=1",
        ALL_SUCCESSFUL,
        5,
        {1},
        1,
        [(0, "S"), (1, "F")],
        R.FAILURE_TOLERANCE_EXCEEDED,
    ),
    (
        "row 3: all_successful, mc=1",
        CompletionConfig.all_successful(),
        5,
        {1},
        1,
        [(0, "S"), (1, "F")],
        R.FAILURE_TOLERANCE_EXCEEDED,
    ),
    (
        "first_successful, 0 fails",
        CompletionConfig.first_successful(),
        5,
        {0},
        1,
        [(0, "F"), (1, "S")],
        R.MIN_SUCCESSFUL_REACHED,
    ),
    (
        "first_successful, all fail",
        CompletionConfig.first_successful(),
        3,
        {0, 1, 2},
        1,
        [(0, "F"), (1, "F"), (2, "F")],
        R.ALL_COMPLETED,
    ),
    (
        "min_successful=2 mc=2",
        CompletionConfig(min_successful=2),
        6,
        set(),
        2,
        [(0, "S"), (1, "S"), (2, "ST")],
        R.MIN_SUCCESSFUL_REACHED,
    ),
    (
        "tolerated_failure_count=1",
        CompletionConfig(tolerated_failure_count=1),
        6,
        {1, 3, 4},
        1,
        [(0, "S"), (1, "F"), (2, "S"), (3, "F")],
        R.FAILURE_TOLERANCE_EXCEEDED,
    ),
    (
        "tolerated_failure_percentage=25",
        CompletionConfig(tolerated_failure_percentage=25),
        8,
        {1, 3, 4},
        1,
        [(0, "S"), (1, "F"), (2, "S"), (3, "F"), (4, "F")],
        R.FAILURE_TOLERANCE_EXCEEDED,
    ),
    (
        "min 3, count 1",
        CompletionConfig(min_successful=3, tolerated_failure_count=1),
        8,
        {0},
        1,
        [(0, "F"), (1, "S"), (2, "S"), (3, "S")],
        R.MIN_SUCCESSFUL_REACHED,
    ),
    (
        "min 1, count 0",
        CompletionConfig(min_successful=1, tolerated_failure_count=0),
        3,
        {0},
        1,
        [(0, "F")],
        R.FAILURE_TOLERANCE_EXCEEDED,
    ),
    (
        "min 2, count 5",
        CompletionConfig(min_successful=2, tolerated_failure_count=5),
        4,
        {0, 1, 2},
        1,
        [(0, "F"), (1, "F"), (2, "F"), (3, "S")],
        R.ALL_COMPLETED,
    ),
    (
        "all_completed",
        CompletionConfig.all_completed(),
        4,
        {2},
        1,
        [(0, "S"), (1, "S"), (2, "F"), (3, "S")],
        R.ALL_COMPLETED,
    ),
]


@pytest.mark.parametrize(
    ("config", "n", "failing", "mc", "expected", "reason"), [row[1:] for row in TABLE], ids=[row[0] for row in TABLE]
)
def test_reference_table(
    config: CompletionConfig,
    n: int,
    failing: set[int],
    mc: int,
    expected: list[tuple[int, str]],
    reason: CompletionReason,
) -> None:
    result = simulate(config, n, failing, mc)
    assert shape(result) == expected
    assert result.completion_reason is reason


def test_table_statuses() -> None:
    assert simulate(CompletionConfig.first_successful(), 5, {0}).status is F
    assert simulate(CompletionConfig(min_successful=2, tolerated_failure_count=5), 4, {0, 1, 2}).status is F
    assert simulate(CompletionConfig.all_completed(), 4, {2}).status is F
    assert simulate(CompletionConfig(min_successful=2), 6, set(), 2).status is S


def test_unbounded_all_successful_reports_slow_items_started() -> None:
    # Row 2 of the table: every item starts at once, item 1 fails first while the others are slow.
    result = simulate(ALL_SUCCESSFUL, 5, {1}, None, finish_first=lambda flight: 1 if 1 in flight else min(flight))
    assert shape(result) == [(0, "ST"), (1, "F"), (2, "ST"), (3, "ST"), (4, "ST")]
    assert result.completion_reason is R.FAILURE_TOLERANCE_EXCEEDED
    assert result.total_count == 5


@pytest.mark.parametrize("mc", [1, 2, None])
def test_durablemap_default_runs_every_item(mc: int | None) -> None:
    # CONTRACT 4: where the SDK fails fast (table rows 1 and 2), durablemap's default runs everything.
    result = simulate(CompletionConfig(), 5, {1}, mc)
    assert shape(result) == [(0, "S"), (1, "F"), (2, "S"), (3, "S"), (4, "S")]
    assert result.completion_reason is R.ALL_COMPLETED
    assert result.status is F
    every_failure = simulate(CompletionConfig(), 3, {0, 1, 2}, mc)
    assert every_failure.failure_count == 3
    assert every_failure.completion_reason is R.ALL_COMPLETED


@pytest.mark.parametrize(
    "config",
    [
        CompletionConfig(),
        ALL_SUCCESSFUL,
        CompletionConfig.first_successful(),
        CompletionConfig.all_completed(),
        CompletionConfig(should_complete=lambda s: continue_batch()),
    ],
)
def test_zero_inputs(config: CompletionConfig) -> None:
    result = simulate(config, 0, set())
    assert result.all == []
    assert result.completion_reason is R.ALL_COMPLETED


def test_predicate_completing_at_zero_progress() -> None:
    config = CompletionConfig(should_complete=lambda status: complete_batch())
    result = simulate(config, 4, set())
    assert result.all == []
    assert result.completion_reason is R.CUSTOM_COMPLETION_SUCCEEDED


def test_predicate_failing_the_batch_without_failed_items() -> None:
    def after_two(status: CompletionStatus) -> CompletionDecision:
        if status.success_count >= 2:
            return complete_batch(CompletionOutcome.FAILED)
        return continue_batch()

    result = simulate(CompletionConfig(should_complete=after_two), 5, set())
    assert shape(result) == [(0, "S"), (1, "S")]
    assert result.completion_reason is R.CUSTOM_COMPLETION_FAILED
    assert result.status is F
    with pytest.raises(BatchCompletionError):
        result.throw_if_error()


def test_predicate_sees_item_statuses() -> None:
    seen: list[tuple[BatchItemStatus | None, ...]] = []

    def record(status: CompletionStatus) -> CompletionDecision:
        seen.append(tuple(item.status for item in status.items))
        return continue_batch()

    simulate(CompletionConfig(should_complete=record), 2, {1})
    assert seen == [(None, None), (S, None), (S, F)]


def test_predicate_owns_early_exit() -> None:
    policy = CompletionPolicy(CompletionConfig(should_complete=lambda s: continue_batch()), 3)
    assert policy.has_predicate
    assert not policy.is_tolerance_exceeded(3)
    assert policy.should_continue(3)
    result = simulate(CompletionConfig(should_complete=lambda s: continue_batch()), 3, {0, 1, 2})
    assert result.failure_count == 3
    assert result.completion_reason is R.ALL_COMPLETED


def test_decide_without_predicate_and_with_a_bad_answer() -> None:
    status = CompletionStatus(0, 0, 0, 1)
    assert CompletionPolicy(CompletionConfig(), 1).decide(status) is None
    assert not CompletionPolicy(CompletionConfig(), 1).has_predicate
    bad = CompletionPolicy(CompletionConfig(should_complete=lambda s: True), 1)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValidationError, match="should_complete must return a CompletionDecision"):
        bad.decide(status)


def test_tolerance_limits_are_strict() -> None:
    count = CompletionPolicy(CompletionConfig(tolerated_failure_count=2), 10)
    assert not count.is_tolerance_exceeded(2)
    assert count.is_tolerance_exceeded(3)
    pct = CompletionPolicy(CompletionConfig(tolerated_failure_percentage=25), 8)
    assert not pct.is_tolerance_exceeded(2)  # exactly 25 %
    assert pct.is_tolerance_exceeded(3)
    assert not CompletionPolicy(CompletionConfig(min_successful=1), 5).is_tolerance_exceeded(5)
    assert not CompletionPolicy(CompletionConfig(tolerated_failure_percentage=0), 0).is_tolerance_exceeded(0)


def test_reason_priority() -> None:
    policy = CompletionPolicy(CompletionConfig(min_successful=1, tolerated_failure_count=0), 2)
    # Tolerance wins even when every item finished and min_successful was met.
    assert policy.reason(1, 1) is R.FAILURE_TOLERANCE_EXCEEDED
    assert policy.reason(2, 0) is R.ALL_COMPLETED
    assert policy.reason(1, 0) is R.MIN_SUCCESSFUL_REACHED
    predicate = CompletionPolicy(CompletionConfig(should_complete=lambda s: continue_batch()), 4)
    assert predicate.reason(4, 0, complete_batch()) is R.CUSTOM_COMPLETION_SUCCEEDED
    assert predicate.reason(0, 0, complete_batch(CompletionOutcome.FAILED)) is R.CUSTOM_COMPLETION_FAILED
    assert predicate.reason(4, 0, continue_batch()) is R.ALL_COMPLETED


# Hypothesis: the policy's invariants over any threshold config and any counts.

configs = st.builds(
    CompletionConfig,
    min_successful=st.none() | st.integers(1, 12),
    tolerated_failure_count=st.none() | st.integers(0, 12),
    tolerated_failure_percentage=st.none() | st.integers(0, 100) | st.floats(0, 100),
)


@st.composite
def config_and_counts(draw: st.DrawFn) -> tuple[CompletionConfig, int, int, int]:
    config = draw(configs)
    total = draw(st.integers(0, 12))
    succeeded = draw(st.integers(0, total))
    failed = draw(st.integers(0, total - succeeded))
    return config, total, succeeded, failed


@given(config_and_counts())
def test_completion_is_monotone(case: tuple[CompletionConfig, int, int, int]) -> None:
    config, total, s, f = case
    policy = CompletionPolicy(config, total)
    if s + f < total:
        if policy.is_complete(s, f):
            assert policy.is_complete(s + 1, f)
            assert policy.is_complete(s, f + 1)
        if policy.is_tolerance_exceeded(f):
            assert policy.is_tolerance_exceeded(f + 1)
    assert policy.should_continue(f) is not policy.is_tolerance_exceeded(f)


@given(config_and_counts())
def test_reason_matches_the_rule_that_fired(case: tuple[CompletionConfig, int, int, int]) -> None:
    config, total, s, f = case
    policy = CompletionPolicy(config, total)
    reason = policy.reason(s, f)
    assert (reason is R.FAILURE_TOLERANCE_EXCEEDED) is policy.is_tolerance_exceeded(f)
    assert reason not in (R.CUSTOM_COMPLETION_SUCCEEDED, R.CUSTOM_COMPLETION_FAILED)
    if reason is R.MIN_SUCCESSFUL_REACHED:
        assert config.min_successful is not None
        assert s >= config.min_successful
        assert s + f < total
    if policy.is_complete(s, f) and not policy.is_tolerance_exceeded(f) and s + f >= total:
        assert reason is R.ALL_COMPLETED


@given(st.integers(0, 12), st.integers(0, 12), st.integers(0, 12))
def test_default_config_never_stops_early(total: int, s: int, f: int) -> None:
    policy = CompletionPolicy(CompletionConfig(), total)
    assert not policy.is_tolerance_exceeded(f)
    assert policy.is_complete(s, f) is (s + f >= total)


@given(st.integers(1, 10), st.sets(st.integers(0, 9)), st.integers(0, 3))
def test_sequential_run_stops_after_tolerated_failures(n: int, failing: set[int], tolerated: int) -> None:
    failing = {i for i in failing if i < n}
    result = simulate(CompletionConfig(tolerated_failure_count=tolerated), n, failing)
    if len(failing) > tolerated:
        assert result.failure_count == tolerated + 1
        assert result.all[-1].status is F
        assert result.completion_reason is R.FAILURE_TOLERANCE_EXCEEDED
    else:
        assert result.total_count == n
        assert result.completion_reason is R.ALL_COMPLETED
    assert result.started_count == 0
