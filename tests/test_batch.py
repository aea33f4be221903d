"""BatchItem and BatchResult: value semantics, status rules, dict layout, throw_if_error."""

from __future__ import annotations

import copy
import logging
import pickle

import pytest

from durablemap._batch import BatchItem, BatchItemStatus, BatchResult, CompletionReason
from durablemap._errors import (
    BatchCompletionError,
    ChildContextError,
    DurableOperationError,
    ErrorObject,
    SerDesError,
    StepError,
)
from durablemap.config import CompletionConfig

S, F, ST = BatchItemStatus.SUCCEEDED, BatchItemStatus.FAILED, BatchItemStatus.STARTED


def mixed() -> BatchResult[object]:
    """The layout of reference section 5.1."""
    return BatchResult(
        [
            BatchItem(0, S, {"v": 2, "t": (1, 2)}),
            BatchItem(2, F, None, ErrorObject("bad3", "ValueError")),
            BatchItem(3, ST),
        ],
        CompletionReason.ALL_COMPLETED,
    )


def test_status_is_a_str_enum() -> None:
    assert S == "SUCCEEDED"
    assert F == "FAILED"
    assert ST == "STARTED"
    assert [s.value for s in BatchItemStatus] == ["SUCCEEDED", "FAILED", "STARTED"]
    assert BatchItemStatus("FAILED") is F
    assert isinstance(S, str)


def test_completion_reason_values() -> None:
    assert [r.value for r in CompletionReason] == [
        "ALL_COMPLETED",
        "MIN_SUCCESSFUL_REACHED",
        "FAILURE_TOLERANCE_EXCEEDED",
        "CUSTOM_COMPLETION_SUCCEEDED",
        "CUSTOM_COMPLETION_FAILED",
    ]
    assert CompletionReason.ALL_COMPLETED == "ALL_COMPLETED"


def test_batch_item_fields_and_defaults() -> None:
    item: BatchItem[int] = BatchItem(4, S, 16)
    assert (item.index, item.status, item.result, item.error) == (4, S, 16, None)
    started: BatchItem[int] = BatchItem(5, ST)
    assert started.result is None
    assert started.error is None
    index, status, result, error = item
    assert (index, status, result, error) == (4, S, 16, None)


def test_batch_item_value_semantics() -> None:
    a: BatchItem[int] = BatchItem(1, S, [1])  # type: ignore[arg-type]
    assert a == BatchItem(1, S, [1])
    assert a != BatchItem(1, F, [1])
    assert a != BatchItem(2, S, [1])
    assert a != (1, S, [1], None)
    assert not a == (1, S, [1], None)  # noqa: SIM201 - the == operator itself is under test
    assert (1, S, [1], None) != a  # noqa: SIM300 - the reflected comparison is under test
    assert hash(BatchItem(1, S, 2)) == hash(BatchItem(1, S, 2))
    assert repr(BatchItem(1, S, 2)) == (
        "BatchItem(index=1, status=<BatchItemStatus.SUCCEEDED: 'SUCCEEDED'>, result=2, error=None)"
    )


def test_batch_item_is_immutable() -> None:
    item: BatchItem[int] = BatchItem(1, S, 2)
    with pytest.raises(AttributeError):
        item.result = 3  # type: ignore[misc]
    with pytest.raises(AttributeError):
        item.extra = 3  # type: ignore[attr-defined]


def test_batch_item_pickles_and_copies() -> None:
    item: BatchItem[int] = BatchItem(7, F, None, ErrorObject("m", "T", None, ["tb"]))
    assert pickle.loads(pickle.dumps(item)) == item
    assert type(pickle.loads(pickle.dumps(item))) is BatchItem
    assert copy.deepcopy(item) == item


def test_batch_item_to_dict() -> None:
    assert BatchItem(0, S, 5).to_dict() == {"index": 0, "status": "SUCCEEDED", "result": 5, "error": None}
    failed: BatchItem[int] = BatchItem(1, F, None, ErrorObject("m", "ValueError"))
    assert failed.to_dict() == {
        "index": 1,
        "status": "FAILED",
        "result": None,
        "error": {"ErrorMessage": "m", "ErrorType": "ValueError"},
    }
    assert type(failed.to_dict()["status"]) is str


