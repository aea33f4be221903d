"""The exception tree, error type names, and ErrorObject records and reconstruction."""

from __future__ import annotations

import pickle

import pytest

from durablemap._batch import CompletionReason
from durablemap._errors import (
    BatchCompletionError,
    CallbackError,
    ChildContextError,
    DurableExecutionsError,
    DurableOperationError,
    ErrorObject,
    ExecutionError,
    ExecutionLockedError,
    InvalidStateError,
    InvocationError,
    ItemTimeoutError,
    NonDeterministicExecutionError,
    OrphanedChildException,
    RetryableSerDesError,
    SerDesError,
    StepError,
    StepInterruptedError,
    StoreError,
    SuspendExecution,
    TimedSuspendExecution,
    UnrecoverableError,
    ValidationError,
    WaitForConditionError,
    WorkerCrashedError,
    error_type_name,
)

HIERARCHY = [
    (ValidationError, DurableExecutionsError),
    (InvalidStateError, DurableExecutionsError),
    (SerDesError, DurableExecutionsError),
    (DurableOperationError, DurableExecutionsError),
    (StepError, DurableOperationError),
    (ChildContextError, DurableOperationError),
    (WaitForConditionError, DurableOperationError),
    (CallbackError, DurableOperationError),
    (BatchCompletionError, DurableOperationError),
    (WorkerCrashedError, DurableOperationError),
    (ItemTimeoutError, DurableOperationError),
    (ExecutionLockedError, DurableExecutionsError),
    (StoreError, DurableExecutionsError),
    (UnrecoverableError, DurableExecutionsError),
    (ExecutionError, UnrecoverableError),
    (NonDeterministicExecutionError, ExecutionError),
    (InvocationError, UnrecoverableError),
    (StepInterruptedError, InvocationError),
    (RetryableSerDesError, InvocationError),
    (DurableExecutionsError, Exception),
]


@pytest.mark.parametrize(("cls", "parent"), HIERARCHY)
def test_hierarchy(cls: type[BaseException], parent: type[BaseException]) -> None:
    assert issubclass(cls, parent)


def test_serdes_error_is_not_an_operation_error() -> None:
    assert not issubclass(SerDesError, DurableOperationError)
    assert not issubclass(RetryableSerDesError, SerDesError)


def test_suspensions_escape_except_exception() -> None:
    assert not issubclass(SuspendExecution, Exception)
    assert not issubclass(OrphanedChildException, Exception)
    assert issubclass(TimedSuspendExecution, SuspendExecution)


@pytest.mark.parametrize(
    "error",
    [
        ValidationError("bad config"),
        StoreError("bad config"),
        StepError("bad config"),
        SerDesError("bad config", error_type="X"),
        NonDeterministicExecutionError("bad config", step_id="abc"),
        StepInterruptedError("bad config"),
        RetryableSerDesError("bad config"),
        WorkerCrashedError("bad config"),
    ],
)
def test_message_is_str_of_error(error: DurableExecutionsError) -> None:
    assert error.message == "bad config"
    assert str(error) == "bad config"


def test_missing_message_is_empty_str() -> None:
    assert StepError().message == ""
    assert str(DurableOperationError()) == ""


def test_error_type_defaults_to_durablemap_name() -> None:
    assert StepError("x").error_type == "durablemap.StepError"
    assert SerDesError("x").error_type == "durablemap.SerDesError"
    assert WorkerCrashedError("x").error_type == "durablemap.WorkerCrashedError"
    assert StepError("x", error_type="KeyError").error_type == "KeyError"


def test_operation_error_fields() -> None:
    e = ChildContextError("m", error_type="ValueError", data="d", stack_trace=["a", "b"])
    assert (e.message, e.error_type, e.data, e.stack_trace) == ("m", "ValueError", "d", ["a", "b"])


def test_step_id_and_retryability() -> None:
    assert NonDeterministicExecutionError("m", step_id="s1").step_id == "s1"
    assert StepInterruptedError("m").step_id is None
    assert StepInterruptedError("m").is_retryable()
    assert RetryableSerDesError("m").is_retryable()
    assert not ExecutionError("m").is_retryable()
    assert not NonDeterministicExecutionError("m").is_retryable()


class LocalError(Exception):
    class Inner(Exception):
        pass


def test_error_type_name() -> None:
    assert error_type_name(ValueError) == "ValueError"
    assert error_type_name(KeyError("k")) == "KeyError"
    assert error_type_name(LocalError) == f"{__name__}.LocalError"
    assert error_type_name(LocalError.Inner()) == f"{__name__}.LocalError.Inner"
    assert error_type_name(StepError) == "durablemap.StepError"
    assert error_type_name(StoreError("x")) == "durablemap.StoreError"


