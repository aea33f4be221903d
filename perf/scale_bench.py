"""Scale benchmark: many tiny items, and many string inputs, first run and replay.

    python perf/scale_bench.py                    # range(N) at N = 1M and 10M; 50-char strings
    python perf/scale_bench.py --n 1000000        # one size only
    python perf/scale_bench.py --huge             # adds N = 100M (needs far more memory today)
    python perf/scale_bench.py --strings-max 3000000 --json figures.json
    python perf/scale_bench.py --huge --cases range   # only the range case, 1M, 10M and 100M
    python perf/scale_bench.py --n 10000000 --cases range --phases first,replay   # no full read

Cases, each run twice in fresh Python processes on one fresh store:

- ``range``: ``context.map(range(N), square)`` with ``--workers`` (default 2) workers.
- ``str``: ``context.map(strings, len)`` over a list of N 50-character strings, with 2 and with 8
  workers. N is capped at ``--strings-max`` (default 3,000,000): today every worker holds the whole
  input list, so 8 workers x 10M strings would need well over 10 GB.
- ``lines``: the same strings as the lines of a file, through ``durablemap.inputs.FileLines``
  (workers read only their lines), with 2 and 8 workers; the file and its line index are made
  before the timed runs.

For each, the first run (``first``) then the replay of the same execution (``replay``: the handler
reads the counts; a map of a million items or more gives a BatchResult that reads its items from the
store only when asked, so this reads none), and for ``range`` a replay that reads every item's
result (``read``: iterates ``result.all``, streamed from the store a page at a time).

Columns: wall time of ``handler.run`` (the process's start-up and imports excluded), items/s, the
coordinator's peak RSS (``ru_maxrss`` of the process that runs the handler), all workers' peak RSS
(the largest sum of the RSS of every worker process at one instant, sampled with psutil every 0.1 s
from a thread; loky's resource tracker excluded) and the store's size on disk (``du``: allocated
blocks of the store directory) after the run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import psutil

MIB = 2**20
STRING_LENGTH = 50


def square(ctx: Any, x: int, index: int, inputs: Any) -> int:
    return x * x


def length(ctx: Any, s: str, index: int, inputs: Any) -> int:
    return len(s)


def _strings(n: int) -> list[str]:
    # Distinct 50-character strings, cheap to build: a 10-digit counter padded with a fixed tail.
    tail = "x" * (STRING_LENGTH - 10)
    return [f"{i:010d}{tail}" for i in range(n)]


class WorkerSampler:
    """Samples the RSS of this process's worker processes from a thread; keeps the peak sum."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.peak = 0
        self.workers_seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-rss-sampler", daemon=True)

    def __enter__(self) -> WorkerSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(self.interval):
            total = 0
            for child in me.children(recursive=True):
                try:
                    if any("resource_tracker" in part for part in child.cmdline()):
                        continue
                    total += child.memory_info().rss
                    self.workers_seen.add(child.pid)
                except psutil.Error:
                    continue  # exited between listing and reading
            self.peak = max(self.peak, total)


def _lines_file(store: str, n: int) -> str:
    """A file of the ``n`` strings of ``_strings``, one per line, beside the store (made once)."""
    path = store + "-lines.txt"
    if not os.path.exists(path):
        with open(path, "w", encoding="utf-8") as fh:
            tail = "x" * (STRING_LENGTH - 10)
            for start in range(0, n, 100_000):
                fh.write("".join(f"{i:010d}{tail}\n" for i in range(start, min(n, start + 100_000))))
    return path


