"""durablemap on Dask against plain Dask, on one LocalCluster.

Usage::

    python perf/bench_dask.py [--quick] [--workers N]

On a ``distributed.LocalCluster(n_workers=N, threads_per_worker=1, processes=True)`` (default N: the
CPUs this process may use), in one process, it times

- durablemap: a ``@durable_execution`` handler whose body is ``context.map(items, func)`` run with
  ``executor=DaskExecutor(client)``, a fresh temporary store per case (every item recorded in LMDB);
- ``client.map`` over batches of ``len(items) / (4 N)`` items (one task per batch: what a Dask user
  writes for tiny items), then ``client.gather``;
- ``dask.bag.from_sequence(items, npartitions=4 N).map(f).compute()`` on the same client;

on case (a) 200,000 tiny items, ``x * x`` (``--quick``: 20,000), and case (b) 2,000 items of ~5 ms
of CPU each (``--quick``: 200). Each runner is warmed up once on a small input first. The table gives
seconds, microseconds per item, and durablemap's time over each peer's. ``perf/bench.py`` may import
:func:`dask_rows` to add these rows to its own table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

CPU_SECONDS = 0.005


def square(x: int) -> int:
    return x * x


def burn(iterations: int) -> int:
    total = 0
    for i in range(iterations):
        total += i
    return iterations


def calibrate_burn(target_seconds: float = CPU_SECONDS) -> int:
    """Iterations of :func:`burn` that take about ``target_seconds`` here."""
    iterations = 10_000
    start = time.perf_counter()
    burn(iterations)
    elapsed = time.perf_counter() - start
    return max(1, int(iterations * target_seconds / max(elapsed, 1e-9)))


def _apply_batch(func: Callable[[int], int], batch: Sequence[int]) -> list[int]:
    return [func(x) for x in batch]


def _time(run: Callable[[], list[int]], expected: list[int]) -> float:
    start = time.perf_counter()
    got = run()
    elapsed = time.perf_counter() - start
    if got != expected:
        raise AssertionError("wrong results")
    return elapsed


def dask_rows(client: Any, name: str, func: Callable[[int], int], items: list[int]) -> list[tuple[str, float]]:
    """Time durablemap on Dask, batched ``client.map`` and ``dask.bag`` on ``items``; returns
    ``[(runner, seconds), ...]``, or the error text in place of a runner's name when it failed."""
    import dask.bag as db

    from durablemap import durable_execution
    from durablemap.executors import DaskExecutor

    threads = max(1, sum(client.nthreads().values()))
    parts = 4 * threads
    expected = [func(x) for x in items]

    def dm_func(context: Any, item: int, index: int, inputs: Sequence[int]) -> int:
        return func(item)

    @durable_execution
    def handler(event: Any, context: Any) -> list[int]:
        return context.map(items[: event["n"]], dm_func, name=name).get_results()  # type: ignore[no-any-return]

    executor = DaskExecutor(client)
    tmp = tempfile.mkdtemp(prefix="bench-dask-")

    def durablemap_run(n: int, store: str) -> list[int]:
        return handler.run({"n": n}, store=os.path.join(tmp, store), progress=False,  # type: ignore[no-any-return]
                           executor=executor)

    def client_map(n: int) -> list[int]:
        size = max(1, -(-n // parts))
        batches = [items[i:i + size] for i in range(0, n, size)]
        futures = client.map(_apply_batch, [func] * len(batches), batches, pure=False)
        return [x for batch in client.gather(futures) for x in batch]

    def bag(n: int) -> list[int]:
        return list(db.from_sequence(items[:n], npartitions=min(parts, n)).map(func).compute(scheduler=client.get))

    runners: list[tuple[str, Callable[[], list[int]], Callable[[], object]]] = [
        ("durablemap on Dask", lambda: durablemap_run(len(items), "timed"), lambda: durablemap_run(50, "warm")),
        ("client.map, batched", lambda: client_map(len(items)), lambda: client_map(50)),
        ("dask.bag", lambda: bag(len(items)), lambda: bag(50)),
    ]
    rows: list[tuple[str, float]] = []
    try:
        for label, run, warm in runners:
            try:
                warm()
                rows.append((label, _time(run, expected)))
            except Exception as exc:
                rows.append((f"{label}: {type(exc).__name__}: {exc}", float("nan")))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def _print(case: str, n: int, rows: list[tuple[str, float]]) -> None:
    print(f"\n{case} ({n:,} items)")
    ours = rows[0][1]
    print(f"  {'runner':<24}{'seconds':>10}{'us/item':>10}{'durablemap / this':>20}")
    for label, seconds in rows:
        print(f"  {label:<24}{seconds:>10.3f}{seconds / n * 1e6:>10.1f}{ours / seconds:>20.2f}")


def main(argv: list[str] | None = None) -> int:
    """Start a LocalCluster, time both cases, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="ten times fewer items")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args(argv)
    from distributed import Client, LocalCluster

    n_tiny, n_cpu = (20_000, 200) if args.quick else (200_000, 2_000)
    iterations = calibrate_burn()
    print(f"LocalCluster: {args.workers} worker processes x 1 thread; Python {sys.version.split()[0]}; "
          f"burn({iterations}) ~ {CPU_SECONDS * 1000:g} ms")
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        _print("(a) tiny items, x * x", n_tiny, dask_rows(client, "tiny", square, list(range(n_tiny))))
        cpu_items = [iterations] * n_cpu
        _print("(b) ~5 ms of CPU each", n_cpu, dask_rows(client, "cpu", burn, cpu_items))
    return 0


if __name__ == "__main__":
    sys.exit(main())
