"""Retry strategies: attempt counting, delays, error filters, jitter bounds, presets."""

from __future__ import annotations

import random
import re
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

import durablemap.retries as retries_module
from durablemap._errors import ValidationError
from durablemap.config import Duration
from durablemap.retries import (
    JitterStrategy,
    LinearRetryStrategyConfig,
    RetryDecision,
    RetryPresets,
    RetryStrategyConfig,
    create_linear_retry_strategy,
    create_retry_strategy,
)

Strategy = Callable[[Exception, int], RetryDecision]


def delays(strategy: Strategy, error: Exception | None = None, limit: int = 20) -> list[int]:
    """The delays a strategy asks for on attempts 1, 2, ... until it gives up."""
    out: list[int] = []
    for attempt in range(1, limit + 1):
        decision = strategy(error or RuntimeError("boom"), attempt)
        if not decision.should_retry:
            return out
        out.append(decision.delay_seconds)
    raise AssertionError("strategy never gave up")


def test_all_names_exist() -> None:
    for name in retries_module.__all__:
        assert getattr(retries_module, name) is not None


def test_retry_decision() -> None:
    assert RetryDecision.retry(Duration(4)) == RetryDecision(True, Duration(4))
    assert RetryDecision.retry(Duration(4)).delay_seconds == 4
    assert RetryDecision.no_retry() == RetryDecision(False, Duration())
    assert RetryDecision.no_retry().delay_seconds == 0


def test_config_defaults() -> None:
    c = RetryStrategyConfig()
    assert (c.max_attempts, c.initial_delay, c.max_delay, c.backoff_rate, c.jitter_strategy) == (
        3,
        Duration(5),
        Duration(300),
        2.0,
        JitterStrategy.FULL,
    )
    assert (c.retryable_errors, c.retryable_error_types) == (None, None)
    lin = LinearRetryStrategyConfig()
    assert (lin.max_attempts, lin.initial_delay, lin.increment, lin.max_delay, lin.jitter_strategy) == (
        6,
        Duration(1),
        Duration(1),
        Duration(300),
        JitterStrategy.FULL,
    )


@pytest.mark.parametrize("bad", [0, -1, True, 2.5])
def test_max_attempts_validation(bad: int) -> None:
    with pytest.raises(ValidationError, match=r"^max_attempts must be an int of at least 1"):
        RetryStrategyConfig(max_attempts=bad)
    with pytest.raises(ValidationError, match=r"^max_attempts must be an int of at least 1"):
        LinearRetryStrategyConfig(max_attempts=bad)


def test_max_attempts_counts_every_execution() -> None:
    strategy = create_retry_strategy(RetryStrategyConfig(max_attempts=3, jitter_strategy=JitterStrategy.NONE))
    assert strategy(RuntimeError(), 1).should_retry
    assert strategy(RuntimeError(), 2).should_retry
    assert not strategy(RuntimeError(), 3).should_retry
    assert not strategy(RuntimeError(), 4).should_retry
    assert delays(create_retry_strategy()) != []
    assert len(delays(create_retry_strategy())) == 2  # the default config: 3 attempts in all


def test_exponential_delays_are_capped() -> None:
    config = RetryStrategyConfig(8, Duration(5), Duration(60), 2.0, JitterStrategy.NONE)
    assert delays(create_retry_strategy(config)) == [5, 10, 20, 40, 60, 60, 60]


def test_fractional_delays_round_up_and_never_below_one() -> None:
    config = RetryStrategyConfig(5, Duration(1), Duration(100), 1.5, JitterStrategy.NONE)
    assert delays(create_retry_strategy(config)) == [1, 2, 3, 4]  # 1, 1.5, 2.25, 3.375
    zero = RetryStrategyConfig(3, Duration(0), Duration(0), 2.0, JitterStrategy.NONE)
    assert delays(create_retry_strategy(zero)) == [1, 1]


def test_linear_delays() -> None:
    config = LinearRetryStrategyConfig(6, Duration(2), Duration(3), Duration(10), JitterStrategy.NONE)
    assert delays(create_linear_retry_strategy(config)) == [2, 5, 8, 10, 10]
    assert len(delays(create_linear_retry_strategy())) == 5


class Transient(Exception):
    pass


class TransientChild(Transient):
    pass


