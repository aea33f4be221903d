"""Issue 14's scenarios 1-3 with real worker processes: a dying worker takes down only its own item.

1. a poison item beside slow ones on 4 workers: only the poison item is FAILED;
2. idle workers killed 8 times: no item is FAILED (none was running on a worker that died of it);
3. many poison items among tiny ones on 2 workers: the job never dies of a broken pool (loky's
   TerminatedWorkerError raised by submit() while the pool breaks is a break like any other).

A table of small bad callables (loky's tests/_executor_mixin.py and test_reusable_executor.py are the
model), each run as one item of a map beside healthy ones through one parametrised test: whatever the
item does (os._exit, SIGKILL of itself, a segfault, SystemExit, KeyboardInterrupt), only that item is
FAILED, with an error naming what happened, a re-run replays the failure, and no child process is
left afterwards.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from loky import get_reusable_executor

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


# -- the table of bad callables ------------------------------------------------------------------
def os_exit() -> None:
    os._exit(3)


def sigkill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def segfault() -> None:
    ctypes.string_at(0)


def system_exit() -> None:
    sys.exit(3)


def keyboard_interrupt() -> None:
    raise KeyboardInterrupt


# name -> (callable, the recorded error type, words of its message, whether it kills the process)
BAD: dict[str, tuple[Callable[[], None], str, str, bool]] = {
    "os._exit": (os_exit, "durablemap.WorkerCrashedError", "died (exit code", True),
    "SIGKILL": (sigkill_self, "durablemap.WorkerCrashedError", "died (", True),
    "segfault": (segfault, "durablemap.WorkerCrashedError", "died (", True),
    "SystemExit": (system_exit, "SystemExit", "raised SystemExit(3)", False),
    "KeyboardInterrupt": (keyboard_interrupt, "KeyboardInterrupt", "raised KeyboardInterrupt()", False),
}

CASES = [(name, "loky") for name in BAD] + [(name, "inline") for name, bad in BAD.items() if not bad[3]]


def bad_on_five(ctx: DurableContext, item: dict[str, str], index: int, items: Any) -> int:
    if index == 5:
        Path(item["dir"], f"attempt-{time.monotonic_ns()}").touch()
        BAD[item["how"]][0]()
    time.sleep(0.01)
    return index * 2


@durable_execution
def matrix(event: dict[str, str], context: DurableContext) -> BatchResult[int]:
    return context.map([event] * 12, bad_on_five, name="matrix", config=MapConfig(max_worker_crashes=3))


def _children() -> list[psutil.Process]:
    """This process's live descendants, leaving out the resource trackers of loky and
    multiprocessing: helpers that live as long as this process, whatever the pools do."""
    alive = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(child.cmdline()):
                alive.append(child)
        except psutil.NoSuchProcess:
            continue
    return alive


@pytest.fixture
def no_children_left() -> Iterator[None]:
    """After the test, the pool's workers are stopped and no child process of this one is left."""
    yield
    get_reusable_executor().shutdown(wait=True, kill_workers=True)
    _, alive = psutil.wait_procs(_children(), timeout=10)
    assert not alive, f"child processes left: {[p.pid for p in alive]}"


@pytest.mark.parametrize(("how", "executor"), CASES)
def test_a_bad_item_fails_alone(tmp_path: Path, how: str, executor: str, no_children_left: None) -> None:
    _, error_type, words, kills = BAD[how]
    event = {"dir": str(tmp_path), "how": how}
    result = matrix.run(event, store=tmp_path / "s", executor=executor, workers=2, progress=False)
    assert result.get_results() == [i * 2 for i in range(12) if i != 5]
    (failed,) = result.failed()
    assert failed.index == 5 and failed.error is not None
    assert failed.error.type == error_type, failed.error
    assert words in (failed.error.message or ""), failed.error.message
    attempts = len(list(tmp_path.glob("attempt-*")))
    assert attempts == (3 if kills else 1)  # a crash is retried up to max_worker_crashes; an exit is not
    again = matrix.run(event, store=tmp_path / "s", executor=executor, workers=2, progress=False)
    assert again.to_dict() == result.to_dict()
    assert len(list(tmp_path.glob("attempt-*"))) == attempts  # replayed, not run again
