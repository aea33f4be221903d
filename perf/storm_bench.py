"""A worker-killing storm: does a map whose workers are SIGKILLed at random fail any innocent item?

Usage::

    python perf/storm_bench.py [--items 20000] [--workers 4] [--every 0.3] [--for 10] [--json PATH]

It runs the same map twice on fresh stores: ``--items`` items of about 1 ms each (``time.sleep``) on
``--workers`` loky workers,

1. undisturbed, for the baseline time;
2. while a thread of the coordinator process SIGKILLs one random live worker every ``--every``
   seconds for ``--for`` seconds (the OOM killer or an operator would).

Before each kill the thread reads the killed worker's slot (the item it was running, if any), so the
report can tell the culprits (items running on a worker when it was killed) from the innocent.
No item here is poison, so a culprit fails only if it happened to be running on a killed worker
``max_worker_crashes`` (3) times; every other FAILED item is innocent. It prints

- kills: how many workers were killed, and how many of them were running an item;
- FAILED: every FAILED item, split into culprits (found running on a worker when it was killed) and
  innocent (never found so), with the first innocent items' errors;
- the time of the storm run against the undisturbed one.

A correct durablemap shows 0 innocent FAILED items.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from durablemap import BatchResult, DurableContext, durable_execution
from durablemap._slots import Slots
from durablemap.executors import _loky


def one_millisecond(ctx: DurableContext, item: int, index: int, items: Any) -> int:
    time.sleep(0.001)
    return item


@durable_execution
def storm_map(event: dict[str, Any], context: DurableContext) -> BatchResult[int]:
    return context.map(list(range(event["items"])), one_millisecond, name="storm")


class Killer(threading.Thread):
    """SIGKILLs a random live worker every ``every`` seconds for ``seconds``; notes what each ran."""

    def __init__(self, every: float, seconds: float, seed: int) -> None:
        super().__init__(name="storm-killer", daemon=True)
        self.every, self.seconds, self.rng = every, seconds, random.Random(seed)
        self.kills = 0
        self.culprits: Counter[int] = Counter()  # item index -> times it ran on a killed worker
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline and not self.stop.wait(self.every):
            pids = _worker_pids()
            if not pids:
                continue
            pid = self.rng.choice(pids)
            slots = {s.pid: s for s in Slots(_loky._slot_dir).read_all()} if _loky._slot_dir else {}
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.kills += 1
            state = slots.get(pid)
            if state is not None and state.running:
                self.culprits[state.index] += 1


def _worker_pids() -> list[int]:
    """The live loky worker processes of this process (whether or not they published a slot yet)."""
    pids = []
    for child in psutil.Process().children():
        try:
            if "popen_loky_posix" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                pids.append(child.pid)
        except psutil.NoSuchProcess:
            continue
    return pids


def run_once(items: int, workers: int, killer: Killer | None) -> tuple[float, BatchResult[int]]:
    store = tempfile.mkdtemp(prefix="storm-store-")
    try:
        start = time.perf_counter()
        if killer is not None:
            killer.start()
        result = storm_map.run({"items": items}, store=store, workers=workers, progress=False)
        elapsed = time.perf_counter() - start
        if killer is not None:
            killer.stop.set()
            killer.join()
        return elapsed, result
    finally:
        shutil.rmtree(store, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--every", type=float, default=0.3)
    parser.add_argument("--for", dest="seconds", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="Also write the figures to this file.")
    args = parser.parse_args()

    # A warm-up map starts the pool, so neither timed run pays for it.
    run_once(args.workers * 4, args.workers, None)
    baseline, calm = run_once(args.items, args.workers, None)
    killer = Killer(args.every, args.seconds, args.seed)
    stormy, result = run_once(args.items, args.workers, killer)

    failed = result.failed()
    culprits = [item.index for item in failed if item.index in killer.culprits]
    innocent = [item for item in failed if item.index not in killer.culprits]
    figures = {
        "items": args.items, "workers": args.workers, "kill_every_s": args.every, "storm_s": args.seconds,
        "kills": killer.kills, "kills_while_running_an_item": sum(killer.culprits.values()),
        "baseline_failed": len(calm.failed()), "succeeded": result.success_count, "failed": len(failed),
        "failed_culprits": len(culprits), "failed_innocent": len(innocent),
        "baseline_seconds": round(baseline, 2), "storm_seconds": round(stormy, 2),
        "slowdown": round(stormy / baseline, 2),
        "innocent_examples": [(item.index, (item.error.message or "")[:160] if item.error else "")
                              for item in innocent[:3]],
    }
    print(f"storm: {args.items} items of ~1 ms, {args.workers} workers, a random worker SIGKILLed every "
          f"{args.every} s for {args.seconds} s")
    print(f"  kills: {figures['kills']} ({figures['kills_while_running_an_item']} while running an item)")
    print(f"  FAILED: {len(failed)} (culprits {len(culprits)}, innocent {len(innocent)}); undisturbed run "
          f"FAILED {figures['baseline_failed']}")
    for index, message in figures["innocent_examples"]:
        print(f"    innocent item {index}: {message}")
    print(f"  time: {stormy:.2f} s with the storm, {baseline:.2f} s without ({figures['slowdown']}x)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