def test_result_to_dict_layout() -> None:
    assert mixed().to_dict() == {
        "all": [
            {"index": 0, "status": "SUCCEEDED", "result": {"v": 2, "t": (1, 2)}, "error": None},
            {
                "index": 2,
                "status": "FAILED",
                "result": None,
                "error": {"ErrorMessage": "bad3", "ErrorType": "ValueError"},
            },
            {"index": 3, "status": "STARTED", "result": None, "error": None},
        ],
        "completionReason": "ALL_COMPLETED",
    }


@pytest.mark.parametrize("reason", list(CompletionReason))
def test_round_trip(reason: CompletionReason) -> None:
    original = BatchResult(
        [
            BatchItem(0, S, (1, "x")),
            BatchItem(1, F, None, ErrorObject("m", "durablemap.StepError", "d", ["a", "b"])),
            BatchItem(2, ST),
            BatchItem(3, S, None),
        ],
        reason,
    )
    restored = BatchResult.from_dict(original.to_dict())
    assert restored == original
    assert restored.completion_reason is reason
    assert all(type(item) is BatchItem for item in restored.all)
    assert [item.status for item in restored.all] == [S, F, ST, S]
    assert restored.all[1].status is F


def test_equality_is_by_value() -> None:
    assert mixed() == mixed()
    other = BatchResult(mixed().all, CompletionReason.MIN_SUCCESSFUL_REACHED)
    assert other != mixed()


def test_from_dict_infers_missing_reason(caplog: pytest.LogCaptureFixture) -> None:
    data = mixed().to_dict()
    del data["completionReason"]
    with caplog.at_level(logging.WARNING, logger="durablemap"):
        inferred = BatchResult.from_dict(data)
    assert "completionReason" in caplog.text
    # One item was still in flight and no criterion is set: the default runs everything.
    assert inferred.completion_reason is CompletionReason.ALL_COMPLETED
    strict = BatchResult.from_dict(data, CompletionConfig.all_successful())
    assert strict.completion_reason is CompletionReason.FAILURE_TOLERANCE_EXCEEDED
    early = BatchResult.from_dict(
        {
            "all": [
                {"index": 0, "status": "SUCCEEDED", "result": 1, "error": None},
                {"index": 1, "status": "STARTED", "result": None, "error": None},
            ]
        },
        CompletionConfig.first_successful(),
    )
    assert early.completion_reason is CompletionReason.MIN_SUCCESSFUL_REACHED


def test_from_items_sorts_by_index() -> None:
    result = BatchResult.from_items([BatchItem(2, S, 2), BatchItem(0, S, 0)])
    assert [item.index for item in result.all] == [0, 2]
    assert result.completion_reason is CompletionReason.ALL_COMPLETED


def test_accessors() -> None:
    r = BatchResult(
        [
            BatchItem(0, S, 10),
            BatchItem(1, F, None, ErrorObject("e1", "T")),
            BatchItem(2, S, None),
            BatchItem(3, ST),
            BatchItem(4, F, None, ErrorObject("e4", "T")),
        ],
        CompletionReason.ALL_COMPLETED,
    )
    assert r.results is r.all
    assert [i.index for i in r.succeeded()] == [0, 2]
    assert [i.index for i in r.failed()] == [1, 4]
    assert [i.index for i in r.started()] == [3]
    assert r.get_results() == [10, None]
    assert r.get_errors() == [ErrorObject("e1", "T"), ErrorObject("e4", "T")]
    assert (r.success_count, r.failure_count, r.started_count, r.total_count) == (2, 2, 1, 5)
    assert r.has_failure


def test_empty_result() -> None:
    r: BatchResult[int] = BatchResult([], CompletionReason.ALL_COMPLETED)
    assert (r.total_count, r.success_count, r.failure_count, r.started_count) == (0, 0, 0, 0)
    assert r.status is S
    assert not r.has_failure
    assert r.get_results() == []
    r.throw_if_error()
    assert BatchResult.from_dict(r.to_dict()) == r


@pytest.mark.parametrize(
    ("items", "reason", "status"),
    [
        ([BatchItem(0, S, 1)], CompletionReason.ALL_COMPLETED, S),
        ([BatchItem(0, S, 1), BatchItem(1, F)], CompletionReason.ALL_COMPLETED, F),
        ([BatchItem(0, F), BatchItem(1, S, 1)], CompletionReason.MIN_SUCCESSFUL_REACHED, F),
        ([BatchItem(0, S, 1), BatchItem(1, F)], CompletionReason.CUSTOM_COMPLETION_SUCCEEDED, S),
        ([BatchItem(0, S, 1)], CompletionReason.CUSTOM_COMPLETION_FAILED, F),
        ([], CompletionReason.CUSTOM_COMPLETION_FAILED, F),
        ([BatchItem(0, ST), BatchItem(1, ST)], CompletionReason.MIN_SUCCESSFUL_REACHED, S),
        ([BatchItem(0, F)], CompletionReason.FAILURE_TOLERANCE_EXCEEDED, F),
    ],
)
def test_status_rules(items: list[BatchItem[int]], reason: CompletionReason, status: BatchItemStatus) -> None:
    assert BatchResult(items, reason).status is status


