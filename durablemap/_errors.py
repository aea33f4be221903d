"""Exceptions raised by durablemap, and the portable record of an error.

The tree follows the AWS Durable Execution SDK's, with durablemap's own errors added (marked *)::

    Exception
    └── DurableExecutionsError
        ├── PluginLoadError
        ├── ValidationError                 bad arguments or configuration
        ├── InvalidStateError
        ├── OrderedLockError
        ├── ExecutionLockedError *          another live process runs this execution
        ├── StoreError *                    the store is unusable (not ours, unwritable, unknown format)
        ├── SerDesError                     a value could not be (de)serialized; never retried
        ├── DurableOperationError           an operation failed; carries the escaping error's type
        │   ├── StepError
        │   ├── InvokeError
        │   ├── ChildContextError           run_in_child_context, map, parallel
        │   ├── WaitForConditionError
        │   ├── CallbackError
        │   │   ├── CallbackExternalError
        │   │   ├── CallbackTimeoutError
        │   │   └── CallbackSubmitterError
        │   ├── BatchCompletionError        should_complete completed the batch as FAILED
        │   ├── WorkerCrashedError *        an item's worker process died too many times
        │   └── ItemTimeoutError *          an item ran longer than MapConfig.item_timeout
        └── UnrecoverableError
            ├── ExecutionError              the execution fails; nothing retries it
            │   └── NonDeterministicExecutionError
            └── InvocationError             this run fails; running again may succeed
                ├── StepInterruptedError
                └── RetryableSerDesError

    BaseException
    ├── SuspendExecution                    unwinds a context that must wait
    │   └── TimedSuspendExecution
    └── OrphanedChildException              an operation's parent finished without it

`ErrorObject` is how a failure is recorded in the store and in a `BatchResult`: the original exception
object is never kept, so the first run and a replay raise the same reconstructed error.
"""

from __future__ import annotations

import contextlib
import traceback
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NoReturn

__all__ = [
    "BatchCompletionError",
    "CompletionReason",
    "CallbackError",
    "CallbackExternalError",
    "CallbackSubmitterError",
    "CallbackTimeoutError",
    "ChildContextError",
    "DurableExecutionsError",
    "DurableOperationError",
    "ErrorObject",
    "ExecutionError",
    "ExecutionLockedError",
    "InvalidStateError",
    "InvocationError",
    "InvokeError",
    "ItemTimeoutError",
    "NonDeterministicExecutionError",
    "OrderedLockError",
    "OrphanedChildException",
    "PluginLoadError",
    "RetryableSerDesError",
    "SerDesError",
    "StepError",
    "StepInterruptedError",
    "StoreError",
    "SuspendExecution",
    "TimedSuspendExecution",
    "UnrecoverableError",
    "ValidationError",
    "WaitForConditionError",
    "WorkerCrashedError",
    "error_type_name",
]

# What to do when a worker process cannot load a map: unpickling its function failed or killed it.
UNPICKLE_ADVICE = ("Check that the function and what it references unpickle in a fresh Python process "
                   "(pickle.loads(cloudpickle.dumps(func))) without failing or crashing it, or run with "
                   "executor='inline'.")

_PUBLIC_PACKAGE = "durablemap"


def error_type_name(exc: BaseException | type[BaseException]) -> str:
    """Name an exception class the way `ErrorObject.type` records it.

    Builtins stay unqualified (``"ValueError"``); durablemap's own classes report
    ``"durablemap.<Name>"`` whichever private module defines them, so records do not change when code
    moves; anything else is ``"module.QualName"``.
    """
    cls = exc if isinstance(exc, type) else type(exc)
    module = cls.__module__
    if module == "builtins":
        return cls.__qualname__
    if module == _PUBLIC_PACKAGE or module.startswith(_PUBLIC_PACKAGE + "."):
        return f"{_PUBLIC_PACKAGE}.{cls.__qualname__}"
    return f"{module}.{cls.__qualname__}"


class _SdkStrEnum(StrEnum):
    """A str-valued enum that prints as the SDK's plain ``Enum`` does: ``str(member)`` and
    ``f"{member}"`` give ``"ClassName.MEMBER"``, while ``member == "MEMBER"`` stays true (the seed
    compares statuses with strings) and JSON and msgpack write the value."""

    def __str__(self) -> str:
        return f"{type(self).__name__}.{self.name}"

    def __format__(self, format_spec: str) -> str:
        return format(str(self), format_spec)


class CompletionReason(_SdkStrEnum):
    """Why a batch stopped; see `durablemap._completion.CompletionPolicy.reason` for the rules.
    Defined here, at the foundation, because ``BatchCompletionError`` carries one.
    ``CompletionReason.ALL_COMPLETED == "ALL_COMPLETED"``; ``str()`` gives
    ``"CompletionReason.ALL_COMPLETED"`` as in the SDK."""

    ALL_COMPLETED = "ALL_COMPLETED"
    MIN_SUCCESSFUL_REACHED = "MIN_SUCCESSFUL_REACHED"
    FAILURE_TOLERANCE_EXCEEDED = "FAILURE_TOLERANCE_EXCEEDED"
    CUSTOM_COMPLETION_SUCCEEDED = "CUSTOM_COMPLETION_SUCCEEDED"
    CUSTOM_COMPLETION_FAILED = "CUSTOM_COMPLETION_FAILED"


