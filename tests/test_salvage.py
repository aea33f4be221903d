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
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import lmdb
import pytest

from durablemap import StoreError
from durablemap._store import op_key
from durablemap._store._pages import leaf_nodes
from durablemap.store import SalvageReport, StoreReader
from durablemap.store import salvage as store_salvage

from ._damage import (
    branch_flag,
    damage_a_leaf,
    finished_job,
    lmdb_abort,
    lmdb_error,
    pages_holding,
    plain_scan,
    random_bytes,
    records_roots,
    take_out,
    unflag,
)

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
        print("RESULT", handler.run(None, store=sys.argv[1], execution_id=os.environ.get("SALVAGE_EXECUTION", "j"),
                                    workers=2, progress=False))
'''.replace("N_ITEMS", str(N)))


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The job's script, and the store of its finished run (20,000 items: about 500 pages)."""
    return finished_job(tmp_path_factory.mktemp("salvage"), JOB, N)


@pytest.fixture(scope="module")
def two(job: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The finished store of ``job`` with a second execution, "k", of the same job run to the end."""
    script, good = job
    store = tmp_path_factory.mktemp("two") / "store"
    shutil.copytree(good, store)
    second = subprocess.run([sys.executable, str(script), str(store)], capture_output=True, timeout=300, check=False,
                            env={**os.environ, "SALVAGE_EXECUTION": "k"})
    assert f"RESULT {N}".encode() in second.stdout, second.stderr.decode()
    return store


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


def salvage_copy(damaged: Path, tmp_path: Path) -> tuple[dict[str, tuple[str, int]], Path, subprocess.CompletedProcess[str]]:
    """The damaged store's fingerprint, the new store's path, and the salvage into it (CLI)."""
    before = fingerprint(damaged)
    new = tmp_path / "new"
    return before, new, salvage(str(damaged), str(new))


def item_results(store: Path, execution: str = "j") -> dict[int, object]:
    with StoreReader.open(store) as reader:
        return {item.index: item.result for item in reader.items(execution, "1") if item.status == "SUCCEEDED"}


def rerun(script: Path, store: Path, tmp_path: Path, execution: str = "j") -> set[int]:
    """Run the job (execution ``execution``) again on ``store``; the items it ran."""
    ran = tmp_path / f"ran-{execution}"
    ran.mkdir()
    out = subprocess.run([sys.executable, str(script), str(store)], capture_output=True, timeout=300, check=False,
                         env={**os.environ, "SALVAGE_RAN": str(ran), "SALVAGE_EXECUTION": execution})
    assert out.returncode == 0 and f"RESULT {N}".encode() in out.stdout, out.stderr.decode()
    indexes = [int(line) for path in ran.iterdir() for line in path.read_text().split()]
    assert len(indexes) == len(set(indexes)), "an item ran twice"
    return set(indexes)


def check_salvage(script: Path, damaged: Path, new: Path, tmp_path: Path, out: subprocess.CompletedProcess[str],
                  before: dict[str, tuple[str, int]]) -> set[int]:
    """The damaged store is untouched; the new one resumes and runs exactly the lost items, all
    results right. Returns the lost items."""
    assert "Traceback" not in out.stderr, out.stderr
    assert fingerprint(damaged) == before, "salvage changed the damaged store"
    saved = item_results(new)
    assert all(value == {"i": i, "sq": i * i} for i, value in saved.items())
    lost = set(range(N)) - set(saved)
    assert rerun(script, new, tmp_path) == lost
    assert item_results(new) == {i: {"i": i, "sq": i * i} for i in range(N)}
    return lost


def test_a_page_of_random_bytes(tmp_path: Path, job: tuple[Path, Path]) -> None:
    script, good = job
    damaged = damaged_copy(good, tmp_path, lambda data: None)
    damage_a_leaf(damaged, random_bytes, lmdb_error)  # a leaf in the middle: LMDB reports an error
    before, new, out = salvage_copy(damaged, tmp_path)
    assert out.returncode == 1, (out.stdout, out.stderr)  # 1: salvaged, with records lost
    assert "LOST: unreadable records: keys after j:1/" in out.stdout, out.stdout
    assert "reopened j:1 (it lost records)" in out.stdout, out.stdout
    lost = check_salvage(script, damaged, new, tmp_path, out, before)
    assert_lost_within_the_gap(lost, out.stdout)


FOUND_IN_PAGES = "found by reading data.mdb's pages directly"


def assert_lost_within_the_gap(lost: set[int], report: str) -> None:
    """What the report says LMDB could not read holds what was lost: one run of items, at most a
    page's worth. An older copy of the damaged page (freed by a later commit) may have given some
    or all of them back, read from the pages directly, and then the report says so."""
    gaps = [(int(after or -1), int(before or N)) for after, before in
            re.findall(r"LOST: unreadable records: keys after (?:j:1/(\d+)|\(none\)) and before (?:j:1/(\d+)|\(none\))",
                       report)]
    assert len(gaps) == 1, report
    after, before = gaps[0]
    assert lost <= set(range(after + 1, before)) and before - after < 200, (sorted(lost), report)
    assert not lost or max(lost) - min(lost) == len(lost) - 1, sorted(lost)
    assert lost or FOUND_IN_PAGES in report, report


def test_salvage_from_python(tmp_path: Path, job: tuple[Path, Path]) -> None:
    """durablemap.store.salvage is the command's work, with the report as an object."""
    script, good = job
    damaged = damaged_copy(good, tmp_path, lambda data: None)
    damage_a_leaf(damaged, random_bytes, lmdb_error)
    before, new = fingerprint(damaged), tmp_path / "new"
    report = store_salvage(damaged, new)
    assert isinstance(report, SalvageReport) and not report.complete
    assert "j:1" in report.reopened and report.lines()[-1].startswith("run the job on the new store")
    saved_items = report.saved[("j", "1")]
    lost = check_salvage(script, damaged, new, tmp_path, subprocess.CompletedProcess([], 0, "", ""), before)
    assert saved_items == N - len(lost)
    assert_lost_within_the_gap(lost, "\n".join(report.lines()))
    assert store_salvage(good, tmp_path / "whole").complete
    with pytest.raises(StoreError, match="already exists and is not an empty directory"):
        store_salvage(good, new)


def test_the_first_page_of_records(tmp_path: Path, job: tuple[Path, Path]) -> None:
    script, good = job
    damaged = damaged_copy(good, tmp_path, lambda data: None)
    # The leaf that holds the execution's own record, the map's record and its first items: reading
    # fails before the first record, and must find the rest on its own.
    damage_a_leaf(damaged, random_bytes, lambda scan: lmdb_error(scan) or lmdb_abort(scan), first=True)
    before, new, out = salvage_copy(damaged, tmp_path)
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "LOST: unreadable records: keys after (none) and before j:1/" in out.stdout, out.stdout
    # The map's own record was on that page: found in an older copy of the page (the map's last
    # record freed it), or reported lost; either way the next run records it again and runs only
    # the items whose records were lost.
    assert "LOST: the record of map j:1 (its items' records were saved" in out.stdout or FOUND_IN_PAGES in out.stdout
    lost = check_salvage(script, damaged, new, tmp_path, out, before)
    assert_lost_within_the_gap(lost, out.stdout)
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
    check_salvage(script, damaged, new, tmp_path, out, before)


def test_records_past_the_reach_of_lmdb_are_read_from_the_pages(tmp_path: Path, job: tuple[Path, Path],
                                                                two: Path) -> None:
    """Two executions, then the store cut short: the pages written last, where the roots of LMDB's
    trees are, are gone, and LMDB reaches few records. The leaves left in the file are read
    directly: most records come back, every one right, and each execution's next run runs exactly
    what was lost. Which records LMDB still reaches, and which the cut takes, depends on how the two
    runs' commits fell: the cut is at three quarters of the file, else at the first of a few other
    places where the pages give back records and at least half of them all come back."""
    script, _ = job
    for cut in (3 / 4, 2 / 3, 5 / 6, 7 / 8, 3 / 5, 4 / 5, 1 / 2):
        store, new = tmp_path / f"cut-{cut:.3f}", tmp_path / f"new-{cut:.3f}"
        shutil.copytree(two, store)
        data = store / "data.mdb"
        os.truncate(data, int(data.stat().st_size * cut) // 4096 * 4096)
        before = fingerprint(store)
        out = salvage(str(new), "--store", str(store), "--json")
        assert out.returncode == 1 and "Traceback" not in out.stderr, (out.stdout, out.stderr)
        report = json.loads(out.stdout)
        assert not report["complete"] and fingerprint(store) == before, report
        saved = {execution: item_results(new, execution) for execution in ("j", "k")}
        if report["from_pages"] > 0 and sum(map(len, saved.values())) >= N:
            break
    assert report["from_pages"] > 0 and sum(map(len, saved.values())) >= N, report
    for execution, results in saved.items():
        assert all(value == {"i": i, "sq": i * i} for i, value in results.items())
        assert rerun(script, new, tmp_path, execution) == set(range(N)) - set(results)
        assert item_results(new, execution) == {i: {"i": i, "sq": i * i} for i in range(N)}


def test_a_map_that_lost_items_where_lmdb_reads_nothing_is_resumed(tmp_path: Path, job: tuple[Path, Path]) -> None:
    """The records tree's root is damaged (LMDB reads no record: the range it could not read has no
    bounds) and so is every copy of the leaf holding item 10,000: the pages give back every record but
    that leaf's, the map's own finished record among them. The map is reopened all the same, and the
    next run runs exactly the lost items (it once replayed the map without them)."""
    script, good = job
    store = tmp_path / "damaged"
    shutil.copytree(good, store)
    data = (store / "data.mdb").read_bytes()
    with open(store / "data.mdb", "r+b") as fh:
        for page in records_roots(data) | pages_holding(store, op_key("j", (1, N // 2))):
            unflag(fh, page)
    assert lmdb_error(plain_scan(store))
    before, new, out = salvage_copy(store, tmp_path)
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "LOST: unreadable records: keys after (none) and before (none)" in out.stdout, out.stdout
    assert "reopened j:1 (it lost records)" in out.stdout and FOUND_IN_PAGES in out.stdout, out.stdout
    lost = check_salvage(script, store, new, tmp_path, out, before)
    assert N // 2 in lost and len(lost) < 200 and max(lost) - min(lost) == len(lost) - 1, sorted(lost)


def test_damage_that_kills_the_reader_at_every_probe_past_it(tmp_path: Path, job: tuple[Path, Path],
                                                              two: Path) -> None:
    """Execution k's records taken out of every leaf: the leaves that hold only k's zeroed, the
    nodes of k cut from the end of a leaf that holds the last of j's too. Each key LMDB is asked for
    past j's last item then lands on j's last leaf and kills the reader as it steps on into a zeroed
    page (LMDB's assertion). Probing every 16th key gives up after a few deaths (once 4,096 process
    starts, three minutes), and the salvage still saves every record left: k's next run runs them all."""
    script, _ = job
    store = tmp_path / "damaged"
    shutil.copytree(two, store)
    take_out(store, b"k\x00")
    before, new, out = salvage_copy(store, tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr, (out.stdout, out.stderr)
    deaths = re.search(r"the reading process died (\d+) time\(s\).*SIGABRT", out.stdout)
    assert deaths and int(deaths[1]) < 300, out.stdout
    assert "LOST: unreadable records: keys after j:1/19999 and before (none)" in out.stdout, out.stdout
    assert fingerprint(store) == before and len(item_results(new, "j")) == N
    for execution in ("j", "k"):
        saved = item_results(new, execution)
        assert all(value == {"i": i, "sq": i * i} for i, value in saved.items())
        assert rerun(script, new, tmp_path, execution) == set(range(N)) - set(saved)
        assert item_results(new, execution) == {i: {"i": i, "sq": i * i} for i in range(N)}


def test_a_zeroed_header_page(tmp_path: Path, job: tuple[Path, Path]) -> None:
    script, good = job
    damaged = damaged_copy(good, tmp_path, lambda data: data.write_bytes(bytes(4096) + data.read_bytes()[4096:]))
    before, new, out = salvage_copy(damaged, tmp_path)
    assert "header page 0 is damaged: the store was read as of the commit its other header page records" in out.stdout
    assert out.returncode == 1, (out.stdout, out.stderr)
    check_salvage(script, damaged, new, tmp_path, out, before)


def test_a_page_that_makes_lmdb_abort(tmp_path: Path, job: tuple[Path, Path]) -> None:
    script, good = job
    damaged = damaged_copy(good, tmp_path, lambda data: None)
    page = damage_a_leaf(damaged, branch_flag, lmdb_abort)  # LMDB aborts a plain scan on it
    before, new, out = salvage_copy(damaged, tmp_path)
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
    before, new, out = salvage_copy(damaged, tmp_path)
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


def test_reading_pages_of_random_bytes_never_fails(tmp_path: Path) -> None:
    """Pages read directly may hold anything: laid out as leaves or not, offsets and sizes pointing
    anywhere (past the page, past the file); reading them yields what fits and never raises."""
    rng = random.Random(17)
    data = bytearray(rng.randbytes(4096 * 64))
    for page in range(2, 64, 2):  # every other page flagged as a leaf, with a plausible lower/upper
        data[page * 4096 + 10:page * 4096 + 16] = (0x02).to_bytes(2, "little") + rng.randrange(16, 200).to_bytes(
            2, "little") + rng.randrange(200, 4096).to_bytes(2, "little")
    path = tmp_path / "data.mdb"
    path.write_bytes(bytes(data))
    nodes = list(leaf_nodes(str(path), 4096))  # (which of them are records, _salvage tells: tests above)
    assert all(2 <= page < 64 and len(key) <= 4096 - 24 for page, key, _ in nodes)