def _du(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            total += os.stat(os.path.join(root, name)).st_blocks * 512
    return total


def child(case: str, n: int, workers: int, store: str, phase: str) -> None:
    """Run one case's first run or replay in this fresh process; print its figures as JSON."""
    from durablemap import durable_execution

    inputs: Any
    if case == "range":
        inputs = range(n)
    elif case == "str":
        inputs = _strings(n)
    else:
        from durablemap.inputs import FileLines
        inputs = FileLines(_lines_file(store, n), index_dir=store + "-index")
    func = square if case == "range" else length

    @durable_execution(workers=workers, progress=False)
    def handler(event: Any, context: Any) -> Any:
        result = context.map(inputs, func, name=case)
        if phase == "read":  # every result, streamed from the store (or from memory, small maps)
            read = sum(1 for item in result.all if item.result is not None)
            return [read, result.failure_count, result.total_count]
        return [result.success_count, result.failure_count, result.total_count]

    with WorkerSampler() as sampler:
        start = time.perf_counter()
        counts = handler.run(None, store=store, execution_id=f"{case}-{n}-{workers}")
        elapsed = time.perf_counter() - start
    if counts != [n, 0, n]:
        raise SystemExit(f"{case} {phase}: expected {n} successes, got (succeeded, failed, total) = {counts}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"case": case, "n": n, "workers": workers, "phase": phase, "seconds": elapsed,
                      "coordinator_peak": peak, "workers_peak": sampler.peak,
                      "worker_processes": len(sampler.workers_seen), "store_bytes": _du(store)}))


def _run_child(case: str, n: int, workers: int, store: str, phase: str, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", case, "--n", str(n), "--workers", str(workers),
           "--store", store, "--phase", phase]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"case": case, "n": n, "workers": workers, "phase": phase, "error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
        return {"case": case, "n": n, "workers": workers, "phase": phase, "error": reason[0][:200]}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


HEADER = (f"{'case':<8}{'N':>13}{'workers':>8}{'phase':>8}{'seconds':>9}{'items/s':>13}"
          f"{'coord peak MiB':>16}{'workers peak MiB':>18}{'store MiB':>11}")


def _format(row: dict[str, Any]) -> str:
    head = f"{row['case']:<8}{row['n']:>13,}{row['workers']:>8}{row['phase']:>8}"
    if "error" in row:
        return f"{head}  failed: {row['error']}"
    return (f"{head}{row['seconds']:9.1f}{row['n'] / row['seconds']:13,.0f}{row['coordinator_peak'] / MIB:16,.0f}"
            f"{row['workers_peak'] / MIB:18,.0f}{row['store_bytes'] / MIB:11,.0f}")


def _cases(sizes: list[int], workers: int, strings_max: int, kinds: list[str]) -> list[tuple[str, int, int]]:
    cases = [("range", n, workers) for n in sizes if "range" in kinds]
    for n in sorted({min(n, strings_max) for n in sizes}):
        cases += [(kind, n, w) for kind in ("str", "lines") if kind in kinds for w in (2, 8)]
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, action="append", help="a size (repeatable; default 1M and 10M)")
    parser.add_argument("--huge", action="store_true", help="add N = 100,000,000")
    parser.add_argument("--workers", type=int, default=2, help="workers for the range case (default 2)")
    parser.add_argument("--strings-max", type=int, default=3_000_000, help="cap on N for the string inputs")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per run")
    parser.add_argument("--json", help="also write every row to this file")
    parser.add_argument("--cases", default="range,str,lines", help="which cases (default range,str,lines)")
    parser.add_argument("--phases", default="first,replay,read", help="which phases (default first,replay,read)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.n[0], args.workers, args.store, args.phase)
        return
    sizes = sorted(set(args.n or [1_000_000, 10_000_000]) | ({100_000_000} if args.huge else set()))
    print(f"durablemap scale benchmark: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    print(HEADER, flush=True)
    rows = []
    for case, n, workers in _cases(sizes, args.workers, args.strings_max, args.cases.split(",")):
        store = tempfile.mkdtemp(prefix="durablemap-scale-")
        try:
            if case == "lines":  # the file and its index, outside the timed runs
                from durablemap.inputs import FileLines
                FileLines(_lines_file(store, n), index_dir=store + "-index")
            for phase in [p for p in args.phases.split(",") if p != "read" or case == "range"]:
                row = _run_child(case, n, workers, store, phase, args.timeout)
                rows.append(row)
                print(_format(row), flush=True)
                if "error" in row:
                    break
        finally:
            for leftover in (store, store + "-index", store + "-lines.txt"):
                if os.path.isdir(leftover):
                    shutil.rmtree(leftover, ignore_errors=True)
                elif os.path.exists(leftover):
                    os.unlink(leftover)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
