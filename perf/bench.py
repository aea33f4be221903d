"""Throughput of durablemap against the process pools a data engineer would reach for instead.

Usage::

    python perf/bench.py [--quick] [--workers N] [--cases abcde] [--json PATH] [--timeout SECONDS]

In one process and one run, on the same items and worker count, it times

- durablemap: a ``@durable_execution`` handler whose body is ``context.map(items, func)``, default
  settings (progress bar off), a fresh temporary store per case, timed around ``handler.run(...)``;
- ``multiprocessing.Pool(N).map(f, items)`` (its default chunksize);
- loky ``get_reusable_executor(N).map(f, items, chunksize=C)`` with ``C = len(items) / (4 N)``, capped;
- joblib ``Parallel(n_jobs=N)(delayed(f)(x) for x in items)`` (its default batching);

on three cases:

(a) 200,000 tiny items, ``x * x`` (``--quick``: 20,000); also durablemap's replay of (a): the same
    handler on the same store again, where every item comes back from the store;
(b) 2,000 items of ~5 ms of CPU each, a busy loop calibrated once at start (``--quick``: 200);
(c) 2,000 items that sleep 10 ms, on 16 workers (``--quick``: 200): the ideal is 16 items per 10 ms,
    and the table gives each library's fraction of it;

and two cases of items that wait, where the items in flight follow ``max_concurrency`` rather than
the number of processes (``--workers`` processes for durablemap, default the CPUs):

(d) 2,000 items of ``time.sleep(0.1)``, ``MapConfig(max_concurrency=200)`` (``--quick``: 1,000), beside
    ``concurrent.futures.ThreadPoolExecutor(200).map`` and joblib's threading backend
    (``Parallel(n_jobs=200, prefer="threads")``); the ideal is 200 items per 100 ms (1.0 s; 0.5 s
    quick);
(e) 10,000 ``async def`` items of ``await asyncio.sleep(0.1)``, ``max_concurrency=1000`` (``--quick``:
    5,000), beside a plain ``asyncio.gather`` of every item, each holding an ``asyncio.Semaphore(1000)``;
    the ideal is 1.0 s (0.5 s quick).

Every pool is started and warmed up (2 N items of 20 ms, so that every worker is up) before its timed
run, and that start-up is its own column. For durablemap the start-up is a first run of 2 N items
of 10 ms on a throwaway store; for (d) and (e), one round of the case's own items
(``max_concurrency`` of them) on a throwaway store, and the thread pools and the event loop are
warmed up the same way. Each case ends with the peak RSS of
this process. A library that is missing or raises prints its error in its row, and the others go on.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import platform
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

try:
    from durablemap import DurableContext, durable_execution
    from durablemap.config import MapConfig

    DURABLEMAP_IMPORT_ERROR: str | None = None
except Exception as exc:  # the library is young: report its import error in the table, run the peers
    durable_execution = None  # type: ignore[assignment]
    DurableContext = Any  # type: ignore[assignment,misc]
    MapConfig = None  # type: ignore[assignment,misc]
    DURABLEMAP_IMPORT_ERROR = f"import failed: {type(exc).__name__}: {exc}"

SLEEP_SECONDS = 0.01
CPU_SECONDS = 0.005
LOKY_CHUNK_CAP = 4096
SLEEP_WORKERS = 16
WARMUP_SECONDS = 0.02
WAIT_SECONDS = 0.1  # the items of cases (d) and (e)
THREADS_CONCURRENCY = 200
ASYNC_CONCURRENCY = 1000

# --------------------------------------------------------------------------- work functions
# Peers take ``(x)``; durablemap map functions take ``(context, item, index, items)``. All are
# module-level so worker processes can unpickle them.


def square(x: int) -> int:
    """The tiny item: one multiplication."""
    return x * x


def burn(iterations: int) -> int:
    """The CPU item: a busy loop of ``iterations`` steps (calibrated to ~5 ms)."""
    acc = 0
    for i in range(iterations):
        acc ^= i
    return acc


def nap(x: int) -> int:
    """The I/O-like item: sleep 10 ms."""
    time.sleep(SLEEP_SECONDS)
    return x


def warm(x: int) -> int:
    """The warm-up item: long enough (20 ms) that every worker of the pool must take one."""
    time.sleep(WARMUP_SECONDS)
    return x


def doze(x: int) -> int:
    """The waiting item of case (d): sleep 100 ms."""
    time.sleep(WAIT_SECONDS)
    return x


async def adoze(x: int) -> int:
    """The waiting item of case (e): ``await asyncio.sleep(0.1)``."""
    await asyncio.sleep(WAIT_SECONDS)
    return x


def dm_square(context: DurableContext, item: int, index: int, items: Sequence[int]) -> int:
    """``square`` as a durablemap map function."""
    return item * item


def dm_burn(context: DurableContext, item: int, index: int, items: Sequence[int]) -> int:
    """``burn`` as a durablemap map function."""
    return burn(item)


def dm_nap(context: DurableContext, item: int, index: int, items: Sequence[int]) -> int:
    """``nap`` as a durablemap map function."""
    return nap(item)


def dm_doze(context: DurableContext, item: int, index: int, items: Sequence[int]) -> int:
    """``doze`` as a durablemap map function."""
    return doze(item)


async def dm_adoze(context: DurableContext, item: int, index: int, items: Sequence[int]) -> int:
    """``adoze`` as a durablemap map function: an ``async def`` item."""
    return await adoze(item)


DM_FUNCS: dict[str, Callable[..., Any]] = {"tiny": dm_square, "cpu": dm_burn, "sleep": dm_nap,
                                           "threads": dm_doze, "async": dm_adoze}


def make_items(event: dict[str, Any]) -> list[int]:
    """The items of a case, built from its (small) event: deterministic, as durable replay requires."""
    if event["kind"] == "cpu":
        return [event["iterations"]] * event["n"]
    return list(range(event["n"]))


if durable_execution is not None:

    @durable_execution
    def bench_handler(event: dict[str, Any], context: DurableContext) -> dict[str, Any]:
        """The benchmarked handler: one map over the case's items."""
        started = time.perf_counter()
        config: MapConfig[int] = MapConfig(max_concurrency=event.get("max_concurrency"))
        batch = context.map(make_items(event), DM_FUNCS[event["kind"]], config=config)
        map_seconds = time.perf_counter() - started
        results = cast(list[int], batch.get_results())
        first = next((e for e in batch.get_errors() if e is not None), None)
        return {"succeeded": len(results), "failed": batch.failure_count, "checksum": checksum(results),
                "map_seconds": map_seconds, "first_error": first and f"{first.type}: {first.message}"}


