"""Runs of item records (``_store._runs``): a worker stores a chunk of plain results as one value, and
every reader sees one record per item, the same as if each had been written under its own key."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from durablemap import BatchItemStatus, durable_execution
from durablemap._errors import StoreError
from durablemap._records import item_key, op_key
from durablemap._store import Store
from durablemap._store._runs import RUN_MAX, parse_run, run_key, split_run
from durablemap.store import StoreReader
from durablemap.testing import crash_test

MAP = op_key("e", (1,))
STEP = (7).to_bytes(4, "big")  # an operation inside an item


def record(value: object) -> bytes:
    return msgpack.packb(value)


def run_of(first: int, count: int, tag: str) -> tuple[int, int, bytes]:
    return first, count, b"".join(record([tag, i]) for i in range(first, first + count))


def raw_keys(store_dir: Path) -> list[bytes]:
    """The keys as LMDB holds them (runs not expanded), read in another process: LMDB allows one
    handle on an environment per process."""
    code = ("import lmdb, sys\n"
            "env = lmdb.open(sys.argv[1], readonly=True, lock=False, max_dbs=8)\n"
            "db = env.open_db(b'records', create=False)\n"
            "with env.begin() as txn:\n"
            "    sys.stdout.write(' '.join(key.hex() for key, _ in txn.cursor(db=db)))\n")
    out = subprocess.run([sys.executable, "-c", code, str(store_dir)], capture_output=True, text=True, check=True)
    return [bytes.fromhex(key) for key in out.stdout.split()]


@pytest.fixture
def store_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as directory:
        yield Path(directory) / "s"


def test_run_keys_parse_and_sort_between_their_items(store_dir: Path) -> None:
    key = run_key(item_key(MAP, 10), 5)
    assert parse_run(key) == (MAP, 10, 5)
    assert item_key(MAP, 10) < key < item_key(MAP, 10) + (1).to_bytes(4, "big") < item_key(MAP, 11)
    for not_a_run in (MAP, item_key(MAP, 10), item_key(MAP, 10) + STEP, op_key("e", ()), b"\xff" * 9):
        assert parse_run(not_a_run) is None
    assert split_run(record(1) + record("two"), 2) == [record(1), record("two")]
    with pytest.raises(StoreError, match="fewer than its 3 records"):
        split_run(record(1) + record(2), 3)
    with pytest.raises(StoreError, match="more than its 1 records"):
        split_run(record(1) + record(2), 1)


def test_readers_see_a_runs_items_each_as_its_own_record(store_dir: Path) -> None:
    with Store.open(store_dir) as store:
        store.put(MAP, record("map"))
        store.put_runs(MAP, [run_of(0, 3, "a"), run_of(5, 2, "b")], [item_key(MAP, 3)], [record("three")])
        expected = [(0, record(["a", 0])), (1, record(["a", 1])), (2, record(["a", 2])), (3, record("three")),
                    (5, record(["b", 5])), (6, record(["b", 6]))]
        assert [(i, v) for i, _, v in store.scan_children(MAP)] == expected
        assert [k for _, k, _ in store.scan_children(MAP)] == [item_key(MAP, i) for i, _ in expected]
        assert list(store.scan(MAP)) == [(MAP, record("map"))] + [(item_key(MAP, i), v) for i, v in expected]
        assert store.children_columns(MAP) == ([i for i, _ in expected], [v for _, v in expected])
        assert store.children_columns(MAP, 1, 2) == ([1, 2], [record(["a", 1]), record(["a", 2])])
        assert store.children_columns(MAP, 6) == ([6], [record(["b", 6])])
        assert store.children_columns(MAP, 7) == ([], [])
        assert store.children_data(MAP) == ([i for i, _ in expected], b"".join(v for _, v in expected))
        assert store.children_data(MAP, 1, 4) == ([1, 2, 3, 5], b"".join(v for _, v in expected[1:5]))
        assert store.count_prefix(MAP) == 7
    assert len(raw_keys(store_dir)) == 4  # the map, two runs, item 3


def test_a_run_over_records_already_there_is_written_item_by_item(store_dir: Path) -> None:
    with Store.open(store_dir) as store:
        store.put(item_key(MAP, 2) + STEP, record("a step inside item 2"))
        store.put(item_key(MAP, 20), record("old 20"))
        store.put_runs(MAP, [run_of(0, 5, "a"), run_of(10, 5, "b"), run_of(18, 4, "c")], [], [])
        # 0..4 hold a step under item 2 and 18..21 item 20: item by item; 10..14 is a run.
        runs = [parse_run(key) for key in raw_keys(store_dir)]
        assert [run[1:] for run in runs if run is not None] == [(10, 5)]
        store.put_runs(MAP, [run_of(12, 5, "d")], [], [])  # over the run of 10..14: item by item
        assert [run[1:] for run in map(parse_run, raw_keys(store_dir)) if run is not None] == [(10, 5)]
        children = dict(zip(*store.children_columns(MAP), strict=True))
    assert children == {**{i: record(["a", i]) for i in range(5)}, 10: record(["b", 10]), 11: record(["b", 11]),
                        **{i: record(["d", i]) for i in range(12, 17)}, **{i: record(["c", i]) for i in range(18, 22)}}


def test_a_run_too_long_is_refused_before_anything_is_written(store_dir: Path) -> None:
    with Store.open(store_dir) as store:
        with pytest.raises(StoreError, match=f"runs hold 1 to {RUN_MAX} items"):
            store.put_runs(MAP, [run_of(0, 2, "a"), run_of(2, RUN_MAX + 1, "b")], [], [])
        assert store.count_prefix(MAP) == 0


# A model of one map's items: every write, a run or a record per item, is the item's record from then on.
_writes = st.lists(st.one_of(
    st.tuples(st.just("run"), st.integers(0, 60), st.integers(1, 12)),
    st.tuples(st.just("item"), st.integers(0, 70), st.just(0)),
    st.tuples(st.just("step"), st.integers(0, 70), st.just(0)),
), min_size=1, max_size=25)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=_writes, start=st.integers(0, 80), limit=st.integers(1, 30))
# Found by this test: an item's step written after its run; a run's last item overridden at a
# page's end; an item's own record taken before its run in one batch and the run in the next.
@example(writes=[("run", 0, 1), ("step", 0, 0)], start=0, limit=1)
@example(writes=[("run", 0, 2), ("item", 1, 0)], start=0, limit=2)
@example(writes=[("run", 8, 1), ("run", 1, 8)], start=0, limit=1)
def test_any_mix_of_runs_and_records_reads_as_the_last_write_of_each_item(
        store_dir: Path, writes: list[tuple[str, int, int]], start: int, limit: int) -> None:
    model: dict[bytes, bytes] = {}
    store_dir.mkdir(exist_ok=True)
    with Store.open(tempfile.mkdtemp(dir=store_dir)) as store:
        for n, (what, first, count) in enumerate(writes):
            tag = f"w{n}"
            if what == "run":
                store.put_runs(MAP, [run_of(first, count, tag)], [], [])
                model.update((item_key(MAP, i), record([tag, i])) for i in range(first, first + count))
            else:
                key = item_key(MAP, first) + (STEP if what == "step" else b"")
                store.put(key, record(tag))
                model[key] = record(tag)
        expected = sorted(model.items())
        assert list(store.scan(MAP)) == expected
        children = [(key, value) for key, value in expected if len(key) == len(MAP) + 4]
        assert [(k, v) for _, k, v in store.scan_children(MAP)] == children
        indexes = [int.from_bytes(key[-4:], "big") for key, _ in children]
        assert store.children_columns(MAP) == (indexes, [value for _, value in children])
        page = [(i, v) for i, (_, v) in zip(indexes, children, strict=True) if i >= start][:limit]
        assert store.children_columns(MAP, start, limit) == ([i for i, _ in page], [v for _, v in page])
        assert store.children_data(MAP) == (indexes, b"".join(value for _, value in children))
        assert store.children_data(MAP, start, limit) == ([i for i, _ in page], b"".join(v for _, v in page))
        assert store.count_prefix(MAP) == len(expected)


def square(ctx: object, x: int, index: int, inputs: object) -> int:
    return x * x


def label(ctx: object, x: int, index: int, inputs: object) -> object:
    return {"big": x} if x % 1000 == 999 else f"item {x}"


@durable_execution(progress=False)
def squares(event: dict[str, int], context: object) -> list[int]:
    result = context.map(range(event["n"]), square, name="squares")  # type: ignore[attr-defined]
    return [result.success_count, sum(result.get_results())]


@durable_execution(progress=False)
def labels(event: dict[str, int], context: object) -> int:
    return context.map(range(event["n"]), label, name="labels").success_count  # type: ignore[attr-defined,no-any-return]


def test_a_loky_map_of_tiny_items_is_stored_in_runs_and_read_back_whole(store_dir: Path) -> None:
    n = 50_000
    assert squares.run({"n": n}, store=str(store_dir), execution_id="x", workers=2) == [n, sum(i * i for i in range(n))]
    keys = raw_keys(store_dir)
    assert any(parse_run(key) is not None for key in keys)
    assert len(keys) < n // 10  # runs, not a key per item
    with StoreReader.open(store_dir) as reader:
        items = list(reader.items("x", "1"))
    assert [(item.index, item.status, item.result) for item in items] == [
        (i, BatchItemStatus.SUCCEEDED, i * i) for i in range(n)]
    # And run again, the map is replayed from its records: nothing runs.
    assert squares.run({"n": n}, store=str(store_dir), execution_id="x", workers=2) == [n, sum(i * i for i in range(n))]


def test_a_chunk_with_a_result_that_is_not_plain_stores_each_item_on_its_own(store_dir: Path) -> None:
    n = 20_000
    assert labels.run({"n": n}, store=str(store_dir), execution_id="x", workers=2) == n
    with StoreReader.open(store_dir) as reader:
        results = {item.index: item.result for item in reader.items("x", "1")}
    assert results == {x: {"big": x} if x % 1000 == 999 else f"item {x}" for x in range(n)}


def test_a_job_killed_right_after_a_run_commits_resumes_without_running_its_items_again() -> None:
    # The 1,000th item record to commit is inside a run: the job is SIGKILLed as that commit
    # returns, and the resume must find every item of the run recorded (none runs twice).
    report = crash_test("tests.test_runs:squares", {"n": 3000}, after=1000, kill="job", workers=2)
    assert report.crashed
    assert report.resumed_result == [3000, sum(i * i for i in range(3000))]
    assert report.ran_twice == {}


def exit_once(ctx: object, x: int, index: int, inputs: object) -> int:
    marker = Path(os.environ["DURABLEMAP_TEST_MARKER"])
    if index == 150_000 and not marker.exists():
        marker.touch()
        os._exit(3)  # the worker dies part-way through its chunk, once
    return x * x


@durable_execution(progress=False)
def squares_exiting_once(event: dict[str, int], context: object) -> int:
    return context.map(range(event["n"]), exit_once, name="squares").success_count  # type: ignore[attr-defined,no-any-return]


def test_a_worker_lost_part_way_through_a_large_chunk_is_settled_in_a_few_reads(
        store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Which of a lost chunk's thousands of items were recorded before the worker died is read a
    # stretch at a time: a read per item, each landing on a run of 4,096 records, took minutes.
    monkeypatch.setenv("DURABLEMAP_TEST_MARKER", str(tmp_path / "exited"))
    reads: list[int] = []
    children_columns = Store.children_columns

    def counted(self: Store, prefix_key: bytes, start: int = 0, limit: int | None = None) -> tuple[list[int], list[bytes]]:
        reads.append(start)
        return children_columns(self, prefix_key, start, limit)

    monkeypatch.setattr(Store, "children_columns", counted)
    n = 300_000
    assert squares_exiting_once.run({"n": n}, store=str(store_dir), execution_id="x", workers=2) == n
    assert (tmp_path / "exited").exists()
    assert 1 <= len(reads) <= 20
    with StoreReader.open(store_dir) as reader:
        assert [item.result for item in reader.items("x", "1")] == [i * i for i in range(n)]
