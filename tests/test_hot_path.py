"""The worker's loop over tiny items (issue 17, the hot path): a plain result is packed with its
record in one call, items of a list, tuple, range or item file are sliced a chunk at a time, and the
slot is written field by field. What it writes must be exactly what the general path writes."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from durablemap import DurableContext, durable_execution
from durablemap._gc import PROMOTE_AT
from durablemap._records import item_records
from durablemap.serdes import pack_default

PLAIN = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
                  st.floats(allow_nan=False), st.text())
FINGERPRINTS = st.one_of(st.none(), st.integers(min_value=-(2**63), max_value=2**63 - 1), st.binary(min_size=8, max_size=8))


@given(fp=FINGERPRINTS, value=PLAIN)
def test_a_plain_result_is_the_record_the_general_path_writes(fp: Any, value: Any) -> None:
    build = item_records("MapIteration")
    assert build.plain(fp, value) == build.fingerprinted(fp, pack_default(value))


@given(fp=FINGERPRINTS, value=st.one_of(st.integers(min_value=2**64), st.binary(), st.lists(st.integers()),
                                         st.tuples(st.integers())))
def test_other_results_are_left_to_the_default_serdes(fp: Any, value: Any) -> None:
    assert item_records("MapIteration").plain(fp, value) is None


def test_records_that_are_never_compact_have_no_plain_form() -> None:
    assert item_records("Step").plain(None, 1) is None


def mixed(ctx: DurableContext, item: Any, index: int, inputs: Any) -> Any:
    kind = index % 6
    if kind == 0:
        return item * item
    if kind == 1:
        return 2**70 + item  # past 64 bits: the default serdes' own encoding
    if kind == 2:
        return (item, str(item))  # a tuple stays a tuple
    if kind == 3:
        return None
    if kind == 4:
        return item / 4
    if item == 5 + 6 * 7:
        raise ValueError(f"item {item} fails")
    return f"s{item}"


@durable_execution
def mixed_map(event: dict[str, Any], context: DurableContext) -> Any:
    inputs = range(event["n"]) if event["range"] else list(range(event["n"]))
    result = context.map(inputs, mixed)
    return [(item.index, item.status.value, item.result) for item in result.all]


def expected(n: int) -> list[tuple[int, str, Any]]:
    out = []
    for i in range(n):
        try:
            out.append((i, "SUCCEEDED", mixed(None, i, i, None)))  # type: ignore[arg-type]
        except ValueError:
            out.append((i, "FAILED", None))
    return out


def test_every_kind_of_result_comes_back_and_replays_the_same(tmp_path: Path) -> None:
    for inputs_range, n in ((True, 3000), (False, 3000)):  # a range in the spec; a list as an item file
        store = tmp_path / f"s{inputs_range}"
        first = mixed_map.run({"n": n, "range": inputs_range}, store=store, execution_id="m", workers=2)
        assert first == expected(n)
        assert mixed_map.run({"n": n, "range": inputs_range}, store=store, execution_id="m", workers=2) == first


def test_a_large_maps_workers_send_no_values(tmp_path: Path) -> None:
    """A large map's coordinator keeps no item values (they stay in the store): its workers, which
    committed their chunks, send back how many items ran and not their values; every result still
    comes back right, from the store."""
    from unittest import mock

    from durablemap import _board, _map, _stored

    received: list[tuple[int, int]] = []
    finish = _board.ItemBoard.finish_chunk

    def counting(board: Any, result: Any) -> tuple[int, int]:
        received.append((len(result.values), result.ran))
        return finish(board, result)

    with (mock.patch.object(_stored, "LAZY_MIN_ITEMS", 0), mock.patch.object(_map, "_SURELY_LARGE", 0),
          mock.patch.object(_board.ItemBoard, "finish_chunk", counting)):
        first = mixed_map.run({"n": 3000, "range": True}, store=tmp_path / "s", execution_id="m", workers=2)
    assert first == expected(3000)
    assert received and all(sent == 0 for sent, _ in received) and sum(ran for _, ran in received) == 3000


def square(ctx: DurableContext, x: int, index: int, inputs: Any) -> int:
    return x * x


@durable_execution(progress=False)
def squares(event: dict[str, int], context: DurableContext) -> list[int]:
    """The map's counts, and how many of its first 1,000 items are in the collector's oldest
    generation once the items are made (when ``all`` is first read: see BatchResult)."""
    result = context.map(list(range(event["n"])), square, name="squares")
    first = result.all[:1000]
    oldest = {id(obj) for obj in gc.get_objects(generation=2)}
    return [result.success_count, sum(id(item) in oldest for item in first)]


@pytest.mark.skipif(gc.get_freeze_count() != 0, reason="objects are frozen at start-up (Python 3.12 and later): "
                    "durablemap leaves the collector's generations alone then (see _gc.paused)")
def test_a_maps_items_leave_the_young_generations_of_the_garbage_collector(tmp_path: Path) -> None:
    # A map's items (when first read) and a replay's are made with the collector paused; on the way out
    # they move to the oldest generation, so the next young collection does not scan them all (see _gc.paused).
    n = 2 * PROMOTE_AT  # a map that leaves fewer items behind leaves the collector alone
    for run in ("first", "replay"):
        assert squares.run({"n": n}, store=str(tmp_path), execution_id="x", workers=2) == [n, 1000], run


def test_objects_frozen_by_someone_else_stay_frozen(tmp_path: Path) -> None:
    marker = [object()]  # tracked by the collector; frozen, it is in none of its generations
    gc.freeze()
    try:
        assert squares.run({"n": 2 * PROMOTE_AT}, store=str(tmp_path), execution_id="x", workers=2)[0] == 2 * PROMOTE_AT
        assert not any(obj is marker for obj in gc.get_objects())
    finally:
        gc.unfreeze()
    assert any(obj is marker for obj in gc.get_objects())
