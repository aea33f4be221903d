"""The step operation: run a function once, record its result durably, retry it as configured."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from durablemap._context import ContextLogger, StepContext, failed_again
from durablemap._errors import (
    ErrorObject,
    ExecutionError,
    InvocationError,
    SerDesError,
    StepError,
    StepInterruptedError,
)
from durablemap._exits import EXITS, describe_exit, is_real_interrupt
from durablemap._records import Kind, Record, RecordWriter, Status, SubType
from durablemap._store import op_key, path_str
from durablemap.config import StepConfig, StepSemantics
from durablemap.retries import RetryPresets, as_retry_strategy
from durablemap.serdes import deserialize_value, serialize_value

if TYPE_CHECKING:
    from durablemap._context import DurableContext

__all__ = ["bind_later", "durable_step", "operation_name", "run_step"]

T = TypeVar("T")


def operation_name(func: Any) -> str | None:
    """The default name of an operation running ``func``: the decorated function's name, else
    ``func.__name__`` (None for lambdas)."""
    original = getattr(func, "_original_name", None)
    if original:
        return str(original)
    name = getattr(func, "__name__", None)
    return None if not name or name == "<lambda>" else str(name)


def bind_later(func: Callable[..., T]) -> Callable[..., Callable[[Any], T]]:
    """``func(first, *args)`` as ``bind(*args)(first)``, both named after ``func``: the shape of
    ``@durable_step`` and ``@durable_with_child_context``."""

    @functools.wraps(func)
    def bind(*args: Any, **kwargs: Any) -> Callable[[Any], T]:
        def bound(first: Any) -> T:
            return func(first, *args, **kwargs)

        bound._original_name = func.__name__  # type: ignore[attr-defined]
        return bound

    bind._original_name = func.__name__  # type: ignore[attr-defined]
    return bind


def durable_step(func: Callable[..., T]) -> Callable[..., Callable[[StepContext], T]]:
    """Decorate ``func(step_context, *args)``: calling it with ``*args`` gives the step callable,
    named after ``func``, to pass to ``context.step``."""
    return bind_later(func)


def run_step(ctx: DurableContext, func: Callable[[StepContext], T], name: str | None,
             config: StepConfig | None) -> T:
    """Return the recorded result of this step, or run it (with retries) and record the result."""
    config = config or StepConfig()
    name = name or operation_name(func)
    path = ctx.next_path()
    record = ctx.lookup(path, Kind.STEP, SubType.STEP, name)
    state = ctx.state
    op_id = path_str(path)
    if record is not None and record.finished:
        if failed_again(record, state):
            ctx.mark_rerun()
            record = None
        elif record.status == Status.SUCCEEDED:
            return deserialize_value(config.serdes, record.payload or b"", op_id, state.execution_id)  # type: ignore[no-any-return]
        else:
            _raise_recorded(record)
    return _run_attempts(ctx, func, name, config, path, record)


def _raise_recorded(record: Record) -> None:
    # A recorded SerDesError comes back as a SerDesError, anything else as a StepError.
    ErrorObject.from_dict(record.error or {}).raise_as_operation_error(StepError)


def _exit_error(exc: BaseException, step: str) -> dict[str, Any]:
    raised = ErrorObject.from_exception(exc)
    return ErrorObject(describe_exit(exc, f"Step '{step}'"), raised.type, None, raised.stack_trace).to_dict()


def _run_attempts(ctx: DurableContext, func: Callable[[StepContext], T], name: str | None,
                  config: StepConfig, path: tuple[int, ...], record: Record | None) -> T:
    state = ctx.state
    op_id = path_str(path)
    strategy = as_retry_strategy(config.retry_strategy) or RetryPresets.default()
    at_most_once = config.step_semantics == StepSemantics.AT_MOST_ONCE_PER_RETRY
    attempt = int(record.get("attempt", 0)) if record is not None else 0
    pending_error: Exception | None = None
    if record is not None and record.status == Status.PENDING:
        state.clock.sleep(float(record.get("next_attempt", 0.0)) - state.clock.time())
    elif record is not None and record.status == Status.STARTED and at_most_once:
        pending_error = StepInterruptedError(
            f"Step '{name or op_id}' (attempt {attempt}) was interrupted before it recorded a result; "
            "under AT_MOST_ONCE_PER_RETRY it is not run again for that attempt.", step_id=op_id)

    writer = RecordWriter(state.store(), op_key(state.execution_id, path), Kind.STEP, name, SubType.STEP)

    def put(status: str, payload: Any = None, error: dict[str, Any] | None = None, **meta: Any) -> None:
        writer.put(status, payload, error, meta or None)

    while True:
        if pending_error is None:
            attempt += 1
            if at_most_once:
                put(Status.STARTED, attempt=attempt)
            try:
                logger = ContextLogger(ctx, {"operationId": op_id, "operationName": name, "attempt": attempt})
                value = func(StepContext(attempt, logger))
            except (ExecutionError, InvocationError):
                raise  # these end the run (or the execution); a retry strategy never sees them
            except Exception as exc:
                pending_error = exc
            except EXITS as exc:
                if state.in_worker and not is_real_interrupt(exc):
                    # Its item fails with what it raised; the step is recorded as having failed with
                    # it (never retried), so that a later run of the item does not find it unfinished.
                    put(Status.FAILED, error=_exit_error(exc, name or op_id), attempt=attempt)
                raise
        if pending_error is not None:
            error, pending_error = pending_error, None
            decision = strategy(error, attempt)
            if decision.should_retry:
                delay = float(decision.delay_seconds)
                put(Status.PENDING, attempt=attempt, next_attempt=state.clock.time() + delay)
                state.clock.sleep(delay)
                continue
            put(Status.FAILED, error=ErrorObject.from_exception(error).to_dict(), attempt=attempt)
            ErrorObject.from_exception(error).raise_as_operation_error(StepError)
        try:
            payload = serialize_value(config.serdes, value, op_id, state.execution_id)
        except SerDesError as exc:
            put(Status.FAILED, error=ErrorObject.from_exception(exc).to_dict(), attempt=attempt)
            raise
        put(Status.SUCCEEDED, payload, attempt=attempt)
        return deserialize_value(config.serdes, payload, op_id, state.execution_id)  # type: ignore[no-any-return]