def checksum(results: Sequence[int]) -> int:
    """A cheap fingerprint of a result list, to check every library computed the same thing."""
    return sum(results) % (1 << 61)


def calibrate_burn(target_seconds: float = CPU_SECONDS) -> int:
    """Iterations of ``burn`` that take ``target_seconds`` in this process (best of a few tries)."""
    probe = 200_000
    best = min(_timed(lambda: burn(probe)) for _ in range(5))
    return max(1, int(probe * target_seconds / best))


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# --------------------------------------------------------------------------- results


@dataclass
class Row:
    """One library's figures for one case."""

    library: str
    startup_s: float | None = None
    time_s: float | None = None
    items_per_s: float | None = None
    ratio_dm_over_peer: float | None = None
    fraction_of_ideal: float | None = None
    error: str | None = None


@dataclass
class Case:
    """One case: its items, workers and the rows of every library."""

    key: str
    title: str
    kind: str
    n: int
    workers: int
    peer_func: Callable[[int], Any] = field(repr=False)
    items: list[int] = field(repr=False)
    event: dict[str, Any] = field(repr=False)
    ideal_s: float | None = None
    ideal_note: str = ""
    concurrency: int | None = None  # MapConfig.max_concurrency, and the peers' threads or semaphore
    rows: list[Row] = field(default_factory=list)
    replay: Row | None = None
    peak_rss_mib: float | None = None


class Deadline(Exception):
    """A timed run took longer than ``--timeout``."""


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Raise ``Deadline`` in the main thread after ``seconds`` (0: no limit)."""
    if seconds <= 0:
        yield
        return

    def on_alarm(signum: int, frame: object) -> None:
        raise Deadline(f"no result after {seconds} s (--timeout)")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def measure(
    row: Row, case: Case, expected: int, run: Callable[[], Sequence[int] | int], timeout: int
) -> None:
    """Time ``run`` into ``row``; check its checksum; turn any error into the row's error."""
    try:
        with deadline(timeout):
            start = time.perf_counter()
            out = run()
            elapsed = time.perf_counter() - start
    except (Exception, Deadline) as exc:
        row.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
        return
    got = out if isinstance(out, int) else checksum(out)
    if got != expected:
        row.error = f"wrong result: checksum {got}, expected {expected}"
    row.time_s = elapsed
    row.items_per_s = case.n / elapsed if elapsed > 0 else None
    if case.ideal_s is not None:
        row.fraction_of_ideal = case.ideal_s / elapsed