class DurableExecutionsError(Exception):
    """Root of every error durablemap raises on purpose.

    ``message`` is always a str and ``str(error) == error.message``.
    """

    def __init__(self, message: str | None = None) -> None:
        self.message: str = "" if message is None else str(message)
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses have different constructors; rebuild from the instance dict so errors cross
        # process boundaries (loky, Dask) intact whatever their signature.
        return (_rebuild_error, (type(self), self.__dict__.copy()))


def _rebuild_error(cls: type[BaseException], state: dict[str, Any]) -> BaseException:
    error = cls.__new__(cls)
    error.__dict__.update(state)
    message = state.get("message")
    error.args = (message,) if message is not None else ()
    return error


class PluginLoadError(DurableExecutionsError):
    """A plugin could not be loaded (kept for import compatibility with the AWS SDK)."""


class ValidationError(DurableExecutionsError):
    """An argument or a configuration value is invalid; the message says which and what to pass."""


class InvalidStateError(DurableExecutionsError):
    """An operation was used in a state that does not allow it."""


class OrderedLockError(DurableExecutionsError):
    """Ordered locking failed (kept for import compatibility with the AWS SDK)."""


class ExecutionLockedError(DurableExecutionsError):
    """The execution is being run by another live process; wait for it or use another execution id."""


class StoreError(DurableExecutionsError):
    """The store path is not a durablemap store, cannot be written, or has an unknown format."""


class _ErrorFields(DurableExecutionsError):
    """Shared constructor of the errors that carry the fields of an `ErrorObject`."""

    def __init__(
        self,
        message: str | None = None,
        error_type: str | None = None,
        data: str | None = None,
        stack_trace: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.error_type: str = error_type if error_type is not None else error_type_name(type(self))
        self.data = data
        self.stack_trace = stack_trace


class SerDesError(_ErrorFields):
    """A value could not be serialized or deserialized. Permanent: retrying does not help."""


class DurableOperationError(_ErrorFields):
    """An operation failed. ``error_type`` names the error that escaped the user's code."""


class StepError(DurableOperationError):
    """A step failed after its retry strategy gave up."""


class InvokeError(DurableOperationError):
    """An invoked function failed (kept for import compatibility with the AWS SDK)."""


class ChildContextError(DurableOperationError):
    """A child context, map or parallel failed, or a batch item did (from ``throw_if_error``)."""


class WaitForConditionError(DurableOperationError):
    """A wait_for_condition check raised, or its wait strategy ran out of attempts."""


class CallbackError(DurableOperationError):
    """A callback failed (kept for import compatibility with the AWS SDK)."""


class CallbackExternalError(CallbackError):
    """The external system reported a callback failure."""


class CallbackTimeoutError(CallbackError):
    """A callback was not completed in time."""


class CallbackSubmitterError(CallbackError):
    """The submitter of a callback failed."""


class WorkerCrashedError(DurableOperationError):
    """An item's worker process died (segfault, ``os._exit``, OOM kill) as often as the map allows.

    Raise ``MapConfig.max_worker_crashes`` to give the item more chances, or fix what kills the process.
    """


class ItemTimeoutError(DurableOperationError):
    """An item ran longer than ``MapConfig.item_timeout`` seconds; its worker was replaced."""


_CUSTOM_COMPLETION_FAILED = "CUSTOM_COMPLETION_FAILED"


class BatchCompletionError(DurableOperationError):
    """``should_complete`` completed the batch with ``CompletionOutcome.FAILED``.

    ``completion_reason`` is a `CompletionReason` (a str enum; a plain str is converted).
    """

    def __init__(
        self,
        completion_reason: Any = _CUSTOM_COMPLETION_FAILED,
        message: str | None = None,
        error_type: str | None = None,
        data: str | None = None,
        stack_trace: list[str] | None = None,
    ) -> None:
        if isinstance(completion_reason, str) and not isinstance(completion_reason, CompletionReason):
            # An unknown reason is kept as given rather than lose the information.
            with contextlib.suppress(ValueError):
                completion_reason = CompletionReason(completion_reason)
        if message is None:
            reason_text = getattr(completion_reason, "value", completion_reason)
            message = f"Batch completed as failed by should_complete ({reason_text})"
        super().__init__(message, error_type, data, stack_trace)
        self.completion_reason = completion_reason


class UnrecoverableError(DurableExecutionsError):
    """An error that ends the current run; `is_retryable` says whether running again may help."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message)

    def is_retryable(self) -> bool:
        """Whether running the execution again may succeed."""
        return False


class ExecutionError(UnrecoverableError):
    """The execution fails and is not retried."""


class NonDeterministicExecutionError(ExecutionError):
    """The handler started different operations on replay than were recorded."""

    def __init__(self, message: str | None = None, step_id: str | None = None) -> None:
        super().__init__(message)
        self.step_id = step_id


class InvocationError(UnrecoverableError):
    """This run fails, but running the execution again may succeed."""

    def is_retryable(self) -> bool:
        """Always true: the failure is tied to this run, not to the recorded history."""
        return True


class StepInterruptedError(InvocationError):
    """An at-most-once step was interrupted after it started; it is not run again for that attempt."""

    def __init__(self, message: str | None = None, step_id: str | None = None) -> None:
        super().__init__(message)
        self.step_id = step_id


class RetryableSerDesError(InvocationError):
    """A serialization failure that a later run may not hit (for example a transient resource)."""


class SuspendExecution(BaseException):
    """Unwinds a context that must wait. A BaseException so ``except Exception`` does not catch it."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message


class TimedSuspendExecution(SuspendExecution):
    """Unwinds a context that may continue at ``scheduled_timestamp`` (seconds since the epoch)."""

    def __init__(self, message: str, scheduled_timestamp: float) -> None:
        super().__init__(message)
        self.scheduled_timestamp = scheduled_timestamp

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.scheduled_timestamp))


