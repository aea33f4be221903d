"""A Parquet export of a 1,000,000-item map, read back with pyarrow, equals the map's results.

Usage::

    python perf/export_parquet.py [--n 1000000] [--workers 2]

Runs a map of ``n`` items (item i -> {"i": i, "sq": i*i, "s": "x" * (i % 5)}) on a fresh store,
exports it with ``durablemap export ID --map squares --format parquet`` (a subprocess, as a user runs
it), reads the file back with pyarrow and compares it with the map's ``BatchResult``; prints the
times and the export's peak RSS (which stays bounded: it holds one row group at a time). The test
suite checks the same on 2,000 items in 7 row groups (tests/test_results_out.py).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from durablemap import BatchResult, DurableContext, durable_execution

# `durablemap export ...` in a process that prints its own peak RSS (KiB) when done: VmHWM, the peak
# of this process's own memory. Not ru_maxrss: Linux carries the RSS a process had when it called
# exec into ru_maxrss, so a child started by this script (which holds the map's results) would
# report this script's memory, not its own (how an earlier run of this script measured 860 MB).
_EXPORT = """
import resource, sys
from durablemap.cli import main
sys.argv = sys.argv[1:]
try:
    main()
except SystemExit as exc:
    if exc.code:
        raise
try:
    with open("/proc/self/status") as fh:
        print(next(line.split()[1] for line in fh if line.startswith("VmHWM:")))
except OSError:  # not Linux: the nearest figure there is
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def item(context: DurableContext, i: int, index: int, inputs: Any) -> dict[str, Any]:
    return {"i": i, "sq": i * i, "s": "x" * (i % 5)}


@durable_execution
def squares(event: dict[str, Any], context: DurableContext) -> BatchResult[Any]:
    return context.map(range(event["n"]), item, name="squares")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store, out = str(Path(tmp) / "store"), Path(tmp) / "squares.parquet"
        started = time.perf_counter()
        result = squares.run({"n": args.n}, store=store, execution_id="export-bench", workers=args.workers,
                             progress=False)
        ran = time.perf_counter() - started
        started = time.perf_counter()
        argv = ["durablemap", "export", "export-bench", "--map", "squares", "--format", "parquet", "-o", str(out),
                "--store", store]
        done = subprocess.run([sys.executable, "-c", _EXPORT, *argv], check=True, capture_output=True, text=True)
        exported = time.perf_counter() - started
        export_rss = int(done.stdout.split()[-1]) / 1024
        table = pq.read_table(out)
        equal = (table.column("index").to_pylist() == list(range(args.n))
                 and set(table.column("status").to_pylist()) == {"SUCCEEDED"}
                 and table.column("result").to_pylist() == result.get_results())
        print(f"map of {args.n:,} items: ran in {ran:.1f} s; exported to Parquet in {exported:.1f} s "
              f"({out.stat().st_size / 1e6:.1f} MB, {pq.ParquetFile(out).metadata.num_row_groups} row groups); "
              f"peak RSS of the export's process {export_rss:.0f} MB; "
              f"read back equal to the results: {equal}")
        if not equal:
            sys.exit(1)


if __name__ == "__main__":
    main()
