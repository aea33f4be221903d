"""The inline executor: items run in the calling process, one chunk at a time (debugging, and
nested maps inside a worker)."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from durablemap._worker import ChunkResult, MapSpec, run_chunk

__all__ = ["InlineExecutor"]


class InlineExecutor:
    """Runs each submitted chunk at once in this process; the coordinator keeps one in flight."""

    workers = 1
    has_slots = False
    shares_store = False  # items run here: the coordinator commits in line

    def publish(self, spec: MapSpec) -> Any:
        """Nothing to ship: the spec is used as it is."""
        return spec

    def unpublish(self, ref: Any) -> None:
        """Nothing to forget."""

    def submit(self, ref: Any, indexes: Sequence[int]) -> Future[ChunkResult]:
        """Run the chunk now and return its finished future."""
        future: Future[ChunkResult] = Future()
        try:
            future.set_result(run_chunk(ref, indexes))
        except Exception as exc:
            future.set_exception(exc)
        return future

    def is_broken(self, error: BaseException) -> bool:
        """An inline run has no workers to lose."""
        return False

    def restart(self) -> None:
        """Nothing to restart."""

    def stop_running(self) -> None:
        """Nothing runs in the background."""

    def worker_pids(self) -> list[int]:
        """No worker processes."""
        return []
