"""The coordinator's parts on their own, with no worker process: chunk sizing, the item board, the
committer, and the loop itself over a fake executor with a clock the test moves."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest

from durablemap._batch import BatchItem, BatchItemStatus, CompletionReason
from durablemap._board import ItemBoard
from durablemap._chunking import MAX_CHUNK, TAIL_SECONDS, ChunkSizer
from durablemap._clock import Clock
from durablemap._committer import Committer
from durablemap._completion import CompletionPolicy
from durablemap._context import DurableContext
from durablemap._coordinator import Coordinator, Prior
from durablemap._faults import Death
from durablemap._observe import MapInfo
from durablemap._records import item_key, op_key
from durablemap._slots import SlotState
from durablemap._state import ExecutionState
from durablemap._store._interface import MemoryRecords
from durablemap._worker import run_chunk
from durablemap.config import CompletionConfig
from durablemap.executors._base import ChunkResult, MapSpec

# -- chunk sizing ---------------------------------------------------------------------------------


def test_chunks_start_at_one_item_then_follow_the_measured_duration() -> None:
    sizer = ChunkSizer(workers=2, chunk_seconds=0.05)
    assert sizer.size(remaining=10_000) == 1
    sizer.measured(elapsed=0.01, items=1)  # 10 ms per item: 5 per chunk
    assert sizer.size(remaining=10_000) == 5
    sizer.measured(elapsed=0.001, items=10_000)  # 0.1 us per item: capped
    assert sizer.size(remaining=10**9) == MAX_CHUNK


def test_near_the_end_a_chunk_is_at_most_half_a_fair_share() -> None:
    sizer = ChunkSizer(workers=4, chunk_seconds=1.0)
    sizer.measured(elapsed=1.0, items=1000)  # 1 ms per item
    assert sizer.size(remaining=800) == 100  # 800 / (2 * 4)
    assert sizer.size(remaining=20) == int(TAIL_SECONDS / 0.001)  # but never under TAIL_SECONDS of work
    assert sizer.size(remaining=3) == 3


def test_the_tail_of_tiny_items_goes_in_few_chunks() -> None:
    sizer = ChunkSizer(workers=2, chunk_seconds=0.05)
    sizer.measured(elapsed=0.002, items=1000)  # 2 us per item: TAIL_SECONDS is 2,500 items
    sizes, remaining = [], 20_000
    while remaining:
        sizes.append(sizer.size(remaining))
        remaining -= sizes[-1]
    assert sizes == [5000, 3750, 2813, 2500, 2500, 2500, 937]


# -- the item board ------------------------------------------------------------------------------


def test_the_board_takes_new_items_in_order_and_skips_finished_ones() -> None:
    prior = {2: BatchItem(2, BatchItemStatus.SUCCEEDED, "two", None)}
    board = ItemBoard(6, prior, CompletionPolicy(CompletionConfig(), 6), None, None)
    first = board.take(5)
    assert list(first) == [0, 1]  # stops at the recorded item
    board.start(first)
    assert list(board.take(5)) == [3, 4, 5]
    board.unstart([1])
    assert board.in_flight == 1 and board.remaining() == 4
    assert board.finish_items([BatchItem(0, BatchItemStatus.FAILED, None, None)]) == (0, 1)
    assert board.running_among([0, 1, 3]) == []


def test_the_board_reports_items_still_running_as_started() -> None:
    board = ItemBoard(3, {}, CompletionPolicy(CompletionConfig(min_successful=1), 3), None, None)
    board.start(range(3))
    board.finish_items([BatchItem(1, BatchItemStatus.SUCCEEDED, 1, None)])
    assert board.reason == CompletionReason.MIN_SUCCESSFUL_REACHED
    outcome = board.outcome()
    assert outcome.started == [0, 2]
    assert outcome.items is not None
    assert [item.status for item in outcome.items.items()] == [BatchItemStatus.STARTED, BatchItemStatus.SUCCEEDED,
                                                        BatchItemStatus.STARTED]


def test_a_large_maps_board_keeps_statuses_not_items() -> None:
    # The statuses recorded by an earlier run as codes: item 1 SUCCEEDED, item 4 FAILED.
    done = bytearray(6)
    done[1], done[4] = 2, 3
    board = ItemBoard(6, {}, CompletionPolicy(CompletionConfig(tolerated_failure_count=1), 6), None, None, done=done)
    assert board.values is None and (board.succeeded, board.failed) == (1, 1)
    assert list(board.take(6)) == [0]
    board.start(range(1))
    board.start([2, 3, 5])
    chunk = ChunkResult(token=1, indexes=[2, 3], records=[], values=[4, None], errors={1: {"ErrorMessage": "x"}},
                        elapsed=0.1)
    assert board.finish_chunk(chunk) == (1, 1)
    assert board.reason == CompletionReason.FAILURE_TOLERANCE_EXCEEDED
    outcome = board.outcome()
    assert outcome.items is None and outcome.started == [0, 5]
    assert (outcome.succeeded, outcome.failed, outcome.total) == (2, 2, 6)


# -- the committer -------------------------------------------------------------------------------


def _result(indexes: Sequence[int], committed: bool = False) -> ChunkResult:
    return ChunkResult(1, indexes, [] if committed else [b"r%d" % i for i in indexes], list(indexes), {},
                       0.0, committed=committed)


def test_the_committer_writes_a_batch_in_one_call_and_skips_what_workers_committed() -> None:
    store = MemoryRecords()
    calls: list[int] = []
    key = op_key("e", (1,))
    committer = Committer(store, key, threaded=False, before_commit=calls.append)
    committer.write([(range(2), _result(range(2))), (range(2, 4), _result(range(2, 4), committed=True)),
                     ([7], _result([7]))])
    assert calls == [3]
    assert store.children_columns(key) == ([0, 1, 7], [b"r0", b"r1", b"r7"])


def test_a_threaded_committer_keeps_one_commit_in_flight() -> None:
    store = MemoryRecords()
    key = op_key("e", (1,))
    committer = Committer(store, key, threaded=True)
    committer.add([(range(2), _result(range(2)))])
    committer.add([(range(2, 3), _result(range(2, 3)))])  # waits for the first commit
    assert len(committer.in_flight) == 1
    recorded = []
    while committer.in_flight:
        recorded.extend(committer.finished(next(iter(committer.in_flight))))
    assert [list(indexes) for indexes, _ in recorded] == [[0, 1], [2]]
    committer.close()
    assert store.children_columns(key)[0] == [0, 1, 2]


# -- the loop, over a fake executor ----------------------------------------------------------------


class FakeClock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeExecutor:
    """Runs chunks in line, or holds them (``hold``) so the test decides how they end."""

    workers = 2
    chunk_seconds = 0.05
    shares_store = False
    slots = None
    threads = False

    def __init__(self) -> None:
        self.submits = 0
        self.broken_submits = 0
        self.restarts = 0
        self.held: list[tuple[Future[ChunkResult], Sequence[int]]] = []
        self.hold = False
        self.killed: list[int] = []
        self.running_now: list[SlotState] = []

    def chunks_in_flight(self) -> int:
        return 2

    def publish(self, spec: MapSpec) -> Any:
        return spec

    def unpublish(self, ref: Any) -> None:
        pass

    def submit(self, ref: Any, indexes: Sequence[int], concurrency: int = 1) -> Future[ChunkResult]:
        self.submits += 1
        if self.broken_submits:
            self.broken_submits -= 1
            raise BrokenProcessPool("the pool broke under submit")
        future: Future[ChunkResult] = Future()
        if self.hold:
            self.held.append((future, indexes))
        else:
            future.set_result(run_chunk(ref, indexes))
        return future

    def is_broken(self, error: BaseException) -> bool:
        return isinstance(error, BrokenProcessPool)

    def settle_break(self, futures: Sequence[Future[ChunkResult]]) -> None:
        pass

    def deaths(self, token: int) -> list[Death] | None:
        return []

    def names_culprit(self, error: BaseException) -> bool:
        return False

    def running(self, token: int) -> list[SlotState]:
        return self.running_now

    def kill_worker(self, pid: int) -> str:
        self.killed.append(pid)
        for future, _indexes in self.held:
            if not future.done():
                future.set_exception(BrokenProcessPool("killed"))
        return "the stack"

    def restart(self) -> None:
        self.restarts += 1
        self.hold = False

    def stop_running(self) -> None:
        pass

    def worker_pids(self) -> list[int]:
        return []


def double(ctx: Any, item: int, index: int, items: Any) -> int:
    return item * 2


def _coordinator(tmp_path: Path, executor: FakeExecutor, n: int, **options: Any) -> Coordinator:
    state = ExecutionState(str(tmp_path / "s"), "e", Clock())
    spec = MapSpec(1, state, (1,), double, list(range(n)), None, False, "MapIteration", None,
                   key_prefix=op_key("e", (1,)), context=DurableContext)
    return Coordinator(state=state, executor=executor, spec=spec, ref=spec,
                       policy=CompletionPolicy(CompletionConfig(), n), predicate=None,
                       max_concurrency=None, item_timeout=options.get("item_timeout"), max_crashes=3, names=None,
                       prior=Prior(), info=MapInfo("e", "1", "m", n, 1), observers=None,
                       clock=options.get("clock", FakeClock()))


def test_a_pool_broken_under_submit_is_a_break_not_the_end_of_the_job(tmp_path: Path) -> None:
    executor = FakeExecutor()
    executor.broken_submits = 2
    outcome = _coordinator(tmp_path, executor, 10).run()
    assert outcome.items is not None
    assert [item.result for item in outcome.items.items()] == [i * 2 for i in range(10)]
    assert executor.restarts == 2


def test_an_item_past_its_timeout_is_killed_when_the_clock_says_so(tmp_path: Path) -> None:
    executor = FakeExecutor()
    executor.hold = True
    clock = FakeClock()
    coordinator = _coordinator(tmp_path, executor, 1, item_timeout=30.0, clock=clock)
    executor.running_now = [SlotState(pid=4242, token=1, index=0, started=clock.now, running=True,
                                      peak_rss=0, growth=0)]
    coordinator._dispatch()
    coordinator._watch()
    assert executor.killed == []  # no time has passed
    clock.now += 31  # no sleep: the clock jumps
    coordinator._watch()
    assert executor.killed == [4242]
    coordinator._collect(0.1)
    outcome = coordinator.run()
    assert outcome.items is not None
    (item,) = outcome.items.items()
    assert item.status == BatchItemStatus.FAILED
    assert item.error is not None and item.error.type == "durablemap.ItemTimeoutError"
    assert item.error.data == "the stack"
    with pytest.raises(KeyError):
        coordinator.lost.timed_out[0]
    assert coordinator.store.get(item_key(op_key("e", (1,)), 0)) is not None
