"""The state one execution shares with all its contexts, in the coordinator and in workers."""

from __future__ import annotations

import logging
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from durablemap._clock import Clock
from durablemap._store import Store
from durablemap._store._interface import RecordStore

if TYPE_CHECKING:
    from durablemap._observe import Observers
    from durablemap.executors import Executor

__all__ = ["ExecutionState", "Settings"]


@dataclass(frozen=True)
class Settings:
    """How one run behaves, set by ``DurableFunction.run`` (arguments and environment), read by the
    runtime: typed, so a misspelt setting is an error, not a silent default."""

    #: After Ctrl-C, how long items in flight may take to finish and be recorded.
    grace_seconds: float = 5.0
    #: The execution's memory budget and worker memory limit (bytes), for maps that set none.
    memory_budget: int | None = None
    worker_memory_limit: int | None = None
    #: How long memory may stay over budget with nothing running before the map fails.
    memory_stall_seconds: float = 5.0
    #: Items of a map running at once when its MapConfig.max_concurrency is None (None: the
    #: default, ``_concurrency.DEFAULT_CONCURRENCY``); ``handler.run(..., concurrency=N)``.
    concurrency: int | None = None


# The item each execution state is running in this thread or task: {id(state): [index]}. A
# context variable, not an attribute: a worker runs several items at once (threads, asyncio tasks),
# each in its own copy of the context. The one-element list lets a loop of items reuse one mapping.
_ITEMS: ContextVar[dict[int, list[int | None]] | None] = ContextVar("durablemap_items", default=None)


def item_slot(state: ExecutionState) -> list[int | None]:
    """A holder whose element is ``state``'s current item index, in the calling context (a loop
    over items stores each index in it; a thread or task running one item gets its own)."""
    holder: list[int | None] = [None]
    _ITEMS.set({**(_ITEMS.get() or {}), id(state): holder})
    return holder


@dataclass
class ExecutionState:
    """Where an execution is recorded and how its items run.

    The first fields travel to worker processes with every map; ``executor`` and ``observers`` live
    only in the process that made them (a worker runs nested maps inline).
    """

    store_path: str
    execution_id: str
    clock: Clock
    retry_failed: bool = False
    in_worker: bool = False
    executor: Executor | None = field(default=None, compare=False)
    observers: Observers | None = field(default=None, compare=False)
    settings: Settings = field(default_factory=Settings)

    @property
    def item_index(self) -> int | None:
        """The index of the map item running this code (in this thread or task), or None."""
        holder = (_ITEMS.get() or {}).get(id(self))
        return holder[0] if holder is not None else None

    @item_index.setter
    def item_index(self, index: int | None) -> None:
        holder = (_ITEMS.get() or {}).get(id(self))
        if holder is None:
            holder = item_slot(self)
        holder[0] = index

    def store(self) -> RecordStore:
        """This process's handle on the store."""
        return Store.for_process(self.store_path)

    def map_executor(self) -> Executor:
        """Where this process runs a map's items: the execution's executor, or in line inside a
        worker (a nested map runs in its item's worker)."""
        if self.executor is not None and not self.in_worker:
            return self.executor
        from durablemap.executors._inline import InlineExecutor
        return InlineExecutor()

    def for_worker(self) -> ExecutionState:
        """The copy that travels to a worker process: no executor, no observers."""
        return replace(self, in_worker=True, executor=None, observers=None)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["executor"] = None
        state["observers"] = None
        return state

    @property
    def logger(self) -> logging.Logger:
        """The library's logger."""
        return logging.getLogger("durablemap")
