"""The inline executor: items run in the calling process, one chunk at a time (debugging, and
nested maps inside a worker)."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from durablemap._faults import Death
from durablemap._slots import SlotState
from durablemap._worker import run_chunk
from durablemap.executors._base import ChunkResult, MapSpec

__all__ = ["InlineExecutor"]


class InlineExecutor:
    """Runs each submitted chunk at once in this process; the coordinator keeps one in flight."""

    workers = 1
    threads = False  # items run one at a time in the calling thread (an async map: on an event loop)
    chunk_seconds = 0.05
    shares_store = False  # items run here: the coordinator commits in line
    slots = None

    def chunks_in_flight(self) -> int:
        """One: a chunk runs as it is submitted."""
        return 1

    def publish(self, spec: MapSpec) -> Any:
        """Nothing to ship: the spec is used as it is."""
        return spec

    def unpublish(self, ref: Any) -> None:
        """Nothing to forget."""

    def submit(self, ref: Any, indexes: Sequence[int], concurrency: int = 1) -> Future[ChunkResult]:
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

    def settle_break(self, futures: Sequence[Future[ChunkResult]]) -> None:
        """Never breaks."""

    def deaths(self, token: int) -> list[Death] | None:
        """No workers to die."""
        return []

    def names_culprit(self, error: BaseException) -> bool:
        """No chunk is ever lost."""
        return False

    def running(self, token: int) -> list[SlotState]:
        """Items run while submit() runs: none can be watched."""
        return []

    def kill_worker(self, pid: int) -> str:
        """There is no worker to kill."""
        return ""

    def restart(self) -> None:
        """Nothing to restart."""

    def stop_running(self) -> None:
        """Nothing runs in the background."""

    def worker_pids(self) -> list[int]:
        """No worker processes."""
        return []
