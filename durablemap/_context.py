"""DurableContext: the handle user code receives, and the bookkeeping every operation shares.

Every operation call takes the next id of its context (``path + (n,)``), looks that id up in the
journal, checks that the recorded operation is the same kind and name (else the code is not
deterministic), and then either returns the recorded outcome or runs. The operations themselves live
in ``_step``, ``_wait``, ``_child`` and ``_map``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from durablemap._errors import NonDeterministicExecutionError
from durablemap._records import Record, Status, decode_record
from durablemap._store import op_key, path_str

if TYPE_CHECKING:
    from durablemap._batch import BatchResult
    from durablemap._state import ExecutionState
    from durablemap.config import ChildConfig, Duration, MapConfig, ParallelBranch, ParallelConfig, StepConfig

__all__ = ["DurableContext", "ExecutionContext", "StepContext"]

T = TypeVar("T")
U = TypeVar("U")

_log = logging.getLogger("durablemap.context")


@dataclass(frozen=True)
class ExecutionContext:
    """Identifies the execution (the SDK calls its id an ARN)."""

    durable_execution_arn: str


class ContextLogger:
    """A logger bound to a context: records carry the execution, operation and item, and nothing is
    logged while the context is replaying recorded operations."""

    def __init__(self, context: DurableContext, extra: dict[str, Any] | None = None) -> None:
        self._context = context
        self._extra = extra or {}

    def _log(self, level: int, msg: object, args: tuple[Any, ...], extra: dict[str, Any] | None,
             exc_info: bool = False) -> None:
        if self._context.is_replaying() or not _log.isEnabledFor(level):
            return
        state = self._context.state
        fields: dict[str, Any] = {"executionArn": state.execution_id,
                                  "operationId": path_str(self._context.path)}
        if state.item_index is not None:
            fields["itemIndex"] = state.item_index
        fields.update(self._extra)
        if extra:
            fields.update(extra)
        _log.log(level, msg, *args, extra=fields, exc_info=exc_info, stacklevel=3)

    def debug(self, msg: object, *args: Any, extra: dict[str, Any] | None = None) -> None:
        """Log at DEBUG."""
        self._log(logging.DEBUG, msg, args, extra)

    def info(self, msg: object, *args: Any, extra: dict[str, Any] | None = None) -> None:
        """Log at INFO."""
        self._log(logging.INFO, msg, args, extra)

    def warning(self, msg: object, *args: Any, extra: dict[str, Any] | None = None) -> None:
        """Log at WARNING."""
        self._log(logging.WARNING, msg, args, extra)

    def error(self, msg: object, *args: Any, extra: dict[str, Any] | None = None) -> None:
        """Log at ERROR."""
        self._log(logging.ERROR, msg, args, extra)

    def exception(self, msg: object, *args: Any, extra: dict[str, Any] | None = None) -> None:
        """Log at ERROR with the current exception's traceback."""
        self._log(logging.ERROR, msg, args, extra, exc_info=True)


@dataclass
class StepContext:
    """What a step's function receives: the attempt number (from 1) and a logger."""

    attempt: int
    logger: Any


