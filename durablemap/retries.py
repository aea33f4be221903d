"""Retry strategies for steps: ``(error, attempts_made) -> RetryDecision``.

``attempts_made`` counts the executions so far, the first included, so ``max_attempts=3`` means at
most three runs of the step body. Delays are whole seconds, at least 1, after jitter.

Jitter draws from ``random.random`` unless a strategy is built with ``rng=``; tests pass a fixed
source to make delays exact.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from durablemap._errors import ValidationError
from durablemap.config import Duration

__all__ = [
    "JitterStrategy",
    "RetryDecision",
    "RetryStrategyConfig",
    "LinearRetryStrategyConfig",
    "RetryStrategy",
    "RetryPresets",
    "create_retry_strategy",
    "create_linear_retry_strategy",
    "as_retry_strategy",
]

RandomSource = Callable[[], float]
RetryStrategy = Callable[[Exception, int], "RetryDecision"]


def _draw(rng: RandomSource | None) -> float:
    # Looked up at call time so tests may also patch random.random itself.
    return rng() if rng is not None else random.random()


class JitterStrategy(StrEnum):
    """How a retry delay is randomised so that many failing steps do not retry in lockstep."""

    NONE = "NONE"
    HALF = "HALF"
    FULL = "FULL"

    def apply_jitter(self, delay: float, rng: RandomSource | None = None) -> float:
        """NONE keeps ``delay``; HALF draws from [delay/2, delay); FULL draws from [0, delay)."""
        if self is JitterStrategy.HALF:
            return delay / 2 + _draw(rng) * delay / 2
        if self is JitterStrategy.FULL:
            return _draw(rng) * delay
        return delay

    def finalize_delay(self, delay: float, rng: RandomSource | None = None) -> int:
        """The jittered delay rounded up to whole seconds, at least 1."""
        return max(1, math.ceil(self.apply_jitter(delay, rng)))


@dataclass
class RetryDecision:
    """Whether to run a failed step again, and after how long."""

    should_retry: bool
    delay: Duration

    @property
    def delay_seconds(self) -> int:
        """The delay in seconds."""
        return self.delay.to_seconds()

    @classmethod
    def retry(cls, delay: Duration) -> RetryDecision:
        """Retry after ``delay``."""
        return cls(should_retry=True, delay=delay)

    @classmethod
    def no_retry(cls) -> RetryDecision:
        """Give up: the step fails with `StepError`."""
        return cls(should_retry=False, delay=Duration())


ErrorPatterns = list[str | re.Pattern[str]] | None
ErrorTypes = list[type[Exception]] | None


def _check_attempts(max_attempts: int) -> None:
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise ValidationError(f"max_attempts must be an int of at least 1 (1 means no retry), got: {max_attempts!r}")


@dataclass
class RetryStrategyConfig:
    """Exponential backoff: ``initial_delay * backoff_rate ** (attempts_made - 1)``, capped by ``max_delay``.

    An error is retried when a ``retryable_errors`` string is a substring of ``str(error)``, a pattern
    ``search``es it, or it is an instance of a ``retryable_error_types`` class. With both lists None,
    every error is retried.
    """

    max_attempts: int = 3
    initial_delay: Duration = field(default_factory=lambda: Duration(5))
    max_delay: Duration = field(default_factory=lambda: Duration(300))
    backoff_rate: float = 2.0
    jitter_strategy: JitterStrategy = JitterStrategy.FULL
    retryable_errors: ErrorPatterns = None
    retryable_error_types: ErrorTypes = None

    def __post_init__(self) -> None:
        _check_attempts(self.max_attempts)


@dataclass
class LinearRetryStrategyConfig:
    """Linear backoff: ``initial_delay + increment * (attempts_made - 1)``, capped by ``max_delay``.

    The error filters work as in `RetryStrategyConfig`.
    """

    max_attempts: int = 6
    initial_delay: Duration = field(default_factory=lambda: Duration(1))
    increment: Duration = field(default_factory=lambda: Duration(1))
    max_delay: Duration = field(default_factory=lambda: Duration(300))
    jitter_strategy: JitterStrategy = JitterStrategy.FULL
    retryable_errors: ErrorPatterns = None
    retryable_error_types: ErrorTypes = None

    def __post_init__(self) -> None:
        _check_attempts(self.max_attempts)


_MATCH_ALL = re.compile(r".*")


def as_retry_strategy(value: RetryStrategy | RetryStrategyConfig | LinearRetryStrategyConfig | None,
                      ) -> RetryStrategy | None:
    """``StepConfig.retry_strategy`` as a strategy: a retry config given in its place (the SDK
    accepts one there) becomes the strategy it describes."""
    if isinstance(value, RetryStrategyConfig):
        return create_retry_strategy(value)
    if isinstance(value, LinearRetryStrategyConfig):
        return create_linear_retry_strategy(value)
    return value


def _error_filter(patterns: ErrorPatterns, types: ErrorTypes) -> Callable[[Exception], bool]:
    """Whether an error is retryable under the config's message patterns and types."""
    if patterns is None and types is None:
        pattern_list: Sequence[str | re.Pattern[str]] = [_MATCH_ALL]
    else:
        # Types alone mean no message matches: only the listed classes retry.
        pattern_list = list(patterns or ())
    type_tuple = tuple(types or ())

    def is_retryable(error: Exception) -> bool:
        if type_tuple and isinstance(error, type_tuple):
            return True
        text = str(error)
        for pattern in pattern_list:
            if isinstance(pattern, str):
                if pattern in text:
                    return True
            elif pattern.search(text):
                return True
        return False

    return is_retryable


