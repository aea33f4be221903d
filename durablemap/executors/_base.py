"""The protocol every executor follows, so loky, inline, Dask (and a Ray adapter) are interchangeable,
and the two messages between the coordinator and workers.

    coordinator ── MapSpec (func, inputs, serdes; once per worker per map: publish) ──> workers
    coordinator ── submit(ref, indexes) ─────────────────────────────────────────────> run_chunk
    coordinator <── Future[ChunkResult] ((index, record bytes)..., elapsed, fatal) ─── run_chunk

Everything the coordinator asks of an executor is declared here: nothing is probed with getattr.
An executor that cannot say something (which item a dead worker ran, which items run now) says
so with an empty answer or None, as documented on each member.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from durablemap._faults import Death

if TYPE_CHECKING:
    from durablemap._slots import Slots, SlotState
    from durablemap._state import ExecutionState
    from durablemap.serdes import SerDes

__all__ = ["ChunkResult", "Executor", "MapSpec"]


def _no_context(state: ExecutionState, path: tuple[int, ...]) -> Any:
    raise TypeError("MapSpec.context is not set: the map operation passes its context class")


@dataclass
class MapSpec:
    """Everything a worker needs to run items of one map, shipped once per worker."""

    token: int
    state: ExecutionState
    path: tuple[int, ...]
    func: Callable[..., Any]
    inputs: Sequence[Any]
    item_serdes: SerDes[Any] | None
    flat: bool
    sub_type: str
    names: Sequence[str | None] | None
    fingerprints: bool = False
    worker_memory_limit: int | None = None  # bytes: over it, the worker retires after its chunk
    key_prefix: bytes = b""
    commit_in_worker: bool = False  # the worker can reach the store: it commits its chunks' records
    item_timeout: float | None = None
    timeout_in_worker: bool = False  # no coordinator watches this worker's slot (Dask): time items here
    coordinator_pid: int = 0  # a worker in another process sends its items' log records back
    log_levels: dict[str, int] | None = None  # the coordinator's logger levels (see _logs)
    is_async: bool = False  # the items are coroutines: they run on an event loop (see _inflight)
    #: What outcome may complete the map (its completion criterion): 1 a success, 2 a failure. A
    #: worker running several items at once commits such an outcome at once, for the coordinator
    #: to count before more items finish (see _inflight).
    urgent: int = 0
    #: The testing runner's virtual clock: a worker starts every item of its chunk at once, and an
    #: item's wait moves the clock only when every item in flight waits (see _timeskip).
    virtual_time: bool = False
    #: The coordinator keeps no item values (a large map: they stay in the store, see _stored): a
    #: worker that committed its chunk sends back only how many items ran, not their values.
    values_unused: bool = False
    #: ``context(state, path)`` makes an item's context (``DurableContext``, from the operations layer)
    context: Callable[[ExecutionState, tuple[int, ...]], Any] = _no_context


@dataclass
class ChunkResult:
    """The outcome of one chunk, item by item in the order they ran (``indexes``): the encoded
    records to commit, the results as a replay will see them (already round-tripped through the
    item serdes), and the recorded error of each item that FAILED (by position in the chunk)."""

    token: int
    indexes: Sequence[int]
    records: list[bytes]
    values: list[Any]
    errors: dict[int, dict[str, Any]]
    elapsed: float
    fatal: dict[str, Any] | None = None
    committed: bool = False  # the worker committed the records itself (``records`` is then empty)
    logs: list[dict[str, Any]] | None = None  # log records the items emitted (see _logs)
    cpu: float = 0.0  # CPU seconds the worker process used while the chunk ran
    # The most items of the chunk the worker allowed to run at once (set by ``_inflight``); 0 when
    # the chunk ran one item after another: it could not show two at once, so it says nothing.
    concurrency: int = 0
    #: Items that ran but whose values were not sent (``values`` is then empty): the map's spec
    #: says the coordinator keeps no values (see ``MapSpec.values_unused``).
    unsent: int = 0

    @property
    def ran(self) -> int:
        """How many items of the chunk ran."""
        return len(self.values) + self.unsent




class Executor(Protocol):
    """Runs chunks of map items somewhere and hands back their encoded results."""

    @property
    def workers(self) -> int:
        """How many chunks may usefully run at once."""

    @property
    def threads(self) -> bool:
        """Whether a worker may run several items of a chunk at once (False: one at a time)."""

    @property
    def chunk_seconds(self) -> float:
        """The work one chunk should carry, in seconds: large enough to hide what dispatching a
        chunk costs here (a local pool: little; a cluster scheduler: a round trip)."""

    @property
    def shares_store(self) -> bool:
        """Whether workers can open the coordinator's store and commit their chunks' records
        themselves (False: the coordinator commits what they send back)."""

    @property
    def slots(self) -> Slots | None:
        """The workers' slots on this machine (memory sampling), or None when workers publish none."""

    def chunks_in_flight(self) -> int:
        """How many chunks to keep submitted at once (queued ones hide the dispatch latency)."""

    def publish(self, spec: MapSpec) -> Any:
        """Make a map's spec available to the workers; returns a reference for :meth:`submit`.
        Raises ValidationError when the spec cannot be shipped (say, it cannot be pickled)."""

    def unpublish(self, ref: Any) -> None:
        """Forget a published spec."""

    def submit(self, ref: Any, indexes: Sequence[int], concurrency: int = 1) -> Future[ChunkResult]:
        """Start running the items at ``indexes``, up to ``concurrency`` of them at once. May raise
        an error for which :meth:`is_broken` is true (the pool broke before the chunk got in): the
        coordinator then treats it as a break."""

    def is_broken(self, error: BaseException) -> bool:
        """True when ``error`` (from a future or from submit) means workers died."""

    def settle_break(self, futures: Sequence[Future[ChunkResult]]) -> None:
        """After a break, wait until it has run its course: loky fails every chunk in flight and
        then kills the surviving workers (a record one commits meanwhile must be seen); Dask fails
        only the lost worker's chunks and returns at once."""

    def deaths(self, token: int) -> list[Death] | None:
        """The workers that died running an item of map ``token`` since the last call, with the
        evidence of why (a death while loading the map names the index ``_slots.LOADING``); None
        when the executor cannot tell per worker (then :meth:`names_culprit` says which lost chunks
        were running on a dead worker)."""

    def names_culprit(self, error: BaseException) -> bool:
        """Whether a chunk lost with ``error`` was itself running when its worker died, rather than
        cancelled along with it (used when :meth:`deaths` is None)."""

    def running(self, token: int) -> list[SlotState]:
        """The items of map ``token`` running now and since when (for item timeouts); empty when the
        executor times items itself (remote workers)."""

    def kill_worker(self, pid: int) -> str:
        """Kill the worker ``pid`` (an item ran past its timeout); returns its stack at the time."""

    def restart(self) -> None:
        """Get fresh workers after a break."""

    def stop_running(self) -> None:
        """Stop whatever is still running (early completion, interrupt): kill or abandon it."""

    def worker_pids(self) -> list[int]:
        """The pids of the live local worker processes (empty when they are not local)."""
