"""Memory: the total budget holds dispatch back, a leaking worker is recycled, a memory bomb is
killed at the hard limit, and each item's peak RSS is recorded (issue 8).

Figures come from the records, through the testing runner: the map record's ``peak_total_rss``
(the largest total the monitor sampled) and ``memory_wait_seconds``, each item's ``peak_rss``.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psutil
import pytest

from durablemap import BatchItemStatus, DurableContext, ValidationError, durable_execution
from durablemap._slots import Slots
from durablemap.config import MapConfig
from durablemap.executors._loky import _process_slot_dir
from durablemap.testing import DurableTestRunner, InvocationStatus

MB = 2**20
ITEM = 200 * MB
_leaked: list[bytearray] = []


def touched(size: int) -> bytearray:
    block = bytearray(size)
    for offset in range(0, size, 4096):
        block[offset] = 1
    return block


def tiny(ctx: DurableContext, item: int, index: int, items: Any) -> int:
    return item


def heavy(ctx: DurableContext, item: int, index: int, items: Any) -> int:
    block = touched(ITEM)
    threading.Event().wait(0.3)  # hold the memory a while, as a real item would
    del block
    return os.getpid()


def leaky(ctx: DurableContext, item: int, index: int, items: Any) -> int:
    if item == 1:
        _leaked.append(touched(180 * MB))  # stays in this worker after the item
    threading.Event().wait(0.05)
    return os.getpid()


def bomb(ctx: DurableContext, item: int, index: int, items: Any) -> int:
    if item == 2:
        blocks = []
        while len(blocks) < 300:  # 3 GB: far past the hard limit, should never get here
            blocks.append(touched(10 * MB))
        raise RuntimeError("the memory bomb was not killed at the hard limit")
    threading.Event().wait(0.05)
    return os.getpid()


@durable_execution
def run_map(event: dict[str, Any], context: DurableContext) -> list[Any]:
    func = {"tiny": tiny, "heavy": heavy, "leaky": leaky, "bomb": bomb}[event["func"]]
    config = MapConfig(memory_budget=event.get("budget"), worker_memory_limit=event.get("limit"))
    result = context.map(list(range(event["n"])), func, name="work", config=config)
    return [item.status.value for item in result.all]


def _run(runner: DurableTestRunner, **event: Any) -> Any:
    result = runner.run(input=event, timeout=60)
    assert result.status is InvocationStatus.SUCCEEDED, result.error
    return result.get_map("work")


def test_total_budget_holds_dispatch_back_and_records_peaks() -> None:
    with DurableTestRunner(run_map, workers=2) as runner:
        _run(runner, func="tiny", n=4)  # start the workers
        baseline = _run(runner, func="tiny", n=4).meta["peak_total_rss"]
        budget = baseline + 300 * MB
        work = _run(runner, func="heavy", n=6, budget=budget)
    assert [item.status for item in work.result.all] == [BatchItemStatus.SUCCEEDED] * 6
    meta = work.meta
    assert meta["peak_total_rss"] >= baseline + ITEM  # the monitor saw the items' memory
    assert meta["peak_total_rss"] <= budget + ITEM  # and never more than one item over the budget
    assert meta["memory_wait_seconds"] > 0  # the budget held dispatch back: two items never ran at once
    for item in work.children:
        assert item.meta["peak_rss"] >= ITEM


def test_leaking_worker_is_recycled_and_the_map_finishes() -> None:
    with DurableTestRunner(run_map, workers=2) as runner:
        work = _run(runner, func="leaky", n=12, limit=200 * MB)
        pids = work.result.get_results()
        leaker = pids[1]
        assert [item.status for item in work.result.all] == [BatchItemStatus.SUCCEEDED] * 12
        assert work.children[1].meta["peak_rss"] >= 180 * MB
        deadline = time.monotonic() + 15
        while _alive(leaker) and time.monotonic() < deadline:
            threading.Event().wait(0.05)
        assert not _alive(leaker), "the worker over worker_memory_limit was not retired"
        assert leaker not in pids[2:]  # retired right after the leaking item (its first task)
        # A fresh worker takes its place: loky starts it once work is pending (whether it got any of
        # this map's items depends on how fast it started, so that is not asserted); after the next
        # map's first chunk the pool is back to two live workers.
        _run(runner, func="tiny", n=4)
        slots = Slots(_process_slot_dir())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(slots.live_pids()) < 2:
            threading.Event().wait(0.05)
        assert len(live := slots.live_pids()) == 2 and leaker not in live, live


def test_memory_bomb_is_killed_at_the_hard_limit_and_fails_its_item() -> None:
    with DurableTestRunner(run_map, workers=2) as runner:
        work = _run(runner, func="bomb", n=6, limit=150 * MB)
    statuses = [item.status for item in work.result.all]
    assert statuses == [BatchItemStatus.SUCCEEDED] * 2 + [BatchItemStatus.FAILED] + [BatchItemStatus.SUCCEEDED] * 3
    error = work.result.all[2].error
    assert error is not None and error.type == "durablemap.WorkerCrashedError", error
    assert "item 2" in (error.message or "")


def test_a_budget_that_usage_never_falls_under_fails_the_map_clearly() -> None:
    with DurableTestRunner(run_map, workers=2) as runner:
        result = runner.run(input={"func": "tiny", "n": 3, "budget": 1 * MB}, timeout=60)
    assert result.status is InvocationStatus.FAILED
    assert result.error is not None
    assert "memory_budget=1 MB" in (result.error.message or "")
    assert "no item running" in (result.error.message or "")


def test_limits_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DURABLEMAP_MEMORY_BUDGET", "nonsense")
    with DurableTestRunner(run_map, workers=2) as runner:
        result = runner.run(input={"func": "tiny", "n": 2}, timeout=60)
    assert result.status is InvocationStatus.FAILED
    assert result.error is not None and "DURABLEMAP_MEMORY_BUDGET" in (result.error.message or "")
    assert result.error.type == f"durablemap.{ValidationError.__name__}"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