def startup(row: Row, start: Callable[[], object], timeout: int) -> bool:
    """Time a pool's start-up and warm-up into ``row``; False (and the row's error) if it failed."""
    try:
        with deadline(timeout):
            row.startup_s = _timed(start)
    except (Exception, Deadline) as exc:
        row.error = f"start-up: {type(exc).__name__}: {exc}".splitlines()[0][:160]
        return False
    return True


# --------------------------------------------------------------------------- the libraries


def run_durablemap(case: Case, expected: int, tmp: Path, timeout: int) -> tuple[Row, Row | None]:
    """durablemap: warm up on a throwaway store, time a fresh store, replay it for the tiny case."""
    row = Row("durablemap")
    if durable_execution is None:
        row.error = DURABLEMAP_IMPORT_ERROR
        return row, None
    store = tmp / f"store-{case.key}"
    warm_store = tmp / f"warmup-{case.key}"
    warm_event = {"kind": "sleep", "n": 2 * case.workers, "case": f"warmup-{case.key}"}
    if case.concurrency is not None:  # (d), (e): one round of the case's own items
        warm_event = {**case.event, "n": case.concurrency, "case": f"warmup-{case.key}"}

    last: dict[str, Any] = {}

    def run() -> int:
        out = bench_handler.run(case.event, store=str(store), workers=case.workers, progress=False)
        last.update(out)
        if out["failed"]:
            raise RuntimeError(f"{out['failed']} items failed, the first with {out['first_error']}")
        return int(out["checksum"])

    if startup(row, lambda: bench_handler.run(warm_event, store=str(warm_store), workers=case.workers,
                                              progress=False), timeout):
        measure(row, case, expected, run, timeout)
    replay = None
    if case.kind == "tiny" and row.error is None:
        replay = Row("durablemap replay")
        measure(replay, case, expected, run, timeout)
        if replay.error is None and last.get("map_seconds"):
            # The replay of the map alone: the run above also counts the handler's own work on the
            # results (get_results, a checksum) and the execution's records.
            replay.library = f"durablemap replay (map {case.n / last['map_seconds']:,.0f}/s)"
    return row, replay


def run_multiprocessing(case: Case, expected: int, timeout: int) -> Row:
    """``multiprocessing.Pool(N).map`` with its default chunksize."""
    row = Row("multiprocessing")
    pool: Any = None

    def start() -> None:
        nonlocal pool
        pool = multiprocessing.Pool(case.workers)
        pool.map(warm, range(2 * case.workers), chunksize=1)

    try:
        if startup(row, start, timeout):
            measure(row, case, expected, lambda: pool.map(case.peer_func, case.items), timeout)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return row