def test_error_type_name_flattens_any_durablemap_module() -> None:
    cls = type("Deep", (Exception,), {"__module__": "durablemap._store._env"})
    assert error_type_name(cls) == "durablemap.Deep"
    other = type("Deep", (Exception,), {"__module__": "durablemapper.x"})
    assert error_type_name(other) == "durablemapper.x.Deep"


def test_batch_completion_error_defaults() -> None:
    e = BatchCompletionError()
    assert e.completion_reason is CompletionReason.CUSTOM_COMPLETION_FAILED
    assert str(e) == "Batch completed as failed by should_complete (CUSTOM_COMPLETION_FAILED)"
    assert e.error_type == "durablemap.BatchCompletionError"
    assert BatchCompletionError("CUSTOM_COMPLETION_FAILED").completion_reason is (
        CompletionReason.CUSTOM_COMPLETION_FAILED
    )
    assert BatchCompletionError(CompletionReason.ALL_COMPLETED, "why").message == "why"


@pytest.mark.parametrize(
    "error",
    [
        StepError("m", error_type="KeyError", data="d", stack_trace=["t"]),
        BatchCompletionError(),
        NonDeterministicExecutionError("m", step_id="s"),
        ValidationError("m"),
        TimedSuspendExecution("m", 12.5),
        OrphanedChildException("m", "op"),
    ],
)
def test_errors_pickle(error: BaseException) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert vars(copy) == vars(error)


def _raise(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_error_object_from_exception() -> None:
    obj = ErrorObject.from_exception(_raise(ValueError("bad3")))
    assert obj.message == "bad3"
    assert obj.type == "ValueError"
    assert obj.data is None
    assert obj.stack_trace is not None
    assert obj.stack_trace[0].startswith("Traceback")
    assert any("raise exc" in line for line in obj.stack_trace)
    assert obj.stack_trace[-1] == "ValueError: bad3\n"


def test_error_object_from_operation_error_records_its_class() -> None:
    obj = ErrorObject.from_exception(StepError("'nokey'", error_type="KeyError"))
    assert obj.type == "durablemap.StepError"
    assert obj.message == "'nokey'"


def test_error_object_to_dict_omits_none() -> None:
    assert ErrorObject("m", "ValueError").to_dict() == {"ErrorMessage": "m", "ErrorType": "ValueError"}
    full = ErrorObject("m", "T", "d", ["l1", "l2"])
    assert full.to_dict() == {"ErrorMessage": "m", "ErrorType": "T", "ErrorData": "d", "StackTrace": ["l1", "l2"]}
    assert ErrorObject(None, None).to_dict() == {}


@pytest.mark.parametrize("obj", [ErrorObject("m", "T", "d", ["x"]), ErrorObject("m", "T"), ErrorObject(None, None)])
def test_error_object_dict_round_trip(obj: ErrorObject) -> None:
    assert ErrorObject.from_dict(obj.to_dict()) == obj


def test_from_message() -> None:
    assert ErrorObject.from_message("m", "durablemap.ItemTimeoutError") == ErrorObject(
        "m", "durablemap.ItemTimeoutError", None, None
    )


def test_to_operation_error_for_foreign_type() -> None:
    error = ErrorObject("bad3", "ValueError", "d", ["t"]).to_operation_error(ChildContextError)
    assert type(error) is ChildContextError
    assert (error.message, error.error_type, error.data, error.stack_trace) == ("bad3", "ValueError", "d", ["t"])
    cause = error.__cause__
    assert type(cause) is DurableOperationError
    assert str(cause) == "bad3"


def test_to_operation_error_cause_is_registered_class() -> None:
    error = ErrorObject("'nokey'", "durablemap.StepError").to_operation_error(ChildContextError)
    assert type(error) is ChildContextError
    assert error.error_type == "durablemap.StepError"
    assert type(error.__cause__) is StepError
    crashed = ErrorObject("exit 9", "durablemap.WorkerCrashedError").to_operation_error(ChildContextError)
    assert type(crashed.__cause__) is WorkerCrashedError


def test_to_operation_error_serdes_type_gives_serdes_error() -> None:
    error = ErrorObject("cannot", "durablemap.SerDesError").to_operation_error(ChildContextError)
    assert type(error) is SerDesError
    assert error.message == "cannot"


def test_raise_as_operation_error() -> None:
    with pytest.raises(ChildContextError, match=r"^bad3$") as info:
        ErrorObject("bad3", "ValueError").raise_as_operation_error(ChildContextError)
    assert info.value.error_type == "ValueError"
    assert type(info.value.__cause__) is DurableOperationError
    with pytest.raises(SerDesError):
        ErrorObject("x", "durablemap.SerDesError").raise_as_operation_error(StepError)


def test_error_object_is_frozen() -> None:
    obj = ErrorObject("m", "T")
    with pytest.raises(AttributeError):
        obj.message = "other"  # type: ignore[misc]
