"""Issue 14's scenarios 1-3 with real worker processes: a dying worker takes down only its own item.

1. a poison item beside slow ones on 4 workers: only the poison item is FAILED;
2. idle workers killed 8 times: no item is FAILED (none was running on a worker that died of it);
3. many poison items among tiny ones on 2 workers: the job never dies of a broken pool (loky's
   TerminatedWorkerError raised by submit() while the pool breaks is a break like any other).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil

from durablemap import BatchItemStatus, BatchResult, DurableContext, durable_execution
from durablemap.config import MapConfig


def poison_beside_slow(ctx: DurableContext, item: int, index: int, items: Any) -> int:
    if index == 0:
        time.sleep(0.2)
        os._exit(1)
    time.sleep(0.5)
    return item


@durable_execution
def poison_job(event: Any, context: DurableContext) -> BatchResult[int]:
    return context.map(list(range(12)), poison_beside_slow, name="poison")


def test_a_poison_item_beside_slow_ones_fails_alone(tmp_path: Path) -> None:
    result = poison_job.run(None, store=tmp_path / "s", workers=4, progress=False)
    assert [item.index for item in result.failed()] == [0]
    assert [item.index for item in result.succeeded()] == list(range(1, 12))
    failed = result.failed()[0]
    assert failed.error is not None and "3 times" in (failed.error.message or "")


def _loky_siblings() -> list[psutil.Process]:
    me = os.getpid()
    return [p for p in psutil.Process(os.getppid()).children()
            if p.pid != me and "popen_loky" in " ".join(p.cmdline())]


def kill_an_idle_worker(ctx: DurableContext, item: dict[str, Any], index: int, items: Any) -> int:
    marker = Path(item["dir"], f"killed-{index}")
    if index < 8 and not marker.exists():
        marker.touch()
        for sibling in _loky_siblings():  # max_concurrency=1: the other worker is idle
            sibling.send_signal(signal.SIGKILL)
        time.sleep(2)  # the pool breaks meanwhile, and takes this worker with it
    return index


@durable_execution
def idle_kill_job(event: dict[str, Any], context: DurableContext) -> BatchResult[int]:
    return context.map([event] * 12, kill_an_idle_worker, name="idle",
                       config=MapConfig(max_concurrency=1))


def test_idle_workers_killed_fail_no_item(tmp_path: Path) -> None:
    result = idle_kill_job.run({"dir": str(tmp_path)}, store=tmp_path / "s", workers=2, progress=False)
    assert [item.status for item in result.all] == [BatchItemStatus.SUCCEEDED] * 12
    assert len(list(tmp_path.glob("killed-*"))) == 8


def every_200th_exits(ctx: DurableContext, item: int, index: int, items: Any) -> int:
    if index % 200 == 199:
        os._exit(1)
    return item * item


@durable_execution
def storm_job(event: Any, context: DurableContext) -> BatchResult[int]:
    return context.map(list(range(2000)), every_200th_exits, name="storm",
                       config=MapConfig(max_worker_crashes=1))


def test_many_poison_items_never_kill_the_job(tmp_path: Path) -> None:
    result = storm_job.run(None, store=tmp_path / "s", workers=2, progress=False)
    assert [item.index for item in result.failed()] == list(range(199, 2000, 200))
    assert len(result.succeeded()) == 1990
    assert all(item.result == item.index ** 2 for item in result.succeeded())
