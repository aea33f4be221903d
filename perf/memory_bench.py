"""Coordinator memory for many tiny items: durablemap beside joblib and multiprocessing.Pool.map.

    python perf/memory_bench.py [--n 1000000] [--workers 2] [--trace]

Each contender runs in a fresh Python process that maps ``x*x`` over ``range(n)`` with 2 workers
and reports: its RSS before the map, its peak RSS (ru_maxrss), its RSS after the map while still
holding the results (after gc), and the wall time. "Beyond results" is (peak - after) / n: what the
coordinator held per item at its peak on top of the returned results. ``--trace`` adds a
tracemalloc snapshot of the durablemap coordinator taken half-way through the map (top allocation
sites), to show where the bytes go.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any


def square(x: int) -> int:
    return x * x


def _item(ctx: Any, x: int, index: int, inputs: Any) -> int:
    return x * x


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _durablemap(n: int, workers: int, trace: bool) -> Any:
    from durablemap import durable_execution

    observers = []
    if trace:
        import tracemalloc
        tracemalloc.start(8)

        class Halfway:
            snapshot: Any = None
            done = 0

            def items_finished(self, info: Any, succeeded: int, failed: int) -> None:
                self.done += succeeded + failed
                if self.snapshot is None and self.done >= n // 2:
                    self.snapshot = tracemalloc.take_snapshot()

        observers.append(Halfway())

    @durable_execution(workers=workers, progress=False)
    def handler(event: Any, context: Any) -> Any:
        return context.map(range(event), _item, name="tiny")

    store = tempfile.mkdtemp(prefix="durablemap-membench-")
    handler.run(1000, store=store, execution_id="warm", observers=[])  # workers up, imports done
    gc.collect()
    before = _rss()
    start = time.perf_counter()
    result = handler.run(n, store=store, execution_id="bench", observers=observers)
    elapsed = time.perf_counter() - start
    assert result.success_count == n
    if trace:
        stats = observers[0].snapshot.statistics("lineno")
        print("tracemalloc, half-way (top 12 sites):", file=sys.stderr)
        for stat in stats[:12]:
            print(f"  {stat.size / n:8.1f} B/item  {stat.size / 2**20:7.1f} MiB  {stat.traceback}",
                  file=sys.stderr)
    return before, elapsed, result


def _joblib(n: int, workers: int) -> Any:
    from joblib import Parallel, delayed
    Parallel(n_jobs=workers)(delayed(square)(x) for x in range(1000))
    gc.collect()
    before = _rss()
    start = time.perf_counter()
    result = Parallel(n_jobs=workers)(delayed(square)(x) for x in range(n))
    return before, time.perf_counter() - start, result


def _pool(n: int, workers: int) -> Any:
    import multiprocessing
    pool = multiprocessing.Pool(workers)
    pool.map(square, range(1000))
    gc.collect()
    before = _rss()
    start = time.perf_counter()
    result = pool.map(square, range(n))
    elapsed = time.perf_counter() - start
    pool.close()
    pool.join()
    return before, elapsed, result


def child(name: str, n: int, workers: int, trace: bool) -> None:
    """Run one contender in this (fresh) process; print its figures as JSON."""
    if name == "durablemap":
        before, elapsed, result = _durablemap(n, workers, trace)
    elif name == "joblib":
        before, elapsed, result = _joblib(n, workers)
    else:
        before, elapsed, result = _pool(n, workers)
    gc.collect()
    after = _rss()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"name": name, "before": before, "peak": peak, "after": after, "seconds": elapsed}))
    del result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--trace", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.n, args.workers, args.trace)
        return
    mib = 2**20
    print(f"{args.n:,} tiny items (x*x), {args.workers} workers; RSS of the calling process, MiB")
    print(f"{'':<16}{'before':>8}{'peak':>8}{'after':>8}{'peak-before':>13}{'B/item beyond results':>23}"
          f"{'seconds':>9}")
    for name in ("durablemap", "joblib", "Pool.map"):
        done = subprocess.run([sys.executable, __file__, "--child", name, "--n", str(args.n), "--workers",
                               str(args.workers), *(["--trace"] if args.trace and name == "durablemap" else [])],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"{name:<16} failed: {done.stderr[-500:]}")
            continue
        if done.stderr.strip():
            print(done.stderr.rstrip())
        row = json.loads(done.stdout.strip().splitlines()[-1])
        beyond = (row["peak"] - row["after"]) / args.n
        print(f"{name:<16}{row['before'] / mib:8.0f}{row['peak'] / mib:8.0f}{row['after'] / mib:8.0f}"
              f"{(row['peak'] - row['before']) / mib:13.0f}{beyond:23.0f}{row['seconds']:9.2f}")


if __name__ == "__main__":
    main()
