"""A map's BatchResult builds its list of items only when ``all`` is first read: ``get_results()``
and the counts come from the map's own columns of results and statuses (a first run's from its
board, a replay's from its item records). Whatever is read first, the result is the one its items
say, through the public API."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from durablemap import BatchResult, CompletionReason, DurableContext, _map, _stored, durable_execution
from durablemap.config import CompletionConfig, MapConfig


def value_or_raise(ctx: DurableContext, item: dict[str, Any], index: int, items: Any) -> Any:
    if index in item["fail"]:
        raise ValueError(f"bad{index}")
    return None if index in item["none"] else {"i": index, "sq": index * index}


def _criteria(event: dict[str, Any]) -> CompletionConfig:
    return CompletionConfig(min_successful=event.get("min"), tolerated_failure_count=event.get("tolerated"))


@durable_execution
def views(event: dict[str, Any], context: DurableContext) -> dict[str, Any]:
    """Read the map's result in the order the event says, and report what each reading gave."""
    items = [{"fail": event["fail"], "none": event.get("none", [])} for _ in range(event["n"])]
    batch = context.map(items, value_or_raise, config=MapConfig(max_concurrency=event.get("mc"),
                                                                completion_config=_criteria(event)))
    seen: dict[str, Any] = {}
    for what in event["order"]:
        if what == "all":
            first = batch.all
            seen["all"] = [item.to_dict() for item in first]
            seen["list"] = type(first) is list
            seen["same"] = batch.all is first and batch.results is first
        elif what == "results":
            seen["results"] = batch.get_results()
        else:
            seen["counts"] = [batch.success_count, batch.failure_count, batch.started_count,
                              batch.total_count, batch.has_failure]
    seen["reason"] = batch.completion_reason.value
    seen["copy"] = pickle.loads(pickle.dumps(batch)) == batch
    seen["rebuilt"] = BatchResult(list(batch.all), batch.completion_reason) == batch
    return seen


def expected(seen: dict[str, Any]) -> dict[str, Any]:
    """What the items say: the results and counts the other readings must equal."""
    items = seen["all"]
    by = {s: [i for i in items if i["status"] == s] for s in ("SUCCEEDED", "FAILED", "STARTED")}
    return {"results": [i["result"] for i in by["SUCCEEDED"]],
            "counts": [len(by["SUCCEEDED"]), len(by["FAILED"]), len(by["STARTED"]), len(items),
                       bool(by["FAILED"])]}


def check(seen: dict[str, Any]) -> None:
    want = expected(seen)
    assert seen["results"] == want["results"]
    assert seen["counts"] == want["counts"]
    assert seen["list"] and seen["same"] and seen["copy"] and seen["rebuilt"]
    indexes = [item["index"] for item in seen["all"]]
    assert indexes == sorted(set(indexes))


ORDERS = [["results", "counts", "all"], ["all", "results", "counts"], ["counts", "all", "results"]]


@pytest.mark.parametrize("order", ORDERS, ids=["-".join(o) for o in ORDERS])
def test_every_item_succeeded_read_in_any_order(tmp_path: Path, order: list[str]) -> None:
    seen = views.run({"n": 300, "fail": [], "none": [7], "order": order}, store=tmp_path / "s", workers=2)
    check(seen)
    assert seen["results"] == [None if i == 7 else {"i": i, "sq": i * i} for i in range(300)]
    assert seen["counts"][:4] == [300, 0, 0, 300]


@pytest.mark.parametrize("order", ORDERS, ids=["-".join(o) for o in ORDERS])
def test_failed_items_are_left_out_of_the_results_and_counted(tmp_path: Path, order: list[str]) -> None:
    seen = views.run({"n": 40, "fail": [0, 13, 39], "order": order}, store=tmp_path / "s", workers=2)
    check(seen)
    assert [i for i, item in enumerate(seen["all"]) if item["status"] == "FAILED"] == [0, 13, 39]
    assert seen["all"][13]["error"]["ErrorMessage"] == "bad13"
    assert seen["counts"] == [37, 3, 0, 40, True]


