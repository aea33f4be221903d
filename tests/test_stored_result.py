"""A large map's BatchResult reads its items from the store page by page (``_stored``): it behaves
like the in-memory one. The size threshold and the page size are lowered here, so small maps take
the large-map path and cross many page boundaries."""

from __future__ import annotations

import pickle
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from durablemap import (
    BatchResult,
    ChildContextError,
    DurableContext,
    StoreError,
    _stored,
    durable_execution,
)
from durablemap import _map as map_module
from durablemap._records import decode_record
from durablemap._store import Store, op_key
from durablemap.config import CompletionConfig, MapConfig
from durablemap.store import StoreReader


def maybe_fail(ctx: DurableContext, item: int, index: int, inputs: Any) -> Any:
    if item < 0:
        raise ValueError(f"negative {item} at {index}")
    return {"square": item * item, "text": str(item)} if item % 3 else item * item


CONFIGS = {
    "all": CompletionConfig(),
    "min-successful": CompletionConfig(min_successful=3),
    "tolerate-one": CompletionConfig(tolerated_failure_count=1),
}


@durable_execution
def squares(event: dict[str, Any], context: DurableContext) -> BatchResult[Any]:
    return context.map(event["items"], maybe_fail, name="squares",
                       config=MapConfig(completion_config=CONFIGS[event["config"]]))


@contextmanager
def large_maps(min_items: int = 0, page: int = 3) -> Iterator[None]:
    """Maps of ``min_items`` or more take the large-map path: their items stay in the store, and
    their record holds no copy of their BatchResult (as for a real large map, whatever its size)."""
    surely_large = 0 if min_items < 10**9 else map_module._SURELY_LARGE
    with (mock.patch.object(_stored, "LAZY_MIN_ITEMS", min_items), mock.patch.object(_stored, "PAGE", page),
          mock.patch.object(map_module, "_SURELY_LARGE", surely_large)):
        yield


def run(event: dict[str, Any], store: Path, **kwargs: Any) -> BatchResult[Any]:
    result: BatchResult[Any] = squares.run(event, store=store, execution_id="x", executor="inline",
                                           progress=False, **kwargs)
    return result


def assert_same(lazy: BatchResult[Any], eager: BatchResult[Any]) -> None:
    assert isinstance(lazy.all, _stored.StoredItems) and isinstance(eager.all, list)
    assert lazy.to_dict() == eager.to_dict()
    assert lazy == eager and eager == lazy
    assert list(lazy.all) == eager.all and list(lazy.results) == eager.results
    assert len(lazy.all) == lazy.total_count == eager.total_count
    for name in ("success_count", "failure_count", "started_count", "has_failure", "status", "completion_reason"):
        assert getattr(lazy, name) == getattr(eager, name), name
    for position in range(-len(eager.all), len(eager.all)):
        assert lazy.all[position] == eager.all[position]
    for bad in (len(eager.all), -len(eager.all) - 1):
        with pytest.raises(IndexError):
            lazy.all[bad]
    assert lazy.all[1::2] == eager.all[1::2] and lazy.all[::-1] == eager.all[::-1]
    assert list(reversed(lazy.all)) == eager.all[::-1]
    assert lazy.get_results() == eager.get_results() and lazy.get_errors() == eager.get_errors()
    assert lazy.succeeded() == eager.succeeded() and lazy.failed() == eager.failed()
    assert lazy.started() == eager.started()
    assert pickle.loads(pickle.dumps(lazy)) == eager
    assert BatchResult.from_dict(lazy.to_dict()) == eager


def raised(result: BatchResult[Any]) -> tuple[type[BaseException], str] | None:
    try:
        result.throw_if_error()
    except Exception as exc:
        return type(exc), str(exc)
    return None


items_strategy = st.lists(st.integers(-3, 50), max_size=30)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=items_strategy, config=st.sampled_from(sorted(CONFIGS)), page=st.integers(1, 7))
def test_a_result_read_from_the_store_behaves_like_the_one_in_memory(items: list[int], config: str,
                                                                     page: int) -> None:
    if config == "min-successful" and len(items) < 3:
        config = "all"
    event = {"items": items, "config": config}
    root = Path(tempfile.mkdtemp(prefix="durablemap-stored-"))
    try:
        with large_maps(min_items=0, page=page):
            lazy = run(event, root / "lazy")
            replayed = run(event, root / "lazy")  # a replay reads the same records, lazily too
        with large_maps(min_items=10**9, page=page), StoreReader.open(root / "lazy") as reader:
            # The same records rebuilt in memory: which items an early completion started depends on
            # chunk sizes, so two runs of a map that completes early may differ.
            in_memory = reader.batch_result("x", "1")
        assert_same(lazy, in_memory)
        assert_same(replayed, in_memory)
        assert raised(lazy) == raised(in_memory)
        if config == "all":  # every item runs: a first run in memory gives the very same result
            with large_maps(min_items=10**9, page=page):
                eager = run(event, root / "eager")
            assert_same(lazy, eager)
            assert raised(lazy) == raised(eager)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_large_result_stays_readable_after_its_store_is_closed_and_removed(tmp_path: Path) -> None:
    event = {"items": [1, -1, 2, 3, -2, 4, 5], "config": "all"}
    with large_maps():
        lazy = run(event, tmp_path / "s")
        expected = lazy.to_dict()
        Store.for_process(tmp_path / "s").close()  # what the testing runner does before removing it
        shutil.rmtree(tmp_path / "s")
        assert lazy.to_dict() == expected and lazy.all[-1].result == {"square": 25, "text": "5"}
        assert [item.index for item in lazy.failed()] == [1, 4]
        with pytest.raises(ChildContextError, match="negative -1 at 1"):
            lazy.throw_if_error()
        assert "7 items of map '1'" in repr(lazy)  # repr reads nothing


