"""The public, read-only store API (CONTRACT section 11): ``durablemap.store.StoreReader``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from durablemap import BatchItemStatus, BatchResult, DurableContext, StoreError, durable_execution
from durablemap._store import Store
from durablemap.config import MapConfig
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
