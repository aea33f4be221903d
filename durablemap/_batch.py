"""The outcome of a map or parallel: `BatchItem`s in index order and the `CompletionReason`.

A map of a million items builds a million `BatchItem`s, so `BatchItem` is a tuple subclass: building
one costs about what building a 4-tuple costs, and it is immutable and hashable for free.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from operator import countOf, itemgetter
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from durablemap._errors import BatchCompletionError, ChildContextError, CompletionReason, ErrorObject, _SdkStrEnum
from durablemap._gc import paused

if TYPE_CHECKING:
    from durablemap.config import CompletionConfig

__all__ = ["BatchItem", "BatchItemStatus", "BatchResult", "CompletionReason"]

R = TypeVar("R")

_logger = logging.getLogger("durablemap")


class BatchItemStatus(_SdkStrEnum):
    """Status of one item of a batch: ``BatchItemStatus.SUCCEEDED == "SUCCEEDED"``, and
    ``str(BatchItemStatus.SUCCEEDED) == "BatchItemStatus.SUCCEEDED"`` as in the SDK."""

    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    STARTED = "STARTED"


_SUCCEEDED = BatchItemStatus.SUCCEEDED
_FAILED = BatchItemStatus.FAILED
_STARTED = BatchItemStatus.STARTED
# Enum lookup by value goes through EnumMeta.__call__; a dict is several times faster on big results.
_STATUS_BY_VALUE: dict[str, BatchItemStatus] = {s.value: s for s in BatchItemStatus}
_tuple_new = tuple.__new__


class BatchItem(tuple[Any, ...], Generic[R]):
    """One started item: ``index``, ``status``, ``result`` (SUCCEEDED only) and ``error`` (FAILED only).

    Immutable and compared by value. It unpacks like a named tuple,
    ``index, status, result, error = item``, but never equals a plain tuple.
    """

    __slots__ = ()

    def __new__(
        cls,
        index: int,
        status: BatchItemStatus,
        result: R | None = None,
        error: ErrorObject | None = None,
    ) -> BatchItem[R]:
        # No validation here: this runs once per item on the hot path.
        return _tuple_new(cls, (index, status, result, error))

    if TYPE_CHECKING:
        # Shadows tuple.index(value): an item's position matters more than searching four fields.
        @property
        def index(self) -> int:  # type: ignore[override]
            """The item's position in the inputs."""

        @property
        def status(self) -> BatchItemStatus:
            """SUCCEEDED, FAILED or STARTED (in flight when the batch completed)."""

        @property
        def result(self) -> R | None:
            """The item's deserialized result; None unless SUCCEEDED."""

        @property
        def error(self) -> ErrorObject | None:
            """What the item raised; None unless FAILED."""

    else:
        index = property(itemgetter(0), doc="The item's position in the inputs.")
        status = property(itemgetter(1), doc="SUCCEEDED, FAILED or STARTED (in flight at completion).")
        result = property(itemgetter(2), doc="The item's deserialized result; None unless SUCCEEDED.")
        error = property(itemgetter(3), doc="What the item raised; None unless FAILED.")

    # Not NotImplemented for other types: Python would then fall back to tuple's own comparison,
    # and a BatchItem would equal a plain 4-tuple.
    def __eq__(self, other: object) -> bool:
        return isinstance(other, BatchItem) and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not (isinstance(other, BatchItem) and tuple.__eq__(self, other))

    __hash__ = tuple.__hash__

    def __repr__(self) -> str:
        return f"BatchItem(index={self[0]!r}, status={self[1]!r}, result={self[2]!r}, error={self[3]!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # tuple's default pickling would call __new__ with one tuple argument.
        return (BatchItem, tuple(self))

    def to_dict(self) -> dict[str, Any]:
        """``{"index", "status", "result", "error"}`` with the status as its str value."""
        error = self[3]
        return {
            "index": self[0],
            "status": self[1].value,
            "result": self[2],
            "error": error.to_dict() if error is not None else None,
        }

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[int, BatchItemStatus, R | None, ErrorObject | None]]) -> list[BatchItem[R]]:
        """Build many items from ``(index, status, result, error)`` tuples, in one C-level loop.

        Meant for results of a million items: it is faster than calling `BatchItem` per item, and
        the cyclic GC is paused meanwhile (see `durablemap._gc.paused`).
        """
        with paused():
            return list(map(partial(_tuple_new, cls), rows))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchItem[Any]:
        """Inverse of `to_dict`."""
        error = data.get("error")
        return _tuple_new(
            cls,
            (
                data["index"],
                _STATUS_BY_VALUE[data["status"]],
                data.get("result"),
                ErrorObject.from_dict(error) if error else None,
            ),
        )


