"""Damaging a page of a real store's records, as a disk or a stray write would, for the damaged-store
and salvage tests.

Which page holds which records depends on how a job's commits fell, and a page that looks like a leaf
of records may be a free page (an old copy, no longer in the tree), where damage changes nothing. So
each helper damages a leaf of records, checks with a plain LMDB scan in a subprocess that LMDB now
meets the damage the way the test needs (an LMDB error, or an abort), and else restores the file and
tries the next leaf.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from durablemap._store._pages import leaf_nodes
from durablemap._store._runs import parse_run

PAGE = 4096
P_BRANCH, P_LEAF = 0x01, 0x02
SCAN = ("import lmdb, sys\nenv = lmdb.open(sys.argv[1], readonly=True, lock=False, max_dbs=8)\n"
        "db = env.open_db(b'records', create=False)\nwith env.begin(db=db) as txn:\n"
        "    print(sum(1 for _ in txn.cursor()))\n")


def finished_job(root: Path, job: str, items: int) -> tuple[Path, Path]:
    """The script ``job`` (it takes a store's path) written under ``root``, and the store of its run to
    the end (it prints RESULT and the number of items)."""
    script = root / "job.py"
    script.write_text(job)
    store = root / "good"
    out = subprocess.run([sys.executable, str(script), str(store)], capture_output=True, timeout=300, check=False)
    assert out.returncode == 0 and f"RESULT {items}".encode() in out.stdout, out.stderr.decode()
    return script, store


def leaves_of_records(data: bytes, *, first: bool = False) -> list[int]:
    """Pages that look like leaves of the records of execution "j", from a third of the file on: those
    whose first key is the execution's own record (the first leaf) when ``first``, the others if not."""
    pages, found = len(data) // PAGE, []
    for page in range(2 if first else pages // 3, pages):
        at = page * PAGE
        if int.from_bytes(data[at + 10:at + 12], "little") != P_LEAF or int.from_bytes(data[at + 12:at + 14],
                                                                                        "little") <= 16:
            continue
        node = at + int.from_bytes(data[at + 16:at + 18], "little")  # the first node
        size = int.from_bytes(data[node + 6:node + 8], "little")
        if data[node + 8:node + 10] == b"j\x00" and (size == 2) == first:
            found.append(page)
    return found


def plain_scan(store: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-c", SCAN, str(store)], capture_output=True, timeout=60, check=False)


def lmdb_error(scan: subprocess.CompletedProcess[bytes]) -> bool:
    return scan.returncode == 1 and b"lmdb." in scan.stderr


def lmdb_abort(scan: subprocess.CompletedProcess[bytes]) -> bool:
    return scan.returncode == -signal.SIGABRT and b"Assertion" in scan.stderr


def random_bytes(fh: object, page: int) -> None:
    fh.seek(page * PAGE)  # type: ignore[attr-defined]
    fh.write(random.Random(page).randbytes(PAGE))  # type: ignore[attr-defined]


def branch_flag(fh: object, page: int) -> None:
    """Mark the leaf as a branch page: LMDB's cursor walking into it trips its assertion IS_LEAF."""
    fh.seek(page * PAGE + 10)  # type: ignore[attr-defined]
    fh.write(P_BRANCH.to_bytes(2, "little"))  # type: ignore[attr-defined]


def damage_a_leaf(store: Path, damage: Callable[[object, int], None],
                  shows: Callable[[subprocess.CompletedProcess[bytes]], bool], *, first: bool = False) -> int:
    """Damage a leaf of records of ``store`` with ``damage`` such that a plain scan ``shows`` it;
    returns the page."""
    data_path = store / "data.mdb"
    data = data_path.read_bytes()
    candidates = leaves_of_records(data, first=first)
    if not first:
        candidates = candidates[len(candidates) // 2:] + candidates[:len(candidates) // 2]
    for page in candidates[:8]:
        with open(data_path, "r+b") as fh:
            damage(fh, page)
        if shows(plain_scan(store)):
            return page
        data_path.write_bytes(data)  # a free page, or damage LMDB met otherwise: the next leaf
    raise AssertionError(f"no leaf of records among {candidates[:8]} shows the damage as wanted")


def records_roots(data: bytes) -> set[int]:
    """The root pages of the records database as of each of the two commits data.mdb's header pages
    record: the main database's root (in each header) is a leaf that names the other databases."""
    roots = set()
    for meta in (0, 1):
        main = int.from_bytes(data[meta * PAGE + 128:meta * PAGE + 136], "little")  # its MDB_db's md_root
        at = main * PAGE
        lower = int.from_bytes(data[at + 12:at + 14], "little")
        for slot in range(at + 16, at + lower, 2):
            node = at + int.from_bytes(data[slot:slot + 2], "little")
            size = int.from_bytes(data[node + 6:node + 8], "little")
            if data[node + 8:node + 8 + size] == b"records":
                db = node + 8 + size  # an MDB_db: md_root is its last 8 bytes
                roots.add(int.from_bytes(data[db + 40:db + 48], "little"))
    return roots


def pages_holding(store: Path, key: bytes) -> set[int]:
    """Every page of data.mdb, live or freed, laid out as a leaf with the record at ``key`` (an item's,
    alone or in a run)."""
    found = set()
    for page, node, _ in leaf_nodes(str(store / "data.mdb"), PAGE):
        run = parse_run(node)
        if node == key or (run is not None and run[0] == key[:len(run[0])] and len(key) == len(run[0]) + 4
                           and run[1] <= int.from_bytes(key[-4:], "big") < run[1] + run[2]):
            found.add(page)
    return found


def unflag(fh: object, page: int) -> None:
    """Clear the page's flags, neither branch nor leaf: LMDB reports it corrupted (no abort), and a
    reading of the file's pages takes it for no leaf."""
    fh.seek(page * PAGE + 10)  # type: ignore[attr-defined]
    fh.write(bytes(2))  # type: ignore[attr-defined]


def take_out(store: Path, prefix: bytes) -> None:
    """Take the records whose keys start with ``prefix`` (say an execution's, the last in key order)
    out of every leaf of data.mdb, live or freed: a leaf that holds only theirs is zeroed; from a
    leaf where they follow others, they are cut off (fewer node offsets, a smaller ``lower``)."""
    keys: dict[int, list[bytes]] = {}
    for page, key, _ in leaf_nodes(str(store / "data.mdb"), PAGE):
        keys.setdefault(page, []).append(key)
    with open(store / "data.mdb", "r+b") as fh:
        for page, held in keys.items():
            theirs = sum(key.startswith(prefix) for key in held)
            if theirs == len(held):
                fh.seek(page * PAGE)
                fh.write(bytes(PAGE))
            elif theirs:
                fh.seek(page * PAGE + 12)
                fh.write((16 + 2 * (len(held) - theirs)).to_bytes(2, "little"))