@pytest.mark.parametrize("order", ORDERS, ids=["-".join(o) for o in ORDERS])
def test_a_map_completed_early_reports_started_items_and_leaves_out_the_others(tmp_path: Path,
                                                                            order: list[str]) -> None:
    # One at a time: the first three successes complete the map before item 4 starts.
    seen = views.run({"n": 10, "fail": [1], "min": 3, "mc": 1, "order": order}, store=tmp_path / "s",
                     workers=2)
    check(seen)
    assert seen["reason"] == CompletionReason.MIN_SUCCESSFUL_REACHED.value
    assert [(i["index"], i["status"]) for i in seen["all"]] == [
        (0, "SUCCEEDED"), (1, "FAILED"), (2, "SUCCEEDED"), (3, "SUCCEEDED")]


def test_items_in_flight_at_completion_are_started_in_every_reading(tmp_path: Path) -> None:
    # Four at once and one success needed: those still running when it lands are STARTED.
    seen = views.run({"n": 200, "fail": [], "min": 1, "mc": 4, "order": ORDERS[0]}, store=tmp_path / "s",
                     workers=2)
    check(seen)
    assert seen["counts"][0] >= 1 and seen["counts"][3] < 200


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(0, 30), data=st.data(), order=st.sampled_from(ORDERS))
def test_any_outcome_reads_the_same_whatever_is_read_first(tmp_path_factory: pytest.TempPathFactory, n: int,
                                                           data: st.DataObject, order: list[str]) -> None:
    fail = data.draw(st.lists(st.integers(0, max(n - 1, 0)), unique=True, max_size=n)) if n else []
    none = data.draw(st.lists(st.integers(0, max(n - 1, 0)), unique=True, max_size=n)) if n else []
    criteria = data.draw(st.sampled_from([{}, {"tolerated": 1}, {"min": 1, "mc": 1}, {"min": 2, "mc": 1}]))
    if criteria.get("min", 0) > n:
        criteria = {}
    event = {"n": n, "fail": fail, "none": none, "order": order, **criteria}
    seen = views.run(event, store=tmp_path_factory.mktemp("s"), executor="inline")
    check(seen)
    finished = [item for item in seen["all"] if item["status"] != "STARTED"]
    assert all((item["status"] == "FAILED") == (item["index"] in fail) for item in finished)


REPLAYS = [
    pytest.param({"n": 300, "fail": [], "none": [5]}, id="all-succeeded"),
    pytest.param({"n": 60, "fail": [0, 7, 8, 59]}, id="failures"),
    pytest.param({"n": 10, "fail": [1], "min": 3, "mc": 1}, id="completed-early"),
    pytest.param({"n": 200, "fail": [3], "min": 1, "mc": 4, "tolerated": 5}, id="started-at-completion"),
]


@pytest.mark.parametrize("event", REPLAYS)
@pytest.mark.parametrize("page", [None, 7], ids=["one-page", "pages-of-7"])
def test_a_replay_from_the_item_records_reads_as_the_first_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               event: dict[str, Any], page: int | None) -> None:
    # No map record holds its result: a replay rebuilds it from the item records (see _map.replay_batch).
    monkeypatch.setattr(_map, "_SURELY_LARGE", 0)
    run = {"store": tmp_path / "s", "execution_id": "r", "workers": 2}
    first = views.run({**event, "order": ORDERS[1]}, **run)
    if page is not None:
        monkeypatch.setattr(_stored, "PAGE", page)
    for order in ORDERS:
        again = views.run({**event, "order": order}, **run)
        check(again)
        assert again == first


def test_a_batch_result_cannot_be_changed() -> None:
    result = BatchResult([], CompletionReason.ALL_COMPLETED)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.completion_reason = CompletionReason.MIN_SUCCESSFUL_REACHED  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del result.counts
    assert result == BatchResult([], CompletionReason.ALL_COMPLETED)
    assert result != BatchResult([], CompletionReason.MIN_SUCCESSFUL_REACHED)
    assert repr(result) == "BatchResult(all=[], completion_reason=<CompletionReason.ALL_COMPLETED: 'ALL_COMPLETED'>)"