class DurableContext:
    """The context of a durable handler, a map item, a parallel branch or a child context.

    Operations called on it (``step``, ``wait``, ``run_in_child_context``, ``map``, ``parallel``) are
    recorded under it, so that running the execution again returns their outcomes without running
    their code again.
    """

    # Slots: a context is made for every item, and tiny items make a great many. So only three are
    # set here: the others (_replaying, _replay_checked, _rerun, _logger) are set when first needed,
    # and read with getattr and their default until then.
    __slots__ = ("_counter", "_logger", "_path", "_replay_checked", "_replaying", "_rerun", "_state")

    _replaying: bool | None  # whether the next operation is recorded (None: not looked up yet)
    _replay_checked: int  # the counter value is_replaying last looked ahead from
    _rerun: bool  # an operation of this context ran again: later ones run again too
    _logger: Any

    def __init__(self, state: ExecutionState, path: tuple[int, ...] = ()) -> None:
        self._state = state
        self._path = path
        self._counter = 0

    # -- public face ------------------------------------------------------------------------
    @property
    def state(self) -> ExecutionState:
        """The execution this context belongs to."""
        return self._state

    @property
    def path(self) -> tuple[int, ...]:
        """This context's operation path (empty for the handler's context)."""
        return self._path

    @property
    def execution_context(self) -> ExecutionContext:
        """The execution's identity."""
        return ExecutionContext(self._state.execution_id)

    def is_replaying(self) -> bool:
        """True while this context is going again over code that an earlier run already ran: its
        next operation is recorded. Once an operation of this context runs (or the recorded ones
        run out), it is False for good."""
        replaying = getattr(self, "_replaying", None)
        if replaying is False:
            return False
        if getattr(self, "_replay_checked", -1) != self._counter:
            raw = self._state.store().get(op_key(self._state.execution_id, (*self._path, self._counter + 1)))
            self._replay_checked = self._counter
            self._replaying = replaying = raw is not None
        return bool(replaying)

    @property
    def logger(self) -> Any:
        """A logger whose records carry this context's ids; silent while replaying."""
        logger = getattr(self, "_logger", None)
        if logger is None:
            self._logger = logger = ContextLogger(self)
        return logger

    def set_logger(self, logger: Any) -> None:
        """Replace this context's logger."""
        self._logger = logger

    def step(self, func: Callable[[StepContext], T], name: str | None = None,
             config: StepConfig | None = None) -> T:
        """Run ``func`` once, durably: its result is recorded before the code after it continues."""
        from durablemap._step import run_step
        return run_step(self, func, name, config)

    def wait(self, duration: Duration | float, name: str | None = None) -> None:
        """Wait durably: a resume waits only for the time that is left."""
        from durablemap._wait import run_wait
        run_wait(self, duration, name)

    def run_in_child_context(self, func: Callable[[DurableContext], T], name: str | None = None,
                             config: ChildConfig | None = None) -> T:
        """Run ``func`` with a child context whose operations are recorded under this operation."""
        from durablemap._child import run_child
        return run_child(self, func, name, config)

    def map(self, inputs: Sequence[U], func: Callable[[DurableContext, U, int, Sequence[U]], T],
            name: str | None = None, config: MapConfig[Any] | None = None) -> BatchResult[T]:
        """Run ``func(item_context, item, index, inputs)`` for every item, in worker processes."""
        from durablemap._map import run_map
        return run_map(self, inputs, func, name, config)

    def parallel(self, functions: Sequence[Callable[[DurableContext], T] | ParallelBranch[T]],
                 name: str | None = None, config: ParallelConfig | None = None) -> BatchResult[T]:
        """Run each function with its own child context, in worker processes."""
        from durablemap._map import run_parallel
        return run_parallel(self, functions, name, config)

    # -- shared by the operations -----------------------------------------------------------
    def child(self, path: tuple[int, ...]) -> DurableContext:
        """A context for the operation at ``path``, sharing this context's execution."""
        child = DurableContext(self._state, path)
        if getattr(self, "_rerun", False):
            child._rerun = True
        return child

    def next_path(self) -> tuple[int, ...]:
        """Take the next operation id of this context."""
        self._counter += 1
        return (*self._path, self._counter)

    def lookup(self, path: tuple[int, ...], kind: str, sub_type: str, name: str | None) -> Record | None:
        """The record at ``path`` after checking it is the same operation, or None when there is
        none (or when ``retry_failed`` means it must run again)."""
        store = self._state.store()
        key = op_key(self._state.execution_id, path)
        raw = store.get(key)
        if raw is None:
            self._replaying = False
            return None
        record = decode_record(raw, path_str(path))
        check_identity(record, path, kind, sub_type, name)
        if getattr(self, "_rerun", False):
            # An earlier operation of this context ran again: what this one recorded may depend
            # on it, so it runs afresh too.
            store.delete_prefix(key)
            self._replaying = False
            return None
        if not record.finished:
            self._replaying = False
        return record

    def mark_rerun(self) -> None:
        """An operation of this context is running again (``retry_failed``): later ones will too."""
        self._rerun = True
        self._replaying = False


def check_identity(record: Record, path: tuple[int, ...], kind: str, sub_type: str,
                   name: str | None) -> None:
    """Raise NonDeterministicExecutionError when the recorded operation is not this one."""
    # plain str (not the StrEnum) so the message shows 'STEP', not <Kind.STEP: 'STEP'>
    for what, recorded, current in (("type", _plain(record.kind), _plain(kind)),
                                    ("sub_type", _plain(record.sub_type), _plain(sub_type)),
                                    ("name", record.name or None, name or None)):
        if recorded != current:
            raise NonDeterministicExecutionError(
                f"Non-deterministic operation identity at id='{path_str(path)}': {what} recorded="
                f"{recorded!r} current={current!r}. The handler must call the same operations in the "
                "same order on every run; restore the previous code, or start a new execution "
                "(another execution_id, or `durablemap rm ID`).",
                step_id=path_str(path),
            )


def _plain(value: str | None) -> str | None:
    return None if value is None else str(value)


def failed_again(record: Record, state: ExecutionState) -> bool:
    """True when ``retry_failed`` asks this FAILED record to run again."""
    return state.retry_failed and record.status == Status.FAILED
