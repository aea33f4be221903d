"""The wait operation: a durable sleep whose deadline is recorded, so a resume waits only the rest."""

from __future__ import annotations

from typing import TYPE_CHECKING

from durablemap._errors import ValidationError
from durablemap._records import Kind, RecordWriter, Status, SubType
from durablemap._store import op_key
from durablemap.config import Duration

if TYPE_CHECKING:
    from durablemap._context import DurableContext

__all__ = ["run_wait"]


def _seconds(duration: Duration | float) -> float:
    if isinstance(duration, Duration):
        seconds = float(duration.to_seconds())
    elif isinstance(duration, int | float) and not isinstance(duration, bool):
        seconds = float(duration)
    else:
        raise ValidationError(
            f"context.wait() takes a Duration or a number of seconds, got {type(duration).__name__}: "
            "pass Duration.from_seconds(n) or n."
        )
    if seconds < 1:
        raise ValidationError(f"duration must be at least 1 second, got: {seconds:g}")
    return seconds


def run_wait(ctx: DurableContext, duration: Duration | float, name: str | None) -> None:
    """Wait until the recorded deadline (set on the first run), then record the wait as done."""
    seconds = _seconds(duration)
    path = ctx.next_path()
    record = ctx.lookup(path, Kind.WAIT, SubType.WAIT, name)
    if record is not None and record.status == Status.SUCCEEDED:
        return
    state = ctx.state
    writer = RecordWriter(state.store(), op_key(state.execution_id, path), Kind.WAIT, name, SubType.WAIT)
    if record is not None and record.status == Status.STARTED:
        deadline = float(record.get("deadline", 0.0))
    else:
        deadline = state.clock.time() + seconds
        writer.put(Status.STARTED, meta={"deadline": deadline, "seconds": seconds})
    state.clock.sleep(deadline - state.clock.time())
    writer.put(Status.SUCCEEDED, meta={"deadline": deadline, "seconds": seconds})