def test_throw_if_error_raises_child_context_error_for_first_failure() -> None:
    r = BatchResult(
        [
            BatchItem(0, S, 1),
            BatchItem(2, F, None, ErrorObject("bad3", "ValueError")),
            BatchItem(4, F, None, ErrorObject("bad5", "KeyError")),
        ],
        CompletionReason.ALL_COMPLETED,
    )
    with pytest.raises(ChildContextError) as info:
        r.throw_if_error()
    assert type(info.value) is ChildContextError
    assert str(info.value) == "bad3"
    assert info.value.error_type == "ValueError"
    assert type(info.value.__cause__) is DurableOperationError
    assert str(info.value.__cause__) == "bad3"


def test_throw_if_error_inner_step_failure_keeps_step_error_as_cause() -> None:
    r: BatchResult[int] = BatchResult(
        [BatchItem(0, F, None, ErrorObject("'nokey'", "durablemap.StepError"))], CompletionReason.ALL_COMPLETED
    )
    with pytest.raises(ChildContextError) as info:
        r.throw_if_error()
    assert info.value.error_type == "durablemap.StepError"
    assert type(info.value.__cause__) is StepError


def test_throw_if_error_without_error_object() -> None:
    r: BatchResult[int] = BatchResult([BatchItem(0, S, 1), BatchItem(3, F)], CompletionReason.ALL_COMPLETED)
    with pytest.raises(ChildContextError, match=r"^Batch item 3 failed without an ErrorObject\.$"):
        r.throw_if_error()


def test_throw_if_error_serdes_failure() -> None:
    r: BatchResult[int] = BatchResult(
        [BatchItem(0, F, None, ErrorObject("set", "durablemap.SerDesError"))], CompletionReason.ALL_COMPLETED
    )
    with pytest.raises(SerDesError, match="set"):
        r.throw_if_error()


def test_throw_if_error_custom_completion_failed() -> None:
    r: BatchResult[int] = BatchResult([BatchItem(0, S, 1)], CompletionReason.CUSTOM_COMPLETION_FAILED)
    with pytest.raises(BatchCompletionError) as info:
        r.throw_if_error()
    assert info.value.completion_reason is CompletionReason.CUSTOM_COMPLETION_FAILED
    assert str(info.value) == "Batch completed as failed by should_complete (CUSTOM_COMPLETION_FAILED)"


@pytest.mark.parametrize("reason", [r for r in CompletionReason if r is not CompletionReason.CUSTOM_COMPLETION_FAILED])
def test_throw_if_error_returns_none_without_failures(reason: CompletionReason) -> None:
    BatchResult([BatchItem(0, S, 1), BatchItem(1, ST)], reason).throw_if_error()


def test_result_is_frozen_and_pickles() -> None:
    r = mixed()
    with pytest.raises(AttributeError):
        r.completion_reason = CompletionReason.MIN_SUCCESSFUL_REACHED  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(r)) == r


def test_generic_subscription() -> None:
    r = BatchResult[int]([BatchItem[int](0, S, 1)], CompletionReason.ALL_COMPLETED)
    assert r.get_results() == [1]


def test_large_result_counts() -> None:
    items = [BatchItem(i, S if i % 3 else F, i) for i in range(30_000)]
    r = BatchResult(items, CompletionReason.ALL_COMPLETED)
    assert (r.success_count, r.failure_count, r.started_count) == (20_000, 10_000, 0)


def test_from_rows_builds_items_and_restores_the_gc() -> None:
    import gc

    items = BatchItem.from_rows([(0, S, 1, None), (1, F, None, ErrorObject("m", "T"))])
    assert items == [BatchItem(0, S, 1), BatchItem(1, F, None, ErrorObject("m", "T"))]
    assert all(type(item) is BatchItem for item in items)
    assert gc.isenabled()
    gc.disable()
    try:
        BatchItem.from_rows([(0, S, 1, None)])
        assert not gc.isenabled()  # a collector the caller paused stays paused
    finally:
        gc.enable()
