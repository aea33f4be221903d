"""``durablemap salvage``: a damaged store's readable records copied into a new store, what was lost
reported, the damaged store never written; the job run again on the new store runs exactly the items
whose records were lost, and every item's result is right.

Damage is done to real copies of a finished job's store, as a user's store gets damaged: the file cut
short, a page of random bytes in the middle, a header page zeroed, and a page LMDB walks into and
aborts the process on (its assertion, which Python cannot catch). Every salvage runs the installed
command line in a subprocess; the job runs as a script (handler.run), also in a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import lmdb
import pytest

from durablemap.store import StoreReader

N = 20_000
JOB = textwrap.dedent('''
    import os, sys
    from durablemap import durable_execution

    RAN = os.environ.get("SALVAGE_RAN")

    def work(context, item, index, items):
        if RAN:
            fd = os.open(os.path.join(RAN, str(os.getpid())), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            os.write(fd, f"{index}\\n".encode())
            os.close(fd)
        return {"i": index, "sq": index * index}

    @durable_execution
    def handler(event, context):
        return context.map(list(range(N_ITEMS)), work, name="m").success_count

    if __name__ == "__main__":
        print("RESULT", handler.run(None, store=sys.argv[1], execution_id="j", workers=2, progress=False))
'''.replace("N_ITEMS", str(N)))


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The job's script, and the store of its finished run (20,000 items: about 500 pages)."""
    root = tmp_path_factory.mktemp("salvage")
    script = root / "job.py"
    script.write_text(JOB)
    store = root / "good"
    out = subprocess.run([sys.executable, str(script), str(store)], capture_output=True, timeout=300, check=False)
    assert out.returncode == 0 and f"RESULT {N}".encode() in out.stdout, out.stderr.decode()
    return script, store


def damaged_copy(good: Path, tmp_path: Path, damage: Callable[[Path], None]) -> Path:
    store = tmp_path / "damaged"
    store.mkdir()
    for name in ("data.mdb", "lock.mdb"):
        shutil.copyfile(good / name, store / name)
    damage(store / "data.mdb")
    return store


def fingerprint(store: Path) -> dict[str, tuple[str, int]]:
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in store.iterdir()}


def salvage(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "durablemap", "salvage", *args], capture_output=True, text=True,
                          timeout=300, check=False)


def item_results(store: Path) -> dict[int, object]:
    with StoreReader.open(store) as reader:
        return {item.index: item.result for item in reader.items("j", "1") if item.status == "SUCCEEDED"}


def rerun(script: Path, store: Path, tmp_path: Path) -> set[int]:
    """Run the job again on ``store``; the items it ran."""
    ran = tmp_path / "ran"
    ran.mkdir()
    out = subprocess.run([sys.executable, str(script), str(store)], capture_output=True, timeout=300, check=False,
                         env={**os.environ, "SALVAGE_RAN": str(ran)})
    assert out.returncode == 0 and f"RESULT {N}".encode() in out.stdout, out.stderr.decode()
    indexes = [int(line) for path in ran.iterdir() for line in path.read_text().split()]
    assert len(indexes) == len(set(indexes)), "an item ran twice"
    return set(indexes)


def check_salvage(script: Path, damaged: Path, new: Path, tmp_path: Path, out: subprocess.CompletedProcess[str],
                  before: dict[str, tuple[str, int]], *, map_record_lost: bool = False) -> set[int]:
    """The damaged store is untouched; the new one resumes and runs exactly the lost items (all of
    them when the map's own record was lost), all results right. Returns the lost items."""
    assert "Traceback" not in out.stderr, out.stderr
    assert fingerprint(damaged) == before, "salvage changed the damaged store"
    saved = item_results(new)
    assert all(value == {"i": i, "sq": i * i} for i, value in saved.items())
    lost = set(range(N)) - set(saved)
    assert rerun(script, new, tmp_path) == (set(range(N)) if map_record_lost else lost)
    assert item_results(new) == {i: {"i": i, "sq": i * i} for i in range(N)}
    return lost


