"""Configuration of durable operations: frozen, validated at construction.

An invalid value raises `ValidationError` naming the field, the value and what to pass instead. The
names and defaults follow the AWS Durable Execution SDK's ``config`` module, plus durablemap's own
`MapConfig` fields (``item_timeout``, ``max_worker_crashes``, ``recompute_changed_inputs``,
``worker_memory_limit``, ``memory_budget``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from durablemap._batch import BatchItemStatus, BatchResult
from durablemap._completion import CompletionDecision, CompletionItemStatus, CompletionOutcome, CompletionStatus
from durablemap._errors import ValidationError
from durablemap.serdes import SerDes

if TYPE_CHECKING:
    from durablemap.retries import JitterStrategy, LinearRetryStrategyConfig, RetryDecision, RetryStrategyConfig

__all__ = [
    "MapConfig",
    "ParallelConfig",
    "CompletionConfig",
    "StepConfig",
    "ChildConfig",
    "Duration",
    "NestingType",
    "StepSemantics",
    "CompletionStatus",
    "CompletionItemStatus",
    "CompletionDecision",
    "CompletionOutcome",
    "complete_batch",
    "continue_batch",
    "ParallelBranch",
    "ParallelBranchFactory",
    "durable_parallel_branch",
    "BatchItemStatus",
    "JitterStrategy",
]

T = TypeVar("T")


def __getattr__(name: str) -> Any:
    # JitterStrategy is re-exported lazily: retries imports Duration from here, so importing retries
    # at the top of this module would make the two modules import each other.
    if name == "JitterStrategy":
        from durablemap.retries import JitterStrategy

        return JitterStrategy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


SummaryGenerator = Callable[[BatchResult[Any]], str]


def _is_int(value: object) -> bool:
    # bool is an int subclass, but True as a count is a mistake worth reporting.
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Duration:
    """A whole number of seconds, as waits and retry delays take it."""

    seconds: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.seconds, int | float) or isinstance(self.seconds, bool):
            raise ValidationError(f"Duration seconds must be a number, got: {self.seconds!r}")
        if self.seconds < 0:
            raise ValidationError("Duration seconds must be positive")

    def to_seconds(self) -> int:
        """The duration in seconds."""
        return self.seconds

    @classmethod
    def from_seconds(cls, value: float) -> Duration:
        """``value`` seconds, truncated to whole seconds."""
        return cls(seconds=int(value))

    @classmethod
    def from_minutes(cls, value: float) -> Duration:
        """``value`` minutes, truncated to whole seconds."""
        return cls(seconds=int(value * 60))

    @classmethod
    def from_hours(cls, value: float) -> Duration:
        """``value`` hours, truncated to whole seconds."""
        return cls(seconds=int(value * 3600))

    @classmethod
    def from_days(cls, value: float) -> Duration:
        """``value`` days, truncated to whole seconds."""
        return cls(seconds=int(value * 86400))


def complete_batch(outcome: CompletionOutcome = CompletionOutcome.SUCCEEDED) -> CompletionDecision:
    """Tell the batch to complete now with ``outcome``; items in flight are reported STARTED."""
    return CompletionDecision(complete=True, outcome=outcome)


def continue_batch() -> CompletionDecision:
    """Tell the batch to go on."""
    return CompletionDecision(complete=False)


@dataclass(frozen=True)
class CompletionConfig:
    """When a batch completes early.

    With no field set, every item runs whatever fails. Tolerance is exceeded when ``failed >
    tolerated_failure_count`` or ``failed / inputs * 100 > tolerated_failure_percentage``; the batch
    completes when every item finished, ``min_successful`` items succeeded, tolerance is exceeded, or
    ``should_complete`` (which cannot be combined with the thresholds) says so.
    """

    min_successful: int | None = None
    tolerated_failure_count: int | None = None
    tolerated_failure_percentage: int | float | None = None
    should_complete: Callable[[CompletionStatus], CompletionDecision] | None = None

    def __post_init__(self) -> None:
        m = self.min_successful
        if m is not None and (not _is_int(m) or m < 1):
            raise ValidationError(f"min_successful must be at least 1, got: {m}")
        c = self.tolerated_failure_count
        if c is not None and (not _is_int(c) or c < 0):
            raise ValidationError(f"tolerated_failure_count must be non-negative, got: {c}")
        p = self.tolerated_failure_percentage
        if p is not None and (
            isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 100  # NaN fails too
        ):
            raise ValidationError(f"tolerated_failure_percentage must be between 0 and 100, got: {p}")
        if self.should_complete is not None:
            if not callable(self.should_complete):
                raise ValidationError("should_complete must be callable")
            if m is not None or c is not None or p is not None:
                raise ValidationError(
                    "should_complete cannot be combined with min_successful, tolerated_failure_count, "
                    "or tolerated_failure_percentage"
                )

    @staticmethod
    def first_successful() -> CompletionConfig:
        """Complete as soon as one item succeeds."""
        return CompletionConfig(min_successful=1)

    @staticmethod
    def all_completed() -> CompletionConfig:
        """Run every item whatever fails."""
        return CompletionConfig(tolerated_failure_percentage=100)

    @staticmethod
    def all_successful() -> CompletionConfig:
        """Stop starting items at the first failure."""
        return CompletionConfig(tolerated_failure_count=0, tolerated_failure_percentage=0)

    def _validate_for_total(self, total: int) -> None:
        """Reject a ``min_successful`` that ``total`` inputs can never reach."""
        if self.min_successful is not None and self.min_successful > total:
            raise ValidationError(f"min_successful cannot be greater than total items: {self.min_successful} > {total}")


class NestingType(StrEnum):
    """NESTED records every map item as its own child context; FLAT records only their inner operations."""

    NESTED = "NESTED"
    FLAT = "FLAT"


class StepSemantics(StrEnum):
    """Whether a step interrupted mid-attempt runs again (AT_LEAST_ONCE) or fails (AT_MOST_ONCE)."""

    AT_MOST_ONCE_PER_RETRY = "AT_MOST_ONCE_PER_RETRY"
    AT_LEAST_ONCE_PER_RETRY = "AT_LEAST_ONCE_PER_RETRY"


def _check_callable(name: str, value: object) -> None:
    if value is not None and not callable(value):
        raise ValidationError(f"{name} must be callable or None, got: {value!r}")


def _check_serdes(name: str, value: object) -> None:
    if value is not None and not isinstance(value, SerDes):
        raise ValidationError(f"{name} must be a durablemap.serdes.SerDes instance or None, got: {value!r}")


def _check_positive(name: str, value: object, unit: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValidationError(f"{name} must be a positive number of {unit}, or None for no limit, got: {value!r}")


def _validate_batch_fields(config: MapConfig[Any] | ParallelConfig) -> None:
    """Checks shared by `MapConfig` and `ParallelConfig`."""
    n = config.max_concurrency
    if n is not None and (not _is_int(n) or n < 1):
        raise ValidationError(f"max_concurrency must be at least 1, got: {n}")
    if not isinstance(config.completion_config, CompletionConfig):
        raise ValidationError(f"completion_config must be a CompletionConfig, got: {config.completion_config!r}")
    _check_serdes("serdes", config.serdes)
    _check_serdes("item_serdes", config.item_serdes)
    _check_callable("summary_generator", config.summary_generator)
    if not isinstance(config.nesting_type, NestingType):
        raise ValidationError(
            f"nesting_type must be NestingType.NESTED or NestingType.FLAT, got: {config.nesting_type!r}"
        )
    _check_positive("item_timeout", config.item_timeout, "seconds")
    crashes = config.max_worker_crashes
    if not _is_int(crashes) or crashes < 1:
        raise ValidationError(
            "max_worker_crashes must be an int of at least 1 (the worker deaths an item may cause "
            f"before it is FAILED), got: {crashes!r}"
        )
    _check_positive("worker_memory_limit", config.worker_memory_limit, "bytes")
    _check_positive("memory_budget", config.memory_budget, "bytes")


@dataclass(frozen=True)
class MapConfig(Generic[T]):
    """How ``context.map`` runs: concurrency, completion, serialization, naming, and durablemap's limits.

    ``item_timeout`` (seconds) fails an item that runs longer with `ItemTimeoutError`;
    ``max_worker_crashes`` is how many worker deaths an item may cause before it fails with
    `WorkerCrashedError`; ``worker_memory_limit`` and ``memory_budget`` are in bytes.
    """

    max_concurrency: int | None = None
    completion_config: CompletionConfig = field(default_factory=CompletionConfig)
    serdes: SerDes[Any] | None = None
    item_serdes: SerDes[Any] | None = None
    summary_generator: SummaryGenerator | None = None
    nesting_type: NestingType = NestingType.NESTED
    item_namer: Callable[[T, int], str] | None = None
    item_timeout: float | None = None
    max_worker_crashes: int = 3
    recompute_changed_inputs: bool = False
    worker_memory_limit: int | None = None
    memory_budget: int | None = None

    def __post_init__(self) -> None:
        _validate_batch_fields(self)
        _check_callable("item_namer", self.item_namer)


@dataclass(frozen=True)
class ParallelConfig:
    """How ``context.parallel`` runs; as `MapConfig` without ``item_namer``, all-successful by default."""

    max_concurrency: int | None = None
    completion_config: CompletionConfig = field(default_factory=CompletionConfig.all_successful)
    serdes: SerDes[Any] | None = None
    item_serdes: SerDes[Any] | None = None
    summary_generator: SummaryGenerator | None = None
    nesting_type: NestingType = NestingType.NESTED
    item_timeout: float | None = None
    max_worker_crashes: int = 3
    recompute_changed_inputs: bool = False
    worker_memory_limit: int | None = None
    memory_budget: int | None = None

    def __post_init__(self) -> None:
        _validate_batch_fields(self)


@dataclass(frozen=True)
class ParallelBranch(Generic[T]):
    """A branch of ``context.parallel`` with an optional name; calling it calls ``func``."""

    func: Callable[..., T]
    name: str | None = None

    def __post_init__(self) -> None:
        if not callable(self.func):
            raise ValidationError(f"ParallelBranch func must be callable, got: {self.func!r}")

    def __call__(self, *args: Any, **kwargs: Any) -> T:
        return self.func(*args, **kwargs)


@dataclass(frozen=True)
class _BoundBranch(Generic[T]):
    """``func(ctx, *args, **kwargs)``: a decorated branch with its arguments bound (picklable)."""

    func: Callable[..., T]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def __call__(self, ctx: Any) -> T:
        return self.func(ctx, *self.args, **self.kwargs)


class ParallelBranchFactory(Generic[T]):
    """What ``@durable_parallel_branch`` makes of a function ``f(ctx, *args, **kwargs)``: calling it
    with the branch's own arguments, ``f(*args, **kwargs)``, returns a `ParallelBranch` that runs
    ``f(ctx, *args, **kwargs)``, as in the SDK. ``context.parallel`` also accepts the factory
    itself, uncalled, as the branch of a function that takes only the context."""

    def __init__(self, func: Callable[..., T], name: str | None) -> None:
        if not callable(func):
            raise ValidationError(f"@durable_parallel_branch decorates a function, got: {func!r}")
        self.func = func
        self.name = name
        self.__name__ = getattr(func, "__name__", type(func).__name__)
        self.__qualname__ = getattr(func, "__qualname__", self.__name__)
        self.__doc__ = getattr(func, "__doc__", None)
        self.__module__ = getattr(func, "__module__", __name__)
        self.__wrapped__ = func

    def __call__(self, *args: Any, **kwargs: Any) -> ParallelBranch[T]:
        return ParallelBranch(_BoundBranch(self.func, args, kwargs) if args or kwargs else self.func,
                              self.name)

    def branch(self) -> ParallelBranch[T]:
        """The branch of a function that takes only the context (what ``factory()`` returns)."""
        return self()

    def __repr__(self) -> str:
        return f"<parallel branch factory {self.__qualname__} name={self.name!r}>"


def durable_parallel_branch(name: str | None = None) -> Callable[[Callable[..., T]], ParallelBranchFactory[T]]:
    """Decorator factory, as in the SDK: ``@durable_parallel_branch(name="fetch")`` on
    ``def fetch(ctx, user_id)`` makes ``fetch(user_id)`` a `ParallelBranch` named "fetch" that runs
    ``fetch(ctx, user_id)`` in the branch's context. ``context.parallel([fetch("u1"), ...])``."""

    def wrap(func: Callable[..., T]) -> ParallelBranchFactory[T]:
        return ParallelBranchFactory(func, name)

    return wrap