_get_status = itemgetter(1)
_COUNT_OF = {_SUCCEEDED: 0, _FAILED: 1, _STARTED: 2}


@dataclass(frozen=True)
class BatchResult(Generic[R]):
    """The items a batch started, in index order, and why the batch completed.

    Items never started (the batch completed early) are absent, so `total_count` may be less than the
    number of inputs. Item failures are not raised by ``map``; call `throw_if_error` for that.

    The result of a large map (a million inputs or more) does not hold its items: ``all`` is then a
    read-only sequence that reads them from the store a page at a time, and ``counts`` gives the
    counts without reading any. Every method works the same; those that return lists build them.
    Pickled, such a result becomes an ordinary one holding every item.
    """

    all: Sequence[BatchItem[R]]
    completion_reason: CompletionReason
    #: ``(succeeded, failed, started)`` when known without reading the items (a result read from the store).
    counts: tuple[int, int, int] | None = field(default=None, compare=False, repr=False)

    @property
    def results(self) -> Sequence[BatchItem[R]]:
        """The same sequence as ``all``: every started item in index order."""
        return self.all

    def __reduce__(self) -> tuple[Any, ...]:
        items = self.all if isinstance(self.all, list) else list(self.all)
        return (type(self), (items, self.completion_reason))

    def _count(self, status: BatchItemStatus) -> int:
        if self.counts is not None:
            return self.counts[_COUNT_OF[status]]
        # countOf compares by identity first, so this stays in C for a million items.
        return countOf(map(_get_status, self.all), status)

    def _none(self, status: BatchItemStatus) -> bool:
        """Whether there is surely no item of ``status`` (known from the counts, without a scan)."""
        return self.counts is not None and self.counts[_COUNT_OF[status]] == 0

    def succeeded(self) -> list[BatchItem[R]]:
        """The SUCCEEDED items, in index order."""
        return [item for item in self.all if item[1] == _SUCCEEDED]

    def failed(self) -> list[BatchItem[R]]:
        """The FAILED items, in index order."""
        return [] if self._none(_FAILED) else [item for item in self.all if item[1] == _FAILED]

    def started(self) -> list[BatchItem[R]]:
        """The items still in flight when the batch completed, in index order."""
        return [] if self._none(_STARTED) else [item for item in self.all if item[1] == _STARTED]

    def get_results(self) -> list[R | None]:
        """The results of the SUCCEEDED items, in index order (a None result is kept)."""
        return [item[2] for item in self.all if item[1] == _SUCCEEDED]

    def get_errors(self) -> list[ErrorObject | None]:
        """The errors of the FAILED items, in index order."""
        return [] if self._none(_FAILED) else [item[3] for item in self.all if item[1] == _FAILED]

    def throw_if_error(self) -> None:
        """Raise for the first FAILED item, else for a batch completed as FAILED; else do nothing.

        A failed item raises `ChildContextError` with its message and ``error_type`` (or `SerDesError`
        when it failed to serialize); a batch that ``should_complete`` failed raises
        `BatchCompletionError`.
        """
        for item in () if self._none(_FAILED) else self.all:
            if item[1] == _FAILED:
                error: ErrorObject | None = item[3]
                if error is None:
                    raise ChildContextError(f"Batch item {item[0]} failed without an ErrorObject.")
                error.raise_as_operation_error(ChildContextError)
        if self.completion_reason == CompletionReason.CUSTOM_COMPLETION_FAILED:
            raise BatchCompletionError(self.completion_reason)

    @property
    def status(self) -> BatchItemStatus:
        """FAILED when should_complete said so or an item failed (unless should_complete succeeded)."""
        if self.completion_reason == CompletionReason.CUSTOM_COMPLETION_FAILED:
            return _FAILED
        if self.completion_reason == CompletionReason.CUSTOM_COMPLETION_SUCCEEDED:
            return _SUCCEEDED
        return _FAILED if self.has_failure else _SUCCEEDED

    @property
    def has_failure(self) -> bool:
        """Whether any item FAILED."""
        if self.counts is not None:
            return self.counts[1] > 0
        return _FAILED in map(_get_status, self.all)

    @property
    def success_count(self) -> int:
        """Number of SUCCEEDED items."""
        return self._count(_SUCCEEDED)

    @property
    def failure_count(self) -> int:
        """Number of FAILED items."""
        return self._count(_FAILED)

    @property
    def started_count(self) -> int:
        """Number of items in flight when the batch completed."""
        return self._count(_STARTED)

    @property
    def total_count(self) -> int:
        """Number of started items (``len(all)``), not the number of inputs."""
        return len(self.all)

    def _rows(self) -> Iterator[dict[str, Any]]:
        for item in self.all:
            error: ErrorObject | None = item[3]
            yield {"index": item[0], "name": None, "status": item[1].value, "result": item[2],
                   "error": None if error is None else {"ErrorType": error.type, "ErrorMessage": error.message}}

    def to_arrow(self) -> Any:
        """A ``pyarrow.Table``, one row per item: ``index, name, status, result, error_type,
        error_message`` (``result``'s type is inferred from the results; needs ``durablemap[arrow]``)."""
        from durablemap._tabular import rows_to_arrow
        return rows_to_arrow(self._rows())

    def to_pandas(self) -> Any:
        """A ``pandas.DataFrame`` with the columns of `to_arrow`, one row per item in index order;
        pandas picks the ``result`` column's dtype (objects for dicts and lists). Needs
        ``durablemap[pandas]``, not pyarrow."""
        from durablemap._tabular import COLUMNS, require
        pd = require("pandas", "BatchResult.to_pandas()")
        rows = [[row["index"], row["name"], row["status"], row["result"],
                 (row["error"] or {}).get("ErrorType"), (row["error"] or {}).get("ErrorMessage")]
                for row in self._rows()]
        return pd.DataFrame.from_records(rows, columns=list(COLUMNS))

    def to_dict(self) -> dict[str, Any]:
        """``{"all": [item dicts...], "completionReason": "..."}``; `from_dict` inverts it exactly."""
        return {
            "all": [item.to_dict() for item in self.all],
            "completionReason": self.completion_reason.value,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], completion_config: CompletionConfig | None = None) -> BatchResult[Any]:
        """Inverse of `to_dict`. Without ``completionReason``, the reason is inferred (`from_items`)."""
        with paused():
            items: list[BatchItem[Any]] = [BatchItem.from_dict(d) for d in data["all"]]
        reason = data.get("completionReason")
        if reason is None:
            _logger.warning("BatchResult has no completionReason; inferring it from its items")
            return cls.from_items(items, completion_config)
        return cls(items, CompletionReason(reason))

    @classmethod
    def from_items(
        cls, items: Iterable[BatchItem[R]], completion_config: CompletionConfig | None = None
    ) -> BatchResult[R]:
        """Build a result from items, inferring the reason as if the items were all the inputs."""
        # Imported here: _completion and config import this module.
        from durablemap._completion import CompletionPolicy
        from durablemap.config import CompletionConfig

        item_list = sorted(items, key=itemgetter(0))
        config = completion_config if completion_config is not None else CompletionConfig()
        policy = CompletionPolicy(config, len(item_list))
        statuses = [item[1] for item in item_list]
        reason = policy.reason(countOf(statuses, _SUCCEEDED), countOf(statuses, _FAILED), None)
        return cls(item_list, reason)
