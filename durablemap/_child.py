"""The child-context operation: a block of operations recorded under one id, with one result."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from durablemap._context import failed_again
from durablemap._errors import ChildContextError, ErrorObject, ExecutionError, InvocationError, SerDesError
from durablemap._records import CHECKPOINT_SIZE_LIMIT_BYTES, Kind, RecordWriter, Status, SubType
from durablemap._step import bind_later, operation_name
from durablemap._store import op_key, path_str
from durablemap.config import ChildConfig
from durablemap.serdes import deserialize_value, serialize_value

if TYPE_CHECKING:
    from durablemap._context import DurableContext

__all__ = ["CHECKPOINT_SIZE_LIMIT_BYTES", "durable_with_child_context", "run_child"]

T = TypeVar("T")

def durable_with_child_context(func: Callable[..., T]) -> Callable[..., Callable[[DurableContext], T]]:
    """Decorate ``func(context, *args)``: calling it with ``*args`` gives the callable to pass to
    ``context.run_in_child_context``, named after ``func``."""
    return bind_later(func)


def run_child(ctx: DurableContext, func: Callable[[DurableContext], T], name: str | None,
              config: ChildConfig | None) -> T:
    """Return the recorded result of this child context, or run ``func`` in it and record it."""
    config = config or ChildConfig()
    name = name or operation_name(func)
    sub_type = config.sub_type or SubType.RUN_IN_CHILD_CONTEXT
    path = ctx.next_path()
    record = ctx.lookup(path, Kind.CONTEXT, sub_type, name)
    state = ctx.state
    op_id = path_str(path)
    child = ctx.child(path)
    if record is not None and record.finished:
        if failed_again(record, state):
            ctx.mark_rerun()
        elif record.status == Status.FAILED:
            ErrorObject.from_dict(record.error or {}).raise_as_operation_error(ChildContextError)
        elif not record.get("replay_children"):
            return deserialize_value(config.serdes, record.payload or b"", op_id, state.execution_id)  # type: ignore[no-any-return]
    put = RecordWriter(state.store(), op_key(state.execution_id, path), Kind.CONTEXT, name, sub_type).put

    try:
        value = func(child)
    except (ExecutionError, InvocationError, SerDesError):
        raise
    except Exception as exc:
        error = ErrorObject.from_exception(exc)
        put(Status.FAILED, error=error.to_dict())
        error.raise_as_operation_error(ChildContextError)
    payload = serialize_value(config.serdes, value, op_id, state.execution_id)
    if len(payload) > CHECKPOINT_SIZE_LIMIT_BYTES:
        # Too large to keep as one record: a replay runs the block again, its operations replaying.
        summary = config.summary_generator(value) if config.summary_generator else None
        put(Status.SUCCEEDED, None, meta={"replay_children": True, "summary": summary})
    else:
        put(Status.SUCCEEDED, payload)
    return deserialize_value(config.serdes, payload, op_id, state.execution_id)  # type: ignore[no-any-return]