_SUB_TYPE = re.compile(r"[A-Za-z0-9_-]{1,32}")


def _check_sub_type(sub_type: str | None) -> None:
    if sub_type is None or sub_type == "":
        return
    if not isinstance(sub_type, str) or _SUB_TYPE.fullmatch(sub_type) is None:
        raise ValidationError(
            "sub_type must be 1 to 32 characters of letters, digits, '_' or '-' "
            f"(or None for the default), got: {sub_type!r}"
        )


@dataclass(frozen=True)
class StepConfig:
    """How a step retries, how often its body may run per attempt, and how its result is serialized.

    ``retry_strategy`` None selects ``RetryPresets.default()``. A ``RetryStrategyConfig`` or
    ``LinearRetryStrategyConfig`` given in its place is accepted, as the SDK accepts it, and used as
    the strategy it describes (``create_retry_strategy(config)``): ``max_attempts=1`` means no retry.
    """

    retry_strategy: (Callable[[Exception, int], RetryDecision] | RetryStrategyConfig
                     | LinearRetryStrategyConfig | None) = None
    step_semantics: StepSemantics = StepSemantics.AT_LEAST_ONCE_PER_RETRY
    serdes: SerDes[Any] | None = None
    sub_type: str | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        from durablemap.retries import LinearRetryStrategyConfig, RetryStrategyConfig

        if not isinstance(self.retry_strategy, RetryStrategyConfig | LinearRetryStrategyConfig):
            _check_callable("retry_strategy", self.retry_strategy)
        if not isinstance(self.step_semantics, StepSemantics):
            raise ValidationError(
                "step_semantics must be StepSemantics.AT_LEAST_ONCE_PER_RETRY or "
                f"StepSemantics.AT_MOST_ONCE_PER_RETRY, got: {self.step_semantics!r}"
            )
        _check_serdes("serdes", self.serdes)
        _check_sub_type(self.sub_type)


@dataclass(frozen=True)
class ChildConfig:
    """How a child context serializes its result, its recorded sub type, and its large-result summary."""

    serdes: SerDes[Any] | None = None
    sub_type: str | None = None
    summary_generator: Callable[[Any], str] | None = None

    def __post_init__(self) -> None:
        _check_serdes("serdes", self.serdes)
        _check_sub_type(self.sub_type)
        _check_callable("summary_generator", self.summary_generator)
