"""The public, read-only store API (CONTRACT section 11): ``durablemap.store.StoreReader``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from durablemap import BatchItemStatus, BatchResult, DurableContext, SerDesError, StoreError, durable_execution
from durablemap._store import Store
from durablemap.config import MapConfig
from durablemap.serdes import SerDes, SerDesContext
from durablemap.store import StoreReader, rebuild_batch_result


def half(ctx: DurableContext, item: int, index: int, items: Any) -> float:
    if item == 3:
        raise ValueError("three is odd here")
    return ctx.step(lambda _: item / 2, name="halve")


@durable_execution
def job(event: Any, context: DurableContext) -> BatchResult[float]:
    return context.map(list(range(6)), half, name="halves", config=MapConfig())


def test_a_finished_execution_reads_back_as_the_handler_saw_it(tmp_path: Path) -> None:
    result = job.run(None, store=tmp_path / "s", execution_id="reader", workers=2, progress=False)
    with StoreReader.open(tmp_path / "s") as reader:
        (execution,) = reader.executions()
        assert (execution.id, execution.status, execution.running) == ("reader", "SUCCEEDED", False)
        operations = list(reader.operations("reader"))
        assert operations[0].id == "1" and operations[0].sub_type == "Map" and operations[0].name == "halves"
        assert sum(op.sub_type == "Step" for op in operations) == 5  # item 3 failed before its step
        items = list(reader.items("reader", "1"))
        assert [item.index for item in items] == list(range(6))
        assert [item.result for item in items if item.status == BatchItemStatus.SUCCEEDED] == [0, 0.5, 1, 2, 2.5]
        (failed,) = [item for item in items if item.status == BatchItemStatus.FAILED]
        assert failed.index == 3 and failed.error is not None and "three is odd" in (failed.error.message or "")
        assert reader.batch_result("reader", "1") == result
        with pytest.raises(StoreError, match="no finished map"):
            reader.batch_result("reader", "1/0")


def test_a_summarised_map_is_rebuilt_from_its_items(tmp_path: Path) -> None:
    @durable_execution
    def big(event: Any, context: DurableContext) -> BatchResult[str]:
        return context.map(list(range(3000)), lambda ctx, item, index, items: "x" * 100, name="big")

    result = big.run(None, store=tmp_path / "s", execution_id="big", executor="inline", progress=False)
    with StoreReader.open(tmp_path / "s") as reader:
        assert reader.batch_result("big", "1") == result
    with Store.open(tmp_path / "s", readonly=True) as store:
        assert rebuild_batch_result(store, "big", "1") == result  # any records behind the store interface


def test_opening_a_missing_store_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no durablemap store"):
        StoreReader.open(tmp_path / "nowhere")


class Upper(SerDes[str]):
    """A custom serdes: the reader cannot know how to read what it wrote."""

    def serialize(self, value: str, serdes_context: SerDesContext) -> str:
        return value.upper()

    def deserialize(self, data: str, serdes_context: SerDesContext) -> str:
        return data.lower()


def named(ctx: DurableContext, item: int, index: int, items: Any) -> int:
    if item == 2:
        raise KeyError("two")
    return item * 10


@durable_execution
def tree(event: Any, context: DurableContext) -> Any:
    context.step(lambda _: "first", name="first")
    context.map([1, 2, 3], named, name="named", config=MapConfig(item_namer=lambda item, index: f"n{index}"))
    context.map(["a", "b"], lambda ctx, item, index, items: item, name="custom",
                config=MapConfig(item_serdes=Upper()))
    return "done"


def test_operations_children_items_and_timings_read_as_recorded(tmp_path: Path) -> None:
    tree.run(None, store=tmp_path / "s", execution_id="tree", executor="inline", progress=False)
    with StoreReader.open(tmp_path / "s") as reader:
        execution = reader.execution("tree")
        assert (execution.status, execution.state, execution.error, execution.interrupted) == (
            "SUCCEEDED", "SUCCEEDED", None, False)
        assert execution.duration is not None and execution.duration >= 0
        own = reader.operation("tree", "")
        assert own.id == "" and own.path == () and own.result() == "done"
        top = list(reader.children("tree"))
        assert [(op.id, op.name, op.sub_type) for op in top] == [
            ("1", "first", "Step"), ("2", "named", "Map"), ("3", "custom", "Map")]
        assert top[0].result() == "first" and top[0].finished
        assert reader.operation("tree", "2").meta["inputs"] == 3
        items = list(reader.children("tree", "2"))
        assert [(op.id, op.name, op.status) for op in items] == [
            ("2/0", "n0", "SUCCEEDED"), ("2/1", "n1", "FAILED"), ("2/2", "n2", "SUCCEEDED")]
        assert items[1].error is not None and items[1].error.type == "KeyError"
        got = list(reader.items("tree", "2"))
        assert [(i.index, i.name, i.status, i.result) for i in got] == [
            (0, "n0", BatchItemStatus.SUCCEEDED, 10), (1, "n1", BatchItemStatus.FAILED, None),
            (2, "n2", BatchItemStatus.SUCCEEDED, 30)]
        with pytest.raises(SerDesError):
            list(reader.items("tree", "3"))
        assert [i.result for i in reader.items("tree", "3", Upper())] == ["a", "b"]
        assert [i.result for i in reader.items("tree", "3", raw_custom=True)] == ["A", "B"]
        times = reader.item_times("tree", "2")
        assert sorted(times) == [0, 1, 2] and all(t.duration >= 0 and t.attempt == 1 for t in times.values())
        (slowest,) = reader.slowest("tree", "2", 1)
        assert slowest.duration == max(t.duration for t in times.values())
        with pytest.raises(StoreError, match="no operation '9'"):
            reader.operation("tree", "9")
        records = reader.read_execution("tree")
    # read into memory: still readable with the store closed
    assert [op.id for op in records.operations()][:2] == ["1", "2"]
    assert records.operation("").result() == "done"
    assert records.batch_result("2").get_results() == [10, 30]


def test_items_release_the_store_pages_as_they_stream_and_read_the_same(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import durablemap.store as store_module

    result = job.run(None, store=tmp_path / "s", execution_id="pages", workers=2, progress=False)
    released: list[int] = []
    original = Store.release_pages

    def counting(self: Store) -> int:
        released.append(original(self))
        return released[-1]

    monkeypatch.setattr(store_module, "_RELEASE_EVERY", 2)
    monkeypatch.setattr(Store, "release_pages", counting)
    with StoreReader.open(tmp_path / "s") as reader:
        items = list(reader.items("pages", "1"))
        assert [i.result for i in items if i.status == BatchItemStatus.SUCCEEDED] == result.get_results()
        assert len(released) == 3  # after items 1, 3 and 5
        if sys.platform == "linux":
            assert all(size > 0 for size in released)  # the mapping of data.mdb was found and released
        assert reader.batch_result("pages", "1") == result  # pages released are read again as they were