def random_bytes_over_a_leaf(data: Path) -> None:
    """A page of records in the middle of the file overwritten with random bytes (a leaf: which page
    that is depends on how the job's commits fell; a free page would show no damage at all)."""
    leaves = leaves_of_records(data.read_bytes())
    page = leaves[len(leaves) // 2]
    with open(data, "r+b") as fh:
        fh.seek(page * 4096)
        fh.write(random.Random(page).randbytes(4096))


def test_a_page_of_random_bytes(tmp_path: Path, job: tuple[Path, Path]) -> None:
    script, good = job
    damaged = damaged_copy(good, tmp_path, random_bytes_over_a_leaf)
    before = fingerprint(damaged)
    new = tmp_path / "new"
    out = salvage(str(damaged), str(new))
    assert out.returncode == 1, (out.stdout, out.stderr)  # 1: salvaged, with records lost
    assert "LOST: unreadable records: keys after j:1/" in out.stdout, out.stdout
    assert "reopened j:1 (it lost records)" in out.stdout, out.stdout
    lost = check_salvage(script, damaged, new, tmp_path, out, before)
    # What the report says was lost is what was lost: one run of items, a page's worth.
    assert lost and len(lost) < 200 and max(lost) - min(lost) == len(lost) - 1, sorted(lost)
    assert f"keys after j:1/{min(lost) - 1} and before j:1/{max(lost) + 1}" in out.stdout, (sorted(lost), out.stdout)


def first_leaf_of_records(data: Path) -> None:
    """Random bytes over the leaf that holds the execution's own record, the map's record and its
    first items (and over old copies of it in free pages): reading fails before the first record, and
    must find the rest on its own."""
    raw, found = data.read_bytes(), 0
    for page in range(2, len(raw) // 4096):  # the leaf in the tree, and old copies of it in free pages
        at = page * 4096
        if int.from_bytes(raw[at + 10:at + 12], "little") == 0x02:  # P_LEAF
            node = at + int.from_bytes(raw[at + 16:at + 18], "little")
            if int.from_bytes(raw[node + 6:node + 8], "little") == 2 and raw[node + 8:node + 10] == b"j\x00":
                with open(data, "r+b") as fh:
                    fh.seek(at)
                    fh.write(random.Random(page).randbytes(4096))
                found += 1
    assert found, "no leaf page starts with the execution's record"


def test_the_first_page_of_records(tmp_path: Path, job: tuple[Path, Path]) -> None:
    script, good = job
    damaged = damaged_copy(good, tmp_path, first_leaf_of_records)
    before = fingerprint(damaged)
    new = tmp_path / "new"
    out = salvage(str(damaged), str(new))
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "LOST: unreadable records: keys after (none) and before j:1/" in out.stdout, out.stdout
    # The map's own record was on that page: a run resumes a map from its record, so all its items run
    # again (their results are the same); the report says so.
    assert "LOST: the record of map j:1 (its items' records were saved" in out.stdout, out.stdout
    lost = check_salvage(script, damaged, new, tmp_path, out, before, map_record_lost=True)
    assert lost and min(lost) == 0 and len(lost) < 200 and max(lost) == len(lost) - 1, sorted(lost)
    with StoreReader.open(new) as reader:  # the execution's record was lost: rebuilt from the index
        assert [e.status for e in reader.executions()] == ["SUCCEEDED"]


def test_a_store_cut_short(tmp_path: Path, job: tuple[Path, Path]) -> None:
    script, good = job
    damaged = damaged_copy(good, tmp_path, lambda data: os.truncate(data, data.stat().st_size // 2))
    before = fingerprint(damaged)
    new = tmp_path / "new"
    out = salvage(str(new), "--store", str(damaged), "--json")
    assert out.returncode == 1, (out.stdout, out.stderr)
    report = json.loads(out.stdout)
    assert not report["complete"]
    assert any("bytes cut off" in repair for repair in report["repairs"]), report
    assert report["lost_ranges"], report
    assert not [name for name in os.listdir(new) if name.startswith(".salvage")], "the repaired copy was left"
    check_salvage(script, damaged, new, tmp_path, out, before, map_record_lost="j:1" in report["orphaned_maps"])


def test_a_zeroed_header_page(tmp_path: Path, job: tuple[Path, Path]) -> None:
    script, good = job
    damaged = damaged_copy(good, tmp_path, lambda data: data.write_bytes(bytes(4096) + data.read_bytes()[4096:]))
    before = fingerprint(damaged)
    new = tmp_path / "new"
    out = salvage(str(damaged), str(new))
    assert "header page 0 is damaged: the store was read as of the commit its other header page records" in out.stdout
    assert out.returncode == 1, (out.stdout, out.stderr)
    check_salvage(script, damaged, new, tmp_path, out, before)


def leaves_of_records(data: bytes) -> list[int]:
    """Leaf pages of the records' B-tree (their first key is a record key, not the execution's own:
    not the first leaf), from a third of the file on."""
    pages, found = len(data) // 4096, []
    for page in range(pages // 3, pages):
        head = data[page * 4096:page * 4096 + 32]
        flags, lower = int.from_bytes(head[10:12], "little"), int.from_bytes(head[12:14], "little")
        if flags == 0x02 and lower > 16:  # P_LEAF, with nodes
            node = int.from_bytes(data[page * 4096 + 16:page * 4096 + 18], "little")  # first node's offset
            size = int.from_bytes(data[page * 4096 + node + 6:page * 4096 + node + 8], "little")
            if data[page * 4096 + node + 8:page * 4096 + node + 10] == b"j\x00" and size > 2:  # not the first
                found.append(page)
    return found


SCAN = "import lmdb, sys\nenv = lmdb.open(sys.argv[1], readonly=True, lock=False, max_dbs=8)\n" \
       "db = env.open_db(b'records', create=False)\nwith env.begin(db=db) as txn:\n    print(sum(1 for _ in txn.cursor()))\n"


def mark_a_leaf_as_a_branch(store: Path) -> int:
    """Mark a leaf page of records as a branch page, such that LMDB's cursor walking into it aborts
    the process on its assertion ``IS_LEAF(mp)`` (checked with a plain scan); returns the page."""
    data_path = store / "data.mdb"
    data = data_path.read_bytes()
    for page in leaves_of_records(data)[:5]:
        with open(data_path, "r+b") as fh:
            fh.seek(page * 4096 + 10)
            fh.write((0x01).to_bytes(2, "little"))  # P_BRANCH
        plain = subprocess.run([sys.executable, "-c", SCAN, str(store)], capture_output=True, timeout=60, check=False)
        if plain.returncode == -signal.SIGABRT and b"Assertion" in plain.stderr:
            return page
        data_path.write_bytes(data)  # this one did not make LMDB abort: try the next leaf
    raise AssertionError("no leaf page found whose damage makes LMDB abort")


def test_a_page_that_makes_lmdb_abort(tmp_path: Path, job: tuple[Path, Path]) -> None:
    script, good = job
    damaged = damaged_copy(good, tmp_path, lambda data: None)
    page = mark_a_leaf_as_a_branch(damaged)
    before = fingerprint(damaged)
    new = tmp_path / "new"
    out = salvage(str(damaged), str(new))
    assert out.returncode == 1, (page, out.stdout, out.stderr)
    assert "the reading process died" in out.stdout and "SIGABRT" in out.stdout, (page, out.stdout)
    lost = check_salvage(script, damaged, new, tmp_path, out, before)
    assert lost and len(lost) < 200, (page, sorted(lost), out.stdout)


def test_an_intact_store_is_copied_whole(tmp_path: Path, job: tuple[Path, Path]) -> None:
    _, good = job
    new = tmp_path / "copy"
    out = salvage(str(good), str(new))
    assert out.returncode == 0 and "nothing was lost" in out.stdout, (out.stdout, out.stderr)
    assert item_results(new) == {i: {"i": i, "sq": i * i} for i in range(N)}
    with StoreReader.open(new) as reader:
        assert [e.status for e in reader.executions()] == ["SUCCEEDED"]


def test_the_target_must_be_new(tmp_path: Path, job: tuple[Path, Path]) -> None:
    _, good = job
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    out = salvage(str(good), str(tmp_path / "busy"))
    assert out.returncode == 2 and "already exists and is not an empty directory" in out.stderr, out
    out = salvage(str(good), str(good / "inside"))
    assert out.returncode == 2 and "is inside the damaged store" in out.stderr, out


def test_records_that_are_not_records_are_skipped_and_counted(tmp_path: Path, job: tuple[Path, Path]) -> None:
    """Three item records whose values are not msgpack records (the B-tree itself intact): skipped,
    counted under their map, and the map reopened so that the run runs exactly those three items."""
    script, good = job
    damaged = damaged_copy(good, tmp_path, lambda data: None)
    spoiled = (17, 4242, 19999)
    env = lmdb.open(str(damaged), max_dbs=8)
    with env.begin(write=True, db=env.open_db(b"records", create=False)) as txn:
        for index in spoiled:
            assert txn.replace(b"j\x00" + (1).to_bytes(4, "big") + index.to_bytes(4, "big"), b"\xc1 not msgpack")
    env.close()
    before = fingerprint(damaged)
    new = tmp_path / "new"
    out = salvage(str(damaged), str(new))
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "LOST: 3 records of execution j under operation 1 that are not records (skipped)" in out.stdout, out.stdout
    assert "reopened j:1 (it lost records)" in out.stdout, out.stdout
    assert check_salvage(script, damaged, new, tmp_path, out, before) == set(spoiled)


HOLD = "import sys, time\nfrom durablemap._store import Store\nstore = Store.open(sys.argv[1], readonly=True)\n" \
       "print('open', flush=True)\ntime.sleep(60)\n"


def test_a_store_open_in_another_process_is_refused(tmp_path: Path, job: tuple[Path, Path]) -> None:
    _, good = job
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(good)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        out = salvage(str(good), str(tmp_path / "new"))
        assert out.returncode == 2 and f"is open in pid {holder.pid}" in out.stderr, out
        assert not (tmp_path / "new").exists()
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