def run_loky(case: Case, expected: int, timeout: int) -> Row:
    """loky's reusable executor, ``map`` with a chunksize of ``len / (4 N)``, capped."""
    row = Row("loky")
    try:
        from loky import get_reusable_executor
    except Exception as exc:
        row.error = f"import failed: {exc}"
        return row
    chunksize = max(1, min(case.n // (4 * case.workers), LOKY_CHUNK_CAP))
    executor: Any = None

    def start() -> None:
        nonlocal executor
        executor = get_reusable_executor(max_workers=case.workers)
        list(executor.map(warm, range(2 * case.workers)))

    if startup(row, start, timeout):
        measure(row, case, expected,
                lambda: list(executor.map(case.peer_func, case.items, chunksize=chunksize)), timeout)
    row.library = f"loky (chunksize {chunksize})"
    return row


def run_joblib(case: Case, expected: int, timeout: int) -> Row:
    """joblib ``Parallel(n_jobs=N)`` with its default (auto) batching, in one managed backend."""
    row = Row("joblib")
    try:
        from joblib import Parallel, delayed
    except Exception as exc:
        row.error = f"import failed: {exc}"
        return row
    with Parallel(n_jobs=case.workers) as parallel:
        if startup(row, lambda: parallel(delayed(warm)(i) for i in range(2 * case.workers)), timeout):
            func = case.peer_func
            measure(row, case, expected, lambda: parallel(delayed(func)(x) for x in case.items), timeout)
    return row


def run_thread_pool(case: Case, expected: int, timeout: int) -> Row:
    """``concurrent.futures.ThreadPoolExecutor(C).map``, C the case's concurrency."""
    threads = case.concurrency or 1
    row = Row(f"ThreadPoolExecutor({threads})")
    with concurrent.futures.ThreadPoolExecutor(threads) as executor:
        if startup(row, lambda: list(executor.map(case.peer_func, range(threads))), timeout):
            measure(row, case, expected, lambda: list(executor.map(case.peer_func, case.items)), timeout)
    return row


def run_joblib_threads(case: Case, expected: int, timeout: int) -> Row:
    """joblib ``Parallel(n_jobs=C, prefer="threads")``, C the case's concurrency, default batching."""
    threads = case.concurrency or 1
    row = Row(f"joblib threads (n_jobs={threads})")
    try:
        from joblib import Parallel, delayed
    except Exception as exc:
        row.error = f"import failed: {exc}"
        return row
    func = case.peer_func
    with Parallel(n_jobs=threads, prefer="threads") as parallel:
        if startup(row, lambda: parallel(delayed(func)(i) for i in range(threads)), timeout):
            measure(row, case, expected, lambda: parallel(delayed(func)(x) for x in case.items), timeout)
    return row


def run_asyncio_gather(case: Case, expected: int, timeout: int) -> Row:
    """A plain ``asyncio.gather`` of every item, each awaiting an ``asyncio.Semaphore(C)`` first."""
    limit = case.concurrency or 1
    row = Row(f"asyncio.gather, Semaphore({limit})")
    func = case.peer_func

    async def gather(items: Sequence[int]) -> list[int]:
        semaphore = asyncio.Semaphore(limit)

        async def one(x: int) -> int:
            async with semaphore:
                return cast(int, await func(x))

        return list(await asyncio.gather(*(one(x) for x in items)))

    if startup(row, lambda: asyncio.run(gather(range(limit))), timeout):
        measure(row, case, expected, lambda: asyncio.run(gather(case.items)), timeout)
    return row


PeerRunner = Callable[[Case, int, int], Row]
PEERS: dict[str, tuple[PeerRunner, ...]] = {
    "threads": (run_thread_pool, run_joblib_threads),
    "async": (run_asyncio_gather,),
}
POOLS: tuple[PeerRunner, ...] = (run_multiprocessing, run_loky, run_joblib)


# --------------------------------------------------------------------------- driver


def build_cases(quick: bool, workers: int, iterations: int) -> list[Case]:
    """The five cases, sized for ``--quick`` or not."""
    n_tiny, n_cpu, n_sleep, n_threads, n_async = (
        (20_000, 200, 200, 1_000, 5_000) if quick else (200_000, 2_000, 2_000, 2_000, 10_000))
    waits = f"{WAIT_SECONDS * 1000:.0f} ms"
    specs = [
        ("a", f"(a) {n_tiny:,} tiny items (x*x)", "tiny", n_tiny, workers, square, None),
        ("b", f"(b) {n_cpu:,} items of ~{CPU_SECONDS * 1000:.0f} ms CPU", "cpu", n_cpu, workers, burn, None),
        ("c", f"(c) {n_sleep:,} items sleeping {SLEEP_SECONDS * 1000:.0f} ms", "sleep", n_sleep,
         SLEEP_WORKERS, nap, SLEEP_WORKERS),
        ("d", f"(d) {n_threads:,} items sleeping {waits} (time.sleep), max_concurrency={THREADS_CONCURRENCY}",
         "threads", n_threads, workers, doze, THREADS_CONCURRENCY),
        ("e", f"(e) {n_async:,} async items awaiting asyncio.sleep({WAIT_SECONDS:g}), "
         f"max_concurrency={ASYNC_CONCURRENCY}", "async", n_async, workers, adoze, ASYNC_CONCURRENCY),
    ]
    cases = []
    for key, title, kind, n, n_workers, func, at_once in specs:
        event = {"kind": kind, "n": n, "iterations": iterations, "case": key}
        case = Case(key, f"{title}, {n_workers} workers", kind, n, n_workers, func, make_items(event), event)
        if kind in PEERS:
            event["max_concurrency"] = case.concurrency = at_once
        if at_once is not None:
            seconds = SLEEP_SECONDS if kind == "sleep" else WAIT_SECONDS
            case.ideal_s = n * seconds / at_once
            case.ideal_note = f"{at_once} items per {seconds * 1000:.0f} ms = {case.ideal_s:.2f} s"
        cases.append(case)
    return cases


def run_case(case: Case, tmp: Path, timeout: int) -> None:
    """Run every library on ``case``, fill its rows and ratios, record the peak RSS."""
    expected = _expected(case)
    dm_row, replay = run_durablemap(case, expected, tmp, timeout)
    case.rows = [dm_row, *(peer(case, expected, timeout) for peer in PEERS.get(case.kind, POOLS))]
    case.replay = replay
    for row in case.rows[1:]:
        if dm_row.time_s and row.time_s:
            row.ratio_dm_over_peer = dm_row.time_s / row.time_s
    case.peak_rss_mib = peak_rss_mib()


def _expected(case: Case) -> int:
    """The checksum every library must reproduce, computed without running the slow items."""
    if case.kind == "cpu":
        return checksum([burn(case.items[0])] * case.n)
    if case.kind == "tiny":
        return checksum([x * x for x in case.items])
    return checksum(case.items)


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_case(case: Case) -> None:
    """The plain-text table of one case."""
    show_ideal = case.ideal_s is not None
    print(f"\n{case.title}")
    header = f"  {'library':<34}{'start-up s':>11}{'time s':>10}{'items/s':>12}{'dm/peer':>9}"
    print(header + (f"{'of ideal':>10}" if show_ideal else ""))
    rows = case.rows + ([case.replay] if case.replay else [])
    for row in rows:
        line = (f"  {row.library:<34}{_fmt(row.startup_s, '.2f'):>11}{_fmt(row.time_s, '.3f'):>10}"
                f"{_fmt(row.items_per_s, ',.0f'):>12}")
        ratio = "" if row.library.startswith("durablemap") else _fmt(row.ratio_dm_over_peer, '.2f') + "x"
        line += f"{ratio.replace('-x', '-'):>9}"
        if show_ideal:
            percent = None if row.fraction_of_ideal is None else row.fraction_of_ideal * 100
            line += (_fmt(percent, '.0f') + "%").replace("-%", "-").rjust(10)
        if row.error:
            line += f"   ERROR {row.error}"
        print(line)
    if show_ideal:
        print(f"  ideal: {case.ideal_note}")
    print(f"  peak RSS of this process after the case: {case.peak_rss_mib:.0f} MiB")


def default_workers() -> int:
    """The CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 2


def library_versions() -> dict[str, str]:
    """Versions of the libraries compared, for the record."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("durablemap", "loky", "joblib", "msgpack", "lmdb"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer items: a tenth, half for (d) and (e)")
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="workers for cases (a), (b), (d) and (e) (default: the CPUs this process may use)")
    parser.add_argument("--cases", default="abcde", help="the cases to run, by letter (default: abcde)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH as JSON")
    parser.add_argument("--timeout", type=int, default=600, help="seconds before one timed run is abandoned")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Calibrate, run the cases, print the tables, optionally write JSON."""
    args = parse_args(argv)
    iterations = calibrate_burn()
    print(f"python {platform.python_version()} on {platform.platform()}, {default_workers()} CPUs usable; "
          f"busy loop: {iterations:,} iterations = {CPU_SECONDS * 1000:.0f} ms")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in library_versions().items()))
    cases = [c for c in build_cases(args.quick, args.workers, iterations) if c.key in args.cases]
    tmp = Path(tempfile.mkdtemp(prefix="durablemap-bench-"))
    try:
        for case in cases:
            run_case(case, tmp, args.timeout)
            print_case(case)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\ndm/peer: durablemap's time divided by the peer's (above 1: durablemap is slower).")
    if args.json:
        report = {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": default_workers(),
            "quick": args.quick,
            "burn_iterations": iterations,
            "versions": library_versions(),
            "cases": [
                {
                    "key": c.key, "title": c.title, "items": c.n, "workers": c.workers,
                    "max_concurrency": c.concurrency,
                    "ideal_s": c.ideal_s, "peak_rss_mib": c.peak_rss_mib,
                    "rows": [asdict(r) for r in c.rows],
                    "replay": asdict(c.replay) if c.replay else None,
                }
                for c in cases
            ],
        }
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
