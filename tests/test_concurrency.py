"""Items in flight follow MapConfig.max_concurrency, not the number of worker processes (issue 16).

Measured from inside the items with a counter in a file under an exclusive lock (no timings): how
many items are inside their waiting section at once, at most. Each item waits there until as many
items as the bound are inside (or 10 s pass: then the peak falls short and the test fails), so
reaching the bound does not depend on how the machine's load staggers the workers. Crashes and kills
use real processes.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from durablemap import BatchResult, DurableContext, ValidationError, durable_execution
from durablemap.config import MapConfig
from durablemap.store import StoreReader
from tests._kill_helpers import kill_group, log_lines, start, wait_for

HERE = Path(__file__).parent


# -- a barrier of items in their waiting section, shared by every worker ----------------------------
# The file holds "inside peak wave entered": items inside now, the most ever inside, the wave number
# and how many items entered. An item that makes ``bound`` items inside (or is the map's last) starts
# a new wave: every item that entered before it leaves. So a map keeps ``bound`` items in flight only
# if the library refills each room an item frees. The deadline only keeps a test of a library that
# does not from hanging (the peak assertions then fail or the test is slow; nothing waits on it here).
def _bump(path: str, delta: int) -> int:
    """Count an item in (+1) or out (-1); returns the wave it entered in (the wave before its own
    entry, so the item that completes a wave sees it released too)."""
    total, bound = map(int, Path(f"{path}.bound").read_text().split())
    with open(path, "r+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        inside, peak, wave, entered = map(int, fh.read().split())
        entered_wave = wave
        inside += delta
        if delta > 0:
            entered += 1
            if inside >= bound or entered == total:
                wave += 1
        fh.seek(0)
        fh.truncate()
        fh.write(f"{inside} {max(peak, inside)} {wave} {entered}")
    return entered_wave


def _counter(tmp_path: Path, bound: int, total: int) -> str:
    path = tmp_path / "inside"
    path.write_text("0 0 0 0")
    Path(f"{path}.bound").write_text(f"{total} {bound}")
    return str(path)


def _peak(path: str) -> int:
    return int(Path(path).read_text().split()[1])


def _released(counter: str, wave: int, deadline: float) -> bool:
    """Whether a wave started after ``wave`` (or time is up)."""
    with open(counter) as fh:
        fcntl.flock(fh, fcntl.LOCK_SH)
        now = int(fh.read().split()[2])
    return now > wave or time.monotonic() > deadline


def sleeping(ctx: DurableContext, counter: str, index: int, inputs: Any) -> int:
    wave = _bump(counter, 1)
    deadline = time.monotonic() + 2
    try:
        while not _released(counter, wave, deadline):
            time.sleep(0.01)  # polling the barrier, not ordering anything by time
    finally:
        _bump(counter, -1)
    return index * 2


async def awaiting(ctx: DurableContext, counter: str, index: int, inputs: Any) -> int:
    wave = _bump(counter, 1)
    deadline = time.monotonic() + 2
    try:
        while not _released(counter, wave, deadline):
            await asyncio.sleep(0.01)
    finally:
        _bump(counter, -1)
    return index * 2


@durable_execution
def bounded(event: dict[str, Any], context: DurableContext) -> BatchResult[int]:
    func = awaiting if event["async"] else sleeping
    return context.map([event["counter"]] * event["n"], func, config=MapConfig(max_concurrency=event["mc"]))


@pytest.mark.parametrize("is_async", [False, True], ids=["threads", "async"])
def test_items_in_flight_reach_max_concurrency_with_two_workers(tmp_path: Path, is_async: bool) -> None:
    counter = _counter(tmp_path, 50, 100)
    result = bounded.run({"counter": counter, "n": 100, "mc": 50, "async": is_async},
                         store=tmp_path / "s", workers=2, progress=False)
    assert result.get_results() == [2 * i for i in range(100)]
    assert _peak(counter) == 50  # never more, and the two workers did reach it


def test_a_small_max_concurrency_is_never_exceeded(tmp_path: Path) -> None:
    counter = _counter(tmp_path, 3, 30)
    result = bounded.run({"counter": counter, "n": 30, "mc": 3, "async": False},
                         store=tmp_path / "s", workers=2, progress=False)
    assert result.success_count == 30
    assert _peak(counter) == 3


@durable_execution
def unbounded(event: dict[str, Any], context: DurableContext) -> BatchResult[int]:
    return context.map([event["counter"]] * event["n"], sleeping)


def test_without_max_concurrency_the_run_concurrency_bounds_waiting_items(tmp_path: Path) -> None:
    counter = _counter(tmp_path, 12, 60)
    result = unbounded.run({"counter": counter, "n": 60}, store=tmp_path / "s", workers=2, progress=False,
                           concurrency=12)
    assert result.success_count == 60
    assert _peak(counter) == 12
    for bad in (0, -3, 2.5, True, "8"):
        with pytest.raises(ValidationError, match="concurrency"):
            unbounded.run({"counter": counter, "n": 1}, store=tmp_path / "s", concurrency=bad)


# -- a worker dies with many items in flight ---------------------------------------------------
def crashing(ctx: DurableContext, item: dict[str, str], index: int, inputs: Any) -> int:
    with open(item["log"], "a") as fh:
        fh.write(f"{index}\n")
    if index == 37:
        # Which items are recorded at the moment of the crash: none of them may run again.
        time.sleep(0.05)
        with StoreReader.open(item["store"]) as reader:
            recorded = [i.index for i in reader.items(item["execution"], "1") if i.status != "STARTED"]
        runs_so_far = len(log_lines(Path(item["log"])))
        with open(item["recorded"], "a") as fh:  # one line per crash: runs logged so far, then recorded items
            fh.write(" ".join(map(str, [runs_so_far, *recorded])) + "\n")
        if item["how"] == "sigkill":  # no evidence left: every item in flight is a suspect
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(3)
    time.sleep(0.1)
    return index


@durable_execution
def crash_map(event: dict[str, Any], context: DurableContext) -> BatchResult[int]:
    return context.map([event] * 80, crashing, config=MapConfig(max_concurrency=20))


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_a_worker_dying_with_many_items_in_flight_fails_only_its_culprit(tmp_path: Path, how: str) -> None:
    store = tmp_path / "s"
    event = {"log": str(tmp_path / "runs"), "store": str(store), "execution": "crash",
             "recorded": str(tmp_path / "recorded"), "how": how}
    result = crash_map.run(event, store=store, execution_id="crash", workers=2, progress=False)
    assert [item.index for item in result.failed()] == [37]
    assert result.failed()[0].error.type == "durablemap.WorkerCrashedError"
    assert result.get_results() == [i for i in range(80) if i != 37]
    runs = log_lines(Path(event["log"]))
    # os._exit names its item: it died 3 times. A SIGKILL names none: the first death makes every
    # item in flight a suspect, run alone, and only then are the poison item's deaths counted.
    deaths = runs.count(37)
    assert deaths == 3 if how == "exit" else 3 <= deaths <= 4
    crashes = [list(map(int, line.split())) for line in Path(event["recorded"]).read_text().splitlines()]
    assert len(crashes) == deaths and len(crashes[0]) > 1, "the first crash came after some items were recorded"
    for runs_before, *recorded in crashes:  # recorded before a crash: never run after it
        assert not set(runs[runs_before:]) & set(recorded)
    assert max(runs.count(index) for index in range(80) if index != 37) >= 2  # those in flight ran again


# -- an async map with steps, SIGKILLed and run again ------------------------------------------
ASYNC_JOB = HERE / "async_steps_job.py"


def test_an_async_map_with_steps_resumes_after_sigkill_without_rerunning_recorded_steps(tmp_path: Path) -> None:
    store, log = tmp_path / "s", tmp_path / "steps"
    env = {"PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    hold = Path(f"{log}.hold")
    hold.touch()
    job = start(ASYNC_JOB, str(store), str(log), env=env)
    try:
        wait_for(lambda: len(log_lines(log)) >= 45, what="steps recorded before the kill")
    finally:
        kill_group(job)
    with StoreReader.open(store) as reader:
        recorded = {op.id for op in reader.operations("async-steps")
                    if op.kind == "STEP" and op.status == "SUCCEEDED"}
    assert recorded
    ran_before = log_lines(log)
    hold.unlink()
    again = start(ASYNC_JOB, str(store), str(log), env=env)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err.decode()
    assert out.decode().split() == [str(sum(3 * i + 1 for i in range(40)))]
    runs = log_lines(log)[len(ran_before):]
    # A step's log line is 1000 * (index + 1) + step number: none recorded before the kill ran again.
    again_ids = {f"1/{code // 1000 - 1}/{code % 1000}" for code in runs}
    assert not again_ids & recorded
    assert {f"1/{i}/{s}" for i in range(40) for s in (1, 2)} <= recorded | again_ids


@pytest.mark.skipif(sys.platform != "linux", reason="slot rows are read from files on Linux")
def test_the_slot_names_every_item_in_flight(tmp_path: Path) -> None:
    from durablemap._slots import Slots, SlotWriter
    writer = SlotWriter(str(tmp_path))
    writer.begin_many(7)
    rows = [writer.take_row(index, 1000 + index)[0] for index in (4, 9, 11)]
    writer.free_row(rows[1])
    running = Slots(str(tmp_path)).running(7)
    assert sorted((s.index, s.thread) for s in running) == [(4, 1004), (11, 1011)]
    writer.end_many()
    assert Slots(str(tmp_path)).running(7) == []


# -- the pure parts: no process, the clocks injected -----------------------------------------------
def test_the_throttle_opens_up_for_waiting_items_and_stays_at_one_for_cpu_bound_ones() -> None:
    from durablemap._concurrency import Throttle
    waiting = Throttle(limit=100, start=1, now=0.0, cpu=0.0)
    now = cpu = 0.0
    for _ in range(4):  # every slot busy, the CPU nearly idle: more at once, up to the limit
        now += 0.01
        cpu += 0.0001
        waiting.sample(now, cpu, running=waiting.allowed)
    assert waiting.allowed == waiting.peak == 100
    busy = Throttle(limit=100, start=1, now=0.0, cpu=0.0)
    for step in range(1, 20):  # a core busy all along: one at a time
        busy.sample(step * 0.01, step * 0.01, running=1)
    assert busy.allowed == busy.peak == 1
    crowded = Throttle(limit=100, start=40, now=0.0, cpu=0.0)
    crowded.sample(0.01, 0.01, running=40)  # the core is the limit: fewer
    assert crowded.allowed < 40
    loaded = Throttle(limit=100, start=1, now=0.0, cpu=0.0)
    loaded.sample(0.01, 0.003, running=1, queued=0.007)  # a CPU-bound item waiting for a busy core
    assert loaded.allowed == 1
    idle_slots = Throttle(limit=100, start=4, now=0.0, cpu=0.0)
    idle_slots.sample(0.01, 0.0, running=2)  # not every slot in use: a sample says nothing of more
    assert idle_slots.allowed == 4
    # The sampling thread itself was held up for 30 ms (8 workers on 2 cores): the item's thread could
    # not run either, for the CPU or for the interpreter lock, though neither shows as CPU queued for.
    # Such a sample says nothing of items waiting; the next one on time does.
    stalled = Throttle(limit=100, start=1, now=0.0, cpu=0.0)
    stalled.sample(0.03, 0.0026, running=1)
    assert stalled.allowed == 1
    stalled.sample(0.035, 0.0026, running=1)
    assert stalled.allowed > 1


def test_the_plan_gives_each_worker_its_share_until_items_prove_cpu_bound() -> None:
    from durablemap._concurrency import DEFAULT_CONCURRENCY, ConcurrencyPlan
    plan = ConcurrencyPlan(workers=2, max_concurrency=50, bound=None)
    assert plan.in_flight_limit(1000) == 50 and plan.chunks_limit(4) == 2
    assert plan.next_chunk(timed_size=1, remaining=1000, room=50, chunks=0) == (25, 25)
    assert plan.next_chunk(timed_size=1, remaining=1000, room=25, chunks=1) == (25, 25)
    assert plan.next_chunk(timed_size=1, remaining=3, room=50, chunks=0) == (2, 2)
    assert plan.chunks_limit(4, early=True) == 3  # counted as each finishes: the room taken at once
    plan.measured(items=25, elapsed=0.2, cpu=0.001, peak=25)  # ran many at once: waiting-heavy
    assert plan.waiting is True
    cpu = ConcurrencyPlan(workers=2, max_concurrency=None, bound=None)
    assert cpu.in_flight_limit(10_000) == DEFAULT_CONCURRENCY
    cpu.measured(items=100, elapsed=0.5, cpu=0.49, peak=1)  # one at a time, the CPU busy
    assert cpu.waiting is False
    assert cpu.in_flight_limit(10_000) == 10_000 and cpu.chunks_limit(4) == 4
    assert cpu.next_chunk(timed_size=300, remaining=9_000, room=9_000, chunks=1) == (300, 1)
    tiny = ConcurrencyPlan(workers=2, max_concurrency=None, bound=8)
    tiny.measured(items=128, elapsed=0.0004, cpu=0.0004, peak=1)  # too short to tell: the fast path
    assert tiny.waiting is False
    assert ConcurrencyPlan(2, None, 8).in_flight_limit(100) == 8  # the run's concurrency= bound
    assert ConcurrencyPlan(2, None, None, threads=False).next_chunk(10, 100, 100, 1) == (10, 1)


def test_a_chunk_that_could_not_run_two_at_once_says_nothing_about_the_items() -> None:
    # max_concurrency=3 on 2 workers gives a one-item chunk: it ran one at a time by construction.
    from durablemap._concurrency import ConcurrencyPlan
    plan = ConcurrencyPlan(workers=2, max_concurrency=3, bound=None)
    plan.measured(items=1, elapsed=0.3, cpu=0.001, peak=0)
    assert plan.waiting is None
    plan.measured(items=2, elapsed=0.3, cpu=0.001, peak=2)
    assert plan.waiting is True


def test_chunks_of_waiting_items_hold_more_items_than_run_at_once_when_only_all_done_ends_the_map() -> None:
    from durablemap._concurrency import FLOW, ConcurrencyPlan
    plan = ConcurrencyPlan(workers=2, max_concurrency=200, bound=None)
    assert not plan.flows(bulk=True)  # the first chunks, one per worker, find out whether items wait
    plan.measured(items=100, elapsed=0.12, cpu=0.01, peak=100)
    assert plan.flows(bulk=True) and not plan.flows(bulk=False)  # a criterion counts items in flight
    # Each chunk holds its worker's part of the items left, and runs as many at once as its places.
    assert plan.next_chunk(timed_size=1, remaining=2000, room=200, chunks=0, flow=True) == (1000, 100)
    assert plan.next_chunk(timed_size=1, remaining=1000, room=100, chunks=1, flow=True) == (500, 100)
    assert plan.next_chunk(timed_size=1, remaining=10**6, room=200, chunks=0, flow=True) == (100 * FLOW, 100)
    assert plan.next_chunk(timed_size=1, remaining=30, room=200, chunks=0, flow=True) == (15, 15)
    assert plan.next_chunk(timed_size=1, remaining=30, room=1, chunks=1, flow=True) == (1, 1)  # no queue
    cpu = ConcurrencyPlan(workers=2, max_concurrency=200, bound=None)
    cpu.measured(items=100, elapsed=0.5, cpu=0.49, peak=1)  # proved CPU-bound: chunks sized by time
    assert not cpu.flows(bulk=True)


@durable_execution
def flowing(event: dict[str, Any], context: DurableContext) -> BatchResult[int]:
    return context.map([event["counter"]] * event["n"], sleeping, config=MapConfig(max_concurrency=event["mc"]))


def test_a_flowing_map_keeps_max_concurrency_in_flight_and_never_more(tmp_path: Path) -> None:
    # 240 items, 8 at a time on 2 workers: chunks hold many rounds; the barrier lets a wave go only
    # when 8 items are inside, so the map finishes only if each freed place is refilled.
    counter = _counter(tmp_path, 8, 240)
    result = flowing.run({"counter": counter, "n": 240, "mc": 8}, store=tmp_path / "s", workers=2, progress=False)
    assert result.get_results() == [2 * i for i in range(240)]
    assert _peak(counter) == 8