def test_error_filters() -> None:
    def retries(config: RetryStrategyConfig, error: Exception) -> bool:
        return create_retry_strategy(config)(error, 1).should_retry

    everything = RetryStrategyConfig()
    assert retries(everything, ValueError("anything"))
    substr = RetryStrategyConfig(retryable_errors=["timed out"])
    assert retries(substr, OSError("connection timed out here"))
    assert not retries(substr, OSError("refused"))
    pattern = RetryStrategyConfig(retryable_errors=[re.compile(r"^5\d\d ")])
    assert retries(pattern, RuntimeError("503 unavailable"))
    assert not retries(pattern, RuntimeError("404 missing"))
    types_only = RetryStrategyConfig(retryable_error_types=[Transient])
    assert retries(types_only, TransientChild("x"))
    assert not retries(types_only, ValueError("x"))  # no message pattern when only types are given
    both = RetryStrategyConfig(retryable_errors=["slow"], retryable_error_types=[Transient])
    assert retries(both, ValueError("too slow"))
    assert retries(both, Transient("x"))
    assert not retries(both, ValueError("fast"))
    linear = LinearRetryStrategyConfig(retryable_error_types=[Transient])
    assert create_linear_retry_strategy(linear)(Transient(), 1).should_retry
    assert not create_linear_retry_strategy(linear)(KeyError(), 1).should_retry


def test_jitter_formulas() -> None:
    def fixed(v: float) -> Callable[[], float]:
        return lambda: v

    assert JitterStrategy.NONE.apply_jitter(10, fixed(0.3)) == 10
    assert JitterStrategy.HALF.apply_jitter(10, fixed(0.0)) == 5
    assert JitterStrategy.HALF.apply_jitter(10, fixed(0.5)) == 7.5
    assert JitterStrategy.FULL.apply_jitter(10, fixed(0.25)) == 2.5
    assert JitterStrategy.FULL.finalize_delay(10, fixed(0.0)) == 1
    assert JitterStrategy.FULL.finalize_delay(10, fixed(0.21)) == 3
    assert JitterStrategy.HALF.finalize_delay(10, fixed(0.999)) == 10
    assert [j.value for j in JitterStrategy] == ["NONE", "HALF", "FULL"]


@given(st.floats(0, 1, exclude_max=True), st.integers(0, 10_000))
def test_jitter_bounds(draw: float, delay: int) -> None:
    def rng() -> float:
        return draw

    full = JitterStrategy.FULL.apply_jitter(delay, rng)
    half = JitterStrategy.HALF.apply_jitter(delay, rng)
    assert 0 <= full <= delay
    assert delay / 2 <= half <= delay
    for jitter in JitterStrategy:
        assert 1 <= jitter.finalize_delay(delay, rng) <= max(1, delay)


def test_strategy_uses_injected_random_source() -> None:
    config = RetryStrategyConfig(4, Duration(10), Duration(300), 2.0, JitterStrategy.FULL)
    assert delays(create_retry_strategy(config, rng=lambda: 0.5)) == [5, 10, 20]
    assert delays(create_retry_strategy(config, rng=lambda: 0.0)) == [1, 1, 1]


def test_strategy_draws_from_random_random_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(random, "random", lambda: 0.5)
    config = RetryStrategyConfig(3, Duration(8), Duration(300), 2.0, JitterStrategy.HALF)
    assert delays(create_retry_strategy(config)) == [6, 12]


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        (RetryPresets.none(), []),
        (RetryPresets.critical(), [1, 2, 3, 4, 6, 8, 12, 18, 26]),  # 1.5**n, ceil, no jitter
        (RetryPresets.linear(), [1, 2, 3, 4, 5]),
        (RetryPresets.fixed(), [5, 5, 5, 5]),
        (RetryPresets.fixed(Duration(2)), [2, 2, 2, 2]),
    ],
)
def test_deterministic_presets(preset: Strategy, expected: list[int]) -> None:
    assert delays(preset) == expected


@pytest.mark.parametrize(
    ("preset", "retries", "cap", "lowest"),
    [
        (RetryPresets.default, 5, 60, [1] * 5),  # FULL jitter: down to the 1 s floor
        (RetryPresets.transient, 2, 300, [3, 5]),  # HALF jitter: at least half the delay
        (RetryPresets.resource_availability, 4, 300, [1] * 4),
    ],
)
def test_jittered_presets(
    preset: Callable[[], Strategy], retries: int, cap: int, lowest: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(random, "random", lambda: 0.999999)
    top = delays(preset())
    assert len(top) == retries
    assert top == [min(5 * 2**i, cap) for i in range(retries)]
    monkeypatch.setattr(random, "random", lambda: 0.0)
    assert delays(preset()) == lowest