def _build_strategy(
    *,
    max_attempts: int,
    base_delay: Callable[[int], float],
    max_delay: Duration,
    jitter: JitterStrategy,
    retryable: Callable[[Exception], bool],
    rng: RandomSource | None,
) -> RetryStrategy:
    cap = max_delay.to_seconds()

    def strategy(error: Exception, attempts_made: int) -> RetryDecision:
        if attempts_made >= max_attempts or not retryable(error):
            return RetryDecision.no_retry()
        delay = min(base_delay(attempts_made), cap)
        return RetryDecision.retry(Duration(jitter.finalize_delay(delay, rng)))

    return strategy


def create_retry_strategy(
    config: RetryStrategyConfig | None = None, *, rng: RandomSource | None = None
) -> RetryStrategy:
    """An exponential-backoff strategy; ``config`` None means `RetryStrategyConfig()` (3 attempts)."""
    cfg = config if config is not None else RetryStrategyConfig()
    initial, rate = cfg.initial_delay.to_seconds(), cfg.backoff_rate

    def base_delay(attempts_made: int) -> float:
        return float(initial * rate ** (attempts_made - 1))

    return _strategy_of(cfg, base_delay, rng)


def _strategy_of(cfg: RetryStrategyConfig | LinearRetryStrategyConfig, base_delay: Callable[[int], float],
                 rng: RandomSource | None) -> RetryStrategy:
    """The strategy of ``cfg`` (attempts, cap, jitter, which errors) with its backoff ``base_delay``."""
    retryable = _error_filter(cfg.retryable_errors, cfg.retryable_error_types)
    return _build_strategy(max_attempts=cfg.max_attempts, base_delay=base_delay, max_delay=cfg.max_delay,
                           jitter=cfg.jitter_strategy, retryable=retryable, rng=rng)


def create_linear_retry_strategy(
    config: LinearRetryStrategyConfig | None = None, *, rng: RandomSource | None = None
) -> RetryStrategy:
    """A linear-backoff strategy; ``config`` None means `LinearRetryStrategyConfig()` (6 attempts)."""
    cfg = config if config is not None else LinearRetryStrategyConfig()
    initial, step = cfg.initial_delay.to_seconds(), cfg.increment.to_seconds()

    def base_delay(attempts_made: int) -> float:
        return float(initial + step * (attempts_made - 1))

    return _strategy_of(cfg, base_delay, rng)


def _preset(doc: str, config: RetryStrategyConfig | LinearRetryStrategyConfig) -> classmethod[Any, [], RetryStrategy]:
    """A ``RetryPresets`` classmethod returning a fresh strategy built from ``config``."""
    build: Callable[[Any], RetryStrategy]
    if isinstance(config, LinearRetryStrategyConfig):
        build = lambda cls: create_linear_retry_strategy(config)  # noqa: E731
    else:
        build = lambda cls: create_retry_strategy(config)  # noqa: E731
    build.__doc__ = doc
    return classmethod(build)


class RetryPresets:
    """Ready-made strategies for common cases; every preset retries every error type."""

    none = _preset("A single attempt: never retry.", RetryStrategyConfig(max_attempts=1))
    default = _preset("6 attempts, 5 s doubling to at most 60 s, full jitter (the step default).",
                      RetryStrategyConfig(6, Duration(5), Duration(60), 2.0, JitterStrategy.FULL))
    transient = _preset("3 attempts, 5 s doubling, half jitter: brief network or service blips.",
                        RetryStrategyConfig(3, Duration(5), Duration(300), 2.0, JitterStrategy.HALF))
    resource_availability = _preset(
        "5 attempts, 5 s doubling to at most 300 s, full jitter: waiting for a resource.",
        RetryStrategyConfig(5, Duration(5), Duration(300), 2.0, JitterStrategy.FULL))
    critical = _preset("10 attempts, 1 s growing 1.5x to at most 60 s, no jitter: work that must get through.",
                       RetryStrategyConfig(10, Duration(1), Duration(60), 1.5, JitterStrategy.NONE))
    linear = _preset("6 attempts, 1 s then +1 s each time, no jitter.",
                     LinearRetryStrategyConfig(6, Duration(1), Duration(1), Duration(300), JitterStrategy.NONE))

    @classmethod
    def fixed(cls, interval: Duration | None = None) -> RetryStrategy:
        """5 attempts, a constant ``interval`` (default 5 s) between them, no jitter."""
        delay = interval if interval is not None else Duration(5)
        return create_retry_strategy(RetryStrategyConfig(5, delay, delay, 1.0, JitterStrategy.NONE))
