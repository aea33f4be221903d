"""The outcome of a map or parallel: `BatchItem`s in index order and the `CompletionReason`.

A map of a million items builds a million `BatchItem`s, so `BatchItem` is a tuple subclass: building
one costs about what building a 4-tuple costs, and it is immutable and hashable for free.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import FrozenInstanceError
from functools import partial
from itertools import compress, repeat
from operator import countOf, itemgetter
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

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
_set = object.__setattr__


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


class ItemColumns:
    """A small map's finished items as its board kept them, by index: ``values`` (the result of each
    SUCCEEDED item, else None), ``codes`` (a byte per index: 0 not started, 1 STARTED, 2 SUCCEEDED,
    3 FAILED) and ``errors`` (the ErrorObject of each FAILED index). A `BatchResult` built on them
    makes its `BatchItem` list only when ``all`` is first read: ``get_results()`` and the counts
    need none."""

    __slots__ = ("codes", "errors", "values")

    def __init__(self, values: list[Any], codes: bytes, errors: dict[int, ErrorObject]) -> None:
        self.values, self.codes, self.errors = values, codes, errors

    def items(self) -> list[BatchItem[Any]]:
        """The started items in index order."""
        codes, values, n = self.codes, self.values, len(self.codes)
        if codes.count(SUCCEEDED_CODE) == n:
            return BatchItem.from_rows(zip(range(n), repeat(_SUCCEEDED), values, repeat(None)))
        errors = self.errors
        return BatchItem.from_rows((index, cast("BatchItemStatus", STATUS_OF_CODE[code]), values[index],
                                    errors.get(index)) for index, code in enumerate(codes) if code)

    def results(self) -> list[Any]:
        """The results of the SUCCEEDED items in index order: a new list."""
        codes = self.codes
        if codes.count(SUCCEEDED_CODE) == len(codes):
            return self.values[:]
        return list(compress(self.values, map(SUCCEEDED_CODE.__eq__, codes)))


#: The codes of `ItemColumns.codes`, a byte per index: the item board's (see _board).
NEW_CODE, RUNNING_CODE, SUCCEEDED_CODE, FAILED_CODE = 0, 1, 2, 3
#: The status of each code: None for NEW_CODE (an item not started), STARTED for RUNNING_CODE.
STATUS_OF_CODE: tuple[BatchItemStatus | None, ...] = (None, _STARTED, _SUCCEEDED, _FAILED)


class BatchResult(Generic[R]):
    """The items a batch started, in index order, and why the batch completed.

    Items never started (the batch completed early) are absent, so `total_count` may be less than the
    number of inputs. Item failures are not raised by ``map``; call `throw_if_error` for that.
    Immutable, and equal to another when their ``all`` and ``completion_reason`` are.

    A map's result builds its list of items the first time ``all`` (or ``results``, iteration...) is
    read: ``get_results()`` and the counts read the map's own columns of results and statuses.

    The result of a large map (a million inputs or more) does not hold its items: ``all`` is then a
    read-only sequence that reads them from the store a page at a time, and ``counts`` gives the
    counts without reading any. Every method works the same; those that return lists build them.
    Pickled, such a result becomes an ordinary one holding every item.
    """

    __slots__ = ("_all", "_columns", "completion_reason", "counts")
    __match_args__ = ("all", "completion_reason")

    _all: Sequence[BatchItem[R]] | None
    _columns: ItemColumns | None
    #: Why the batch completed.
    completion_reason: CompletionReason
    #: ``(succeeded, failed, started)`` when known without reading the items.
    counts: tuple[int, int, int] | None

    def __init__(self, all: Sequence[BatchItem[R]], completion_reason: CompletionReason,
                 counts: tuple[int, int, int] | None = None) -> None:
        _set(self, "_all", all)
        _set(self, "_columns", None)
        _set(self, "completion_reason", completion_reason)
        _set(self, "counts", counts)

    @classmethod
    def of_columns(cls, columns: ItemColumns, completion_reason: CompletionReason,
                   counts: tuple[int, int, int]) -> BatchResult[Any]:
        """The result of a map whose items are ``columns`` and whose counts are ``counts``."""
        result: BatchResult[Any] = cls.__new__(cls)
        _set(result, "_all", None)
        _set(result, "_columns", columns)
        _set(result, "completion_reason", completion_reason)
        _set(result, "counts", counts)
        return result

    @property
    def all(self) -> Sequence[BatchItem[R]]:
        """Every started item in index order (a list, unless the map was large: see the class)."""
        items = self._all
        if items is None:
            assert self._columns is not None
            with paused(promote=True):
                items = self._columns.items()
            _set(self, "_all", items)
        return items

    @property
    def results(self) -> Sequence[BatchItem[R]]:
        """The same sequence as ``all``: every started item in index order."""
        return self.all

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}: a BatchResult is immutable")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}: a BatchResult is immutable")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, BatchResult)
        return (self.all, self.completion_reason) == (other.all, other.completion_reason)

    def __hash__(self) -> int:
        return hash((self.all, self.completion_reason))

    def __repr__(self) -> str:
        return f"{type(self).__qualname__}(all={self.all!r}, completion_reason={self.completion_reason!r})"

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
        if self._columns is not None:
            return self._columns.results()
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
        if self.counts is not None and self._all is None:
            return sum(self.counts)
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
