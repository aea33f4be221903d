"""The protocol every executor follows, so loky, inline and Dask are interchangeable."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any, Protocol

from durablemap._worker import ChunkResult, MapSpec

__all__ = ["Executor"]


class Executor(Protocol):
    """Runs chunks of map items somewhere and hands back their encoded results."""

    #: How many chunks may usefully run at once.
    workers: int
    #: Whether workers publish slots (crash attribution, item timeouts, memory sampling).
    has_slots: bool
    #: Whether workers can open the coordinator's store and commit their chunks' records themselves
    #: (optional; False when absent: the coordinator commits what they send back).
    shares_store: bool

    def publish(self, spec: MapSpec) -> Any:
        """Make a map's spec available to the workers; returns a reference for :meth:`submit`.
        Raises ValidationError when the spec cannot be shipped (say, it cannot be pickled)."""

    def unpublish(self, ref: Any) -> None:
        """Forget a published spec."""

    def submit(self, ref: Any, indexes: Sequence[int]) -> Future[ChunkResult]:
        """Start running the items at ``indexes``."""

    def is_broken(self, error: BaseException) -> bool:
        """True when ``error`` (from a future) means the workers died and were replaced."""

    def restart(self) -> None:
        """Get fresh workers after a break."""

    def stop_running(self) -> None:
        """Stop whatever is still running (early completion, interrupt): kill or abandon it."""

    def worker_pids(self) -> list[int]:
        """The pids of the live local worker processes (empty when they are not local)."""
