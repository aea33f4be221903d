"""One contract for the one store interface (``_store._interface.RecordStore``), run against each
thing that implements it: the LMDB store, a remote worker's journal, and the in-memory records
``durablemap.testing`` replays from."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from durablemap._errors import StoreError
from durablemap._records import item_key, op_key
from durablemap._store import Store
from durablemap._store._interface import MemoryRecords, RecordStore
from durablemap.executors._journal import Journal


@pytest.fixture(params=["lmdb", "journal", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RecordStore]:
    if request.param == "lmdb":
        with Store.open(tmp_path / "s") as lmdb_store:
            yield lmdb_store
    elif request.param == "journal":
        yield Journal()
    else:
        yield MemoryRecords()


MAP = op_key("e", (1,))


def fill_map(store: RecordStore) -> None:
    """A map with items 0, 1, 2 and 300, items 1 and 300 with operations inside them."""
    store.put(MAP, b"map")
    store.put_columns([item_key(MAP, i) for i in (2, 0)], [b"item2", b"item0"])
    store.put_many([(item_key(MAP, 1), b"item1"), (item_key(MAP, 1) + (0).to_bytes(4, "big"), b"step"),
                    (item_key(MAP, 300), b"item300"), (item_key(MAP, 300) + (5).to_bytes(4, "big"), b"x")])
    store.put(op_key("e", (2,)), b"next op")
    store.put(op_key("ee", (1, 0)), b"another execution")


def test_get_put_overwrite(store: RecordStore) -> None:
    key = op_key("e", (3,))
    assert store.get(key) is None
    store.put(key, b"a")
    store.put(key, b"b")
    assert store.get(key) == b"b"


def test_scan_is_in_key_order_and_keeps_to_its_prefix(store: RecordStore) -> None:
    fill_map(store)
    keys = [key for key, _ in store.scan(MAP)]
    assert keys == sorted(keys)
    assert [value for _, value in store.scan(MAP)] == [b"map", b"item0", b"item1", b"step", b"item2",
                                                       b"item300", b"x"]
    assert [value for _, value in store.scan(op_key("e", ()))][-1] == b"next op"  # not "ee"'s record


def test_children_are_the_direct_children_in_index_order(store: RecordStore) -> None:
    fill_map(store)
    children = list(store.scan_children(MAP))
    assert [(i, v) for i, _k, v in children] == [(0, b"item0"), (1, b"item1"), (2, b"item2"), (300, b"item300")]
    assert [k for _i, k, _v in children] == [item_key(MAP, i) for i in (0, 1, 2, 300)]
    assert store.children_columns(MAP) == ([0, 1, 2, 300], [b"item0", b"item1", b"item2", b"item300"])
    assert store.children_columns(op_key("e", (9,))) == ([], [])


def test_children_are_read_a_page_at_a_time(store: RecordStore) -> None:
    fill_map(store)  # item 1 has an operation inside, item 300 too
    assert store.children_columns(MAP, 0, 2) == ([0, 1], [b"item0", b"item1"])
    assert store.children_columns(MAP, 1, 2) == ([1, 2], [b"item1", b"item2"])  # the step under 1 skipped
    assert store.children_columns(MAP, 3) == ([300], [b"item300"])
    assert store.children_columns(MAP, 2, 0) == ([], [])
    assert store.children_columns(MAP, 301) == ([], [])


def test_put_columns_with_mismatched_lengths_writes_nothing(store: RecordStore) -> None:
    with pytest.raises(StoreError, match="2 keys but 1 values"):
        store.put_columns([item_key(MAP, 0), item_key(MAP, 1)], [b"only one"])
    assert list(store.scan(MAP)) == []


def test_delete_prefix_deletes_a_subtree(store: RecordStore) -> None:
    fill_map(store)
    assert store.delete_prefix(item_key(MAP, 1)) == 2
    assert store.children_columns(MAP)[0] == [0, 2, 300]
    assert store.get(item_key(MAP, 300) + (5).to_bytes(4, "big")) == b"x"
    assert store.delete_prefix(MAP) == 5
    assert store.get(op_key("e", (2,))) == b"next op"
    assert store.delete_prefix(MAP) == 0


def test_a_journal_sends_back_its_writes_in_order() -> None:
    journal = Journal([(MAP, b"prior")])
    journal.put(item_key(MAP, 0), b"a")
    journal.delete_prefix(item_key(MAP, 0))
    journal.put_columns([item_key(MAP, 1)], [b"b"])
    assert journal.ops == [("put", item_key(MAP, 0), b"a"), ("delete", item_key(MAP, 0), b""),
                           ("put", item_key(MAP, 1), b"b")]
    assert journal.get(MAP) == b"prior"
