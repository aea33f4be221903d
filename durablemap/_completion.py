"""When a batch stops starting items, when it is complete, and why: a pure function of counts.

The coordinator owns the counts and the ``should_complete`` decision; this module only decides. The
rules are the AWS SDK's, except for the default: with no criterion set, durablemap runs every item
whatever fails (CONTRACT section 4), where the SDK fails fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from durablemap._batch import BatchItemStatus, CompletionReason
from durablemap._errors import ValidationError

if TYPE_CHECKING:
    from durablemap.config import CompletionConfig

__all__ = ["CompletionDecision", "CompletionItemStatus", "CompletionOutcome", "CompletionPolicy",
           "CompletionStatus", "status_snapshot"]


class CompletionOutcome(StrEnum):
    """How ``complete_batch`` ends a batch."""

    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


@dataclass(frozen=True)
class CompletionItemStatus:
    """One input as ``should_complete`` sees it: ``status`` None when not started, STARTED in flight."""

    index: int
    name: str | None = None
    status: BatchItemStatus | None = None


@dataclass(frozen=True)
class CompletionStatus:
    """The progress of a batch, passed to ``should_complete`` after every change."""

    success_count: int
    failure_count: int
    completed_count: int
    total_count: int
    items: tuple[CompletionItemStatus, ...] = ()


@dataclass(frozen=True)
class CompletionDecision:
    """The answer of ``should_complete``: continue, or complete with an outcome."""

    complete: bool
    outcome: CompletionOutcome | None = None

    def __post_init__(self) -> None:
        if self.complete and self.outcome is None:
            raise ValidationError("CompletionDecision(complete=True) needs an outcome; use complete_batch(outcome)")
        if not self.complete and self.outcome is not None:
            raise ValidationError("CompletionDecision(complete=False) cannot have an outcome; use continue_batch()")



def status_snapshot(succeeded: int, failed: int, total: int,
                    statuses: list[tuple[int, str | None, BatchItemStatus | None]]) -> CompletionStatus:
    """The ``CompletionStatus`` handed to ``should_complete``: the counts and each input's
    ``(index, name, status)``."""
    return CompletionStatus(succeeded, failed, succeeded + failed, total,
                            tuple(CompletionItemStatus(index, name, status) for index, name, status in statuses))



class CompletionPolicy:
    """The completion rules of one batch of ``total`` inputs under ``config``.

    ``succeeded`` and ``failed`` count finished items (recorded ones from an earlier run included);
    ``decision`` is the latest answer of ``should_complete``, or None when there is no predicate.
    """

    __slots__ = ("_count", "_min_successful", "_percentage", "config", "has_criteria", "total")

    def __init__(self, config: CompletionConfig, total: int) -> None:
        self.config = config
        self.total = total
        self._min_successful = config.min_successful
        self._count = config.tolerated_failure_count
        self._percentage = config.tolerated_failure_percentage
        self.has_criteria = self._min_successful is not None or self._count is not None or self._percentage is not None

    @property
    def has_predicate(self) -> bool:
        """Whether ``should_complete`` decides completion (then failures never stop the batch)."""
        return self.config.should_complete is not None

    def is_tolerance_exceeded(self, failed: int) -> bool:
        """Whether ``failed`` failures are more than the config tolerates (both limits are strict)."""
        if self.config.should_complete is not None:
            return False  # the predicate owns early exit
        if not self.has_criteria:
            return False  # durablemap's default: every item runs
        if self._count is not None and failed > self._count:
            return True
        # Against the number of inputs, not of started items, as the SDK does.
        pct = self._percentage
        return pct is not None and self.total > 0 and failed * 100 / self.total > pct

    def should_continue(self, failed: int) -> bool:
        """Whether new items may still start."""
        return not self.is_tolerance_exceeded(failed)

    def is_complete(self, succeeded: int, failed: int, decision: CompletionDecision | None = None) -> bool:
        """Whether the batch is done: predicate, all finished, enough successes, or too many failures."""
        if decision is not None and decision.complete:
            return True
        if succeeded + failed >= self.total:
            return True
        if self._min_successful is not None and succeeded >= self._min_successful:
            return True
        return self.is_tolerance_exceeded(failed)

    def reason(self, succeeded: int, failed: int, decision: CompletionDecision | None = None) -> CompletionReason:
        """Why the batch completed; the first matching rule wins, tolerance first."""
        if self.is_tolerance_exceeded(failed):
            return CompletionReason.FAILURE_TOLERANCE_EXCEEDED
        if decision is not None and decision.complete:
            if decision.outcome == CompletionOutcome.FAILED:
                return CompletionReason.CUSTOM_COMPLETION_FAILED
            return CompletionReason.CUSTOM_COMPLETION_SUCCEEDED
        if succeeded + failed >= self.total:
            return CompletionReason.ALL_COMPLETED
        if self._min_successful is not None and succeeded >= self._min_successful:
            return CompletionReason.MIN_SUCCESSFUL_REACHED
        return CompletionReason.ALL_COMPLETED

    def decide(self, status: CompletionStatus) -> CompletionDecision | None:
        """Ask ``should_complete`` about ``status``; None when there is no predicate.

        Whatever the predicate raises propagates (the map fails with it); an answer that is not a
        `CompletionDecision` raises `ValidationError`.
        """
        predicate = self.config.should_complete
        if predicate is None:
            return None
        decision = predicate(status)
        if not isinstance(decision, CompletionDecision):
            raise ValidationError(
                "should_complete must return a CompletionDecision "
                f"(use complete_batch() or continue_batch()), got: {decision!r}"
            )
        return decision
