"""The cost of opening a store, against the cost of checking every page of it first.

Usage::

    python perf/store_open_bench.py [--records 1000000] [--rounds 7]

A page of random bytes in the middle of ``data.mdb`` can make LMDB abort the process that walks into
it (an internal assertion: Python cannot catch it). The only way to find such a page before LMDB
trips on it is to walk every page of the store, and since that walk aborts on the page just the same,
it must run in a child process. This prints, for a store of ``--records`` item records (written with
lmdb directly, in a temporary directory, with values of the size a small item's record has):

- open: ``Store.open(readonly=True)``, one ``get``, ``close``: the normal open path, per call
  (median and best of ``--rounds`` rounds of 500);
- walk: a cursor over every record's key, in this process and in a child process.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

import lmdb
import msgpack

from durablemap._store import Store, op_key

WALK = ("import lmdb, sys\nenv = lmdb.open(sys.argv[1], readonly=True, lock=False, max_dbs=8)\n"
        "db = env.open_db(b'records', create=False)\nwith env.begin(db=db) as txn:\n"
        "    print(sum(1 for _ in txn.cursor().iternext(values=False)))\n")
VALUE = msgpack.packb([1, None, {"i": 4321, "s": "x" * 50}])  # a small item's record (compact form)


def make_store(path: str, records: int) -> None:
    Store.open(path).close()  # a durablemap store, then its records written in one go
    env = lmdb.open(path, map_size=1 << 34, max_dbs=8)
    db = env.open_db(b"records")
    with env.begin(write=True) as txn:
        txn.cursor(db=db).putmulti(((op_key("j", (1, i)), VALUE) for i in range(records)), append=True)
    env.close()


def time_open(path: str, rounds: int) -> list[float]:
    key = op_key("j", (1, 4321))
    for _ in range(50):
        with Store.open(path, readonly=True) as store:
            store.get(key)
    per_call = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(500):
            with Store.open(path, readonly=True) as store:
                store.get(key)
        per_call.append((time.perf_counter() - start) / 500)
    return per_call


def walk(path: str) -> float:
    env = lmdb.open(path, readonly=True, lock=False, max_dbs=8)
    db = env.open_db(b"records", create=False)
    start = time.perf_counter()
    with env.begin(db=db) as txn:
        sum(1 for _ in txn.cursor().iternext(values=False))
    took = time.perf_counter() - start
    env.close()
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as path:
        make_store(path, args.records)
        opens = time_open(path, args.rounds)
        walk(path)  # the pages in the page cache, as for the open
        in_process = walk(path)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", WALK, path], check=True, capture_output=True)
        in_child = time.perf_counter() - start
    print(f"{args.records:,} records: open + get + close {statistics.median(opens) * 1e3:.3f} ms "
          f"(best {min(opens) * 1e3:.3f} ms); walk every record {in_process * 1e3:.1f} ms in this process, "
          f"{in_child * 1e3:.1f} ms in a child process")


if __name__ == "__main__":
    main()