def test_a_handler_returning_a_large_result_records_its_repr_not_its_items(tmp_path: Path) -> None:
    with large_maps():
        lazy = run({"items": [3, -1, 6], "config": "all"}, tmp_path / "s")
    assert isinstance(lazy.all, _stored.StoredItems) and lazy.get_results() == [9, 36]
    with Store.open(tmp_path / "s", readonly=True) as store:
        record = decode_record(store.get(op_key("x", ())) or b"")
    assert record.status == "SUCCEEDED" and record.payload is None
    assert "3 items of map '1' of execution 'x', read from the store" in record.get("result_repr")


def test_a_large_result_says_so_when_its_records_are_gone(tmp_path: Path) -> None:
    with large_maps():
        lazy = run({"items": list(range(10)), "config": "all"}, tmp_path / "s")
        with Store.open(tmp_path / "s") as store:
            store.delete_prefix(op_key("x", (1,)) + (5).to_bytes(4, "big"))  # item 5's record
        with pytest.raises(StoreError, match="changed in the store since its BatchResult was made"):
            lazy.to_dict()
        assert lazy.all[6].result == 36  # pages that are whole still read
        with pytest.raises(StoreError, match="run the handler again"):
            lazy.all[4]


def test_the_store_reader_gives_a_large_map_lazily(tmp_path: Path) -> None:
    event = {"items": [4, -1, 5, 6], "config": "all"}
    with large_maps():
        first = run(event, tmp_path / "s")
        with StoreReader.open(tmp_path / "s") as reader:
            read = reader.batch_result("x", "1")
        assert isinstance(read.all, _stored.StoredItems)
        assert read == first and read.counts == (3, 1, 0)


def test_a_large_map_keeps_its_record_small_and_its_summary(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []

    def summary(result: BatchResult[Any]) -> str:
        seen.append((result.success_count, len(result.to_dict()["all"])))
        return f"{result.success_count} ok"

    @durable_execution
    def big(event: Any, context: DurableContext) -> list[int]:
        result = context.map([b"x" * 4096] * 100, lambda ctx, item, index, items: item, name="big",
                             config=MapConfig(summary_generator=summary))
        return [len(result.all), sum(len(item.result) for item in result.all)]

    with large_maps(page=16):
        assert big.run(None, store=tmp_path / "s", execution_id="b", executor="inline", progress=False) == [
            100, 409600]
    assert seen == [(100, 100)]
    with Store.open(tmp_path / "s", readonly=True) as store:
        record = decode_record(store.get(op_key("b", (1,))) or b"")
    assert record.payload is None and record.get("summary") == "100 ok" and record.get("replay_children")


def nested(ctx: DurableContext, item: int, index: int, inputs: Any) -> dict[str, Any]:
    inner = ctx.map(list(range(item)), maybe_fail, name="inner")
    return inner.to_dict()


@durable_execution
def outer(event: Any, context: DurableContext) -> BatchResult[Any]:
    return context.map([0, 2, 5], nested, name="outer")


def test_nested_large_maps_give_what_small_ones_give(tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {"execution_id": "n", "executor": "inline", "progress": False}
    eager = outer.run(None, store=tmp_path / "eager", **kwargs)
    with large_maps():
        lazy = outer.run(None, store=tmp_path / "lazy", **kwargs)
        assert_same(lazy, eager)
        assert lazy.all[2].result["all"][3]["result"] == 9


def test_a_large_result_exports_the_same_table(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    pytest.importorskip("pandas")
    event = {"items": [3, -1, 6, 0, -5], "config": "all"}  # int results: one arrow type
    eager = run(event, tmp_path / "eager")
    with large_maps():
        lazy = run(event, tmp_path / "lazy")
        assert lazy.to_arrow().equals(eager.to_arrow())
        assert lazy.to_pandas().equals(eager.to_pandas())