class OrphanedChildException(BaseException):
    """An operation's parent finished without it; its late outcome is discarded."""

    def __init__(self, message: str, operation_id: str) -> None:
        super().__init__(message)
        self.message = message
        self.operation_id = operation_id

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.operation_id))


def _registered_error_classes() -> dict[str, type[_ErrorFields]]:
    """Map recorded type names to the durablemap classes that can be rebuilt from error fields."""
    registry: dict[str, type[_ErrorFields]] = {}
    pending: list[type[_ErrorFields]] = [DurableOperationError, SerDesError]
    while pending:
        cls = pending.pop()
        name = error_type_name(cls)
        # Only durablemap's classes: a user's subclass may not accept the error-field constructor.
        if name.startswith(_PUBLIC_PACKAGE + "."):
            registry[name] = cls
        pending.extend(cls.__subclasses__())
    return registry


# ErrorObject has a field named "type", which shadows the builtin inside its class body.
_OperationErrorClass = type[DurableOperationError]


@dataclass(frozen=True, slots=True)
class ErrorObject:
    """The recorded form of a failure: message, type name, optional data and traceback lines.

    ``type`` is `error_type_name` of the exception (``"ValueError"``, ``"durablemap.StepError"``).
    """

    message: str | None
    type: str | None
    data: str | None = None
    stack_trace: list[str] | None = None

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorObject:
        """Record ``exc``: its type name, ``str(exc)`` and its formatted traceback lines."""
        return cls(
            message=str(exc),
            type=error_type_name(type(exc)),
            data=None,
            stack_trace=traceback.format_exception(exc),
        )

    @classmethod
    def from_message(cls, message: str | None, type: str | None) -> ErrorObject:
        """An error record without a traceback, for failures durablemap detects itself."""
        return cls(message=message, type=type)

    def to_dict(self) -> dict[str, Any]:
        """``ErrorMessage``, ``ErrorType``, ``ErrorData`` and ``StackTrace``, omitting None values."""
        out: dict[str, Any] = {}
        if self.message is not None:
            out["ErrorMessage"] = self.message
        if self.type is not None:
            out["ErrorType"] = self.type
        if self.data is not None:
            out["ErrorData"] = self.data
        if self.stack_trace is not None:
            out["StackTrace"] = list(self.stack_trace)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ErrorObject:
        """Inverse of `to_dict`; missing keys become None."""
        stack = data.get("StackTrace")
        return cls(
            message=data.get("ErrorMessage"),
            type=data.get("ErrorType"),
            data=data.get("ErrorData"),
            stack_trace=list(stack) if stack is not None else None,
        )

    def to_operation_error(
        self, cls: _OperationErrorClass = DurableOperationError
    ) -> DurableOperationError | SerDesError:
        """Rebuild the error this record describes, as ``cls`` (or `SerDesError` for serdes failures).

        Its ``error_type`` is the recorded type and its ``__cause__`` is the registered durablemap class
        the type names (for example `StepError`), else a plain `DurableOperationError`.
        """
        named = _registered_error_classes().get(self.type) if self.type is not None else None
        fields: dict[str, Any] = {
            "message": self.message,
            "error_type": self.type,
            "data": self.data,
            "stack_trace": self.stack_trace,
        }
        if named is not None and issubclass(named, SerDesError):
            return named(**fields)
        cause_cls = named if named is not None else DurableOperationError
        error = cls(**fields)
        error.__cause__ = cause_cls(**fields)
        return error

    def raise_as_operation_error(self, cls: _OperationErrorClass = DurableOperationError) -> NoReturn:
        """Raise `to_operation_error` (``cls``, or `SerDesError`) from its recorded cause."""
        error = self.to_operation_error(cls)
        raise error from error.__cause__
