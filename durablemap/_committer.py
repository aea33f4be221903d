"""Committing: the item records of chunk results go to the store in group commits (one durable
transaction per batch of results), on a thread of their own when items run elsewhere.

    results of chunks ──add──> to_commit ──(one commit in flight at a time)──> store.put_columns
                                   ^                                                │
                                   └── what arrives during a commit goes into the next one

An fsync takes milliseconds, in which the workers should get more work: so at most one commit is
in flight, and everything that arrives meanwhile goes into the next one. Results whose records a
worker committed itself (``ChunkResult.committed``) are only counted, never written again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import chain

from durablemap._records import item_keys
from durablemap._store._interface import RecordStore
from durablemap.executors._base import ChunkResult

__all__ = ["Committer", "Results"]

Results = list[tuple[Sequence[int], ChunkResult]]


class Committer:
    """Group commits of one map's item records."""

    def __init__(self, store: RecordStore, map_key: bytes, *, threaded: bool, enabled: bool = True,
                 before_commit: Callable[[int], None] | None = None) -> None:
        self.store, self.map_key, self.enabled = store, map_key, enabled
        self.before_commit = before_commit  # a test's crash point: called with the batch's item count
        self.thread = ThreadPoolExecutor(1, "durablemap-commit") if threaded else None
        self.in_flight: dict[Future[None], Results] = {}
        self.waiting: Results = []

    @property
    def threaded(self) -> bool:
        """Whether commits run on the committer thread (else in line, by the caller)."""
        return self.thread is not None

    def write(self, results: Results) -> None:
        """Record the items of a batch of chunk results in one durable transaction."""
        if not self.enabled:
            return
        results = [r for r in results if not r[1].committed]
        if not results:
            return
        if len(results) == 1:
            records = results[0][1].records
            keys = item_keys(self.map_key, results[0][1].indexes)
        else:
            records = [record for _, result in results for record in result.records]
            keys = item_keys(self.map_key, chain.from_iterable(r.indexes for _, r in results))
        if keys:
            if self.before_commit is not None:
                self.before_commit(len(keys))
            self.store.put_columns(keys, records)

    def add(self, results: Results) -> None:
        """Queue results for the committer thread; start a commit if none is in flight."""
        self.waiting.extend(results)
        if self.waiting and not self.in_flight:
            assert self.thread is not None
            batch, self.waiting = self.waiting, []
            self.in_flight[self.thread.submit(self.write, batch)] = batch

    def finished(self, future: Future[None]) -> Results:
        """The results a finished commit recorded; a failed write raises here. Starts the next
        commit when results are waiting."""
        batch = self.in_flight.pop(future)
        future.result()
        self.add([])
        return batch

    def close(self) -> None:
        """Let a commit in flight land (it is durable before the map record is written); drop the
        results not yet handed to it (those items are reported STARTED)."""
        self.waiting.clear()
        if self.thread is not None:
            self.thread.shutdown(wait=True)
        self.in_flight.clear()
