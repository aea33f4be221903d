"""Serialization through ``context.map`` (CONTRACT section 7, reference section 6, checklist 17-19):
custom item and whole-BatchResult serdes, what the store holds byte for byte, extended types on the
first run and on replay, serdes errors, and step/child serdes inside items.

Items run in real loky worker processes, so serdes calls are counted by appending lines to a file
(``Wrap(log)``): serialize runs in the worker, deserialize in the worker (steps, child contexts) or
in the coordinator (item results), and a test reads the lines back after the run.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import uuid
import zoneinfo
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from durablemap import (
    BatchResult,
    ChildContextError,
    DurableContext,
    SerDesError,
    StepContext,
    durable_execution,
)
from durablemap._records import Record, decode_record
from durablemap._store import Store, op_key
from durablemap.config import ChildConfig, MapConfig, StepConfig
from durablemap.serdes import JsonSerDes, MsgpackSerDes, SerDes, SerDesContext

EXECUTION = "serdes-test"

# -- helpers ---------------------------------------------------------------------------------------


def run(handler: Any, event: Any, tmp_path: Path, **kwargs: Any) -> Any:
    return handler.run(event, store=tmp_path / "s", execution_id=EXECUTION, workers=2, progress=False, **kwargs)


def record_at(tmp_path: Path, path: tuple[int, ...]) -> Record:
    """The decoded record of the operation at ``path`` of the test execution."""
    with Store.open(tmp_path / "s", readonly=True) as store:
        raw = store.get(op_key(EXECUTION, path))
    assert raw is not None, f"no record at {path}"
    return decode_record(raw)


def note(log: str, line: str) -> None:
    """Append one line to ``log/calls`` (O_APPEND: lines from many processes do not mix)."""
    with open(os.path.join(log, "calls"), "a") as fh:
        fh.write(line + "\n")


def calls(log: str | Path, prefix: str = "") -> list[str]:
    path = os.path.join(log, "calls")
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return sorted(line for line in fh.read().splitlines() if line.startswith(prefix))


def same(a: Any, b: Any) -> bool:
    """Equal, with the same type at every level (and the same tzinfo, and Decimal's exponent)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(k1, k2) and same(a[k1], b[k2]) for k1, k2 in zip(a, b, strict=True))
    if isinstance(a, Decimal):
        return str(a) == str(b)
    if isinstance(a, dt.datetime):
        return a == b and a.tzinfo == b.tzinfo and a.utcoffset() == b.utcoffset() and a.fold == b.fold
    return bool(a == b)


class Wrap(SerDes[Any]):
    """A custom serdes writing ``b"WRAP:" + JSON``; logs every call with its operation id."""

    def __init__(self, log: str) -> None:
        self.log = log

    def serialize(self, value: Any, serdes_context: SerDesContext) -> bytes:
        note(self.log, f"ser {serdes_context.operation_id}")
        return b"WRAP:" + json.dumps(value).encode()

    def deserialize(self, data: str | bytes, serdes_context: SerDesContext) -> Any:
        note(self.log, f"de {serdes_context.operation_id}")
        assert isinstance(data, bytes) and data.startswith(b"WRAP:"), data
        return json.loads(data[5:])


def wrapped(value: Any) -> bytes:
    return b"WRAP:" + json.dumps(value).encode()


class Text(SerDes[Any]):
    """A custom serdes returning ``str``; handles BatchResult too, so it can be a map's ``serdes``."""

    def __init__(self, log: str) -> None:
        self.log = log

    def serialize(self, value: Any, serdes_context: SerDesContext) -> str:
        note(self.log, f"ser {serdes_context.operation_id}")
        if isinstance(value, BatchResult):
            return json.dumps({"batch": value.to_dict()})
        return json.dumps({"value": value})

    def deserialize(self, data: str | bytes, serdes_context: SerDesContext) -> Any:
        note(self.log, f"de {serdes_context.operation_id}")
        assert isinstance(data, str), data
        decoded = json.loads(data)
        return BatchResult.from_dict(decoded["batch"]) if "batch" in decoded else decoded["value"]


# -- a wrapping item_serdes ---------------------------------------------------------------------------


def square_record(ctx: DurableContext, item: dict[str, Any], index: int, items: Any) -> Any:
    note(item["log"], f"func {index}")
    if os.path.exists(item["poison"]) and index == 2:
        raise ValueError("poisoned")
    return {"i": index, "sq": index * index, "pair": (index, "t")}


@durable_execution
def wrap_map(event: dict[str, Any], context: DurableContext) -> list[Any]:
    items = [event] * 4
    result = context.map(items, square_record, name="wrapped", config=MapConfig(item_serdes=Wrap(event["log"])))
    return [(item.status.value, item.result) for item in result.all]


def expected_item(index: int) -> dict[str, Any]:
    return {"i": index, "sq": index * index, "pair": (index, "t")}


def test_a_wrapping_item_serdes_is_stored_byte_for_byte_and_read_back_through_it(tmp_path: Path) -> None:
    log = str(tmp_path)
    poison = tmp_path / "poison"
    poison.touch()
    event = {"log": log, "poison": str(poison)}

    first = run(wrap_map, event, tmp_path)
    # The first run returns what the item serdes gives back: JSON turned the tuple into a list.
    assert first[2][0] == "FAILED"
    for index in (0, 1, 3):
        assert first[index] == ("SUCCEEDED", {"i": index, "sq": index * index, "pair": [index, "t"]})
        assert record_at(tmp_path, (1, index)).payload == wrapped(expected_item(index))
    assert calls(log, "ser ") == ["ser 1/0", "ser 1/1", "ser 1/3"]

    # Resume: the recorded items are read back through the item serdes, only item 2 runs again.
    poison.unlink()
    (tmp_path / "calls").unlink()
    second = run(wrap_map, event, tmp_path, retry_failed=True)
    assert second == [("SUCCEEDED", {"i": i, "sq": i * i, "pair": [i, "t"]}) for i in range(4)]
    assert calls(log, "func ") == ["func 2"]
    assert calls(log, "ser ") == ["ser 1/2"]
    assert {"de 1/0", "de 1/1", "de 1/3"} <= set(calls(log, "de "))
    assert record_at(tmp_path, (1, 2)).payload == wrapped(expected_item(2))

    # A replay of the finished map returns the same, without running anything.
    (tmp_path / "calls").unlink()
    assert run(wrap_map, event, tmp_path) == second
    assert calls(log, "func ") == []


def test_the_item_serdes_sees_the_item_operation_id_when_it_deserializes(tmp_path: Path) -> None:
    log = str(tmp_path)
    run(wrap_map, {"log": log, "poison": str(tmp_path / "none")}, tmp_path)
    # What serialize saw for an item is what deserialize sees, as a FileSystemSerDes-like serdes needs.
    assert [line.split()[1] for line in calls(log, "de ")] == [line.split()[1] for line in calls(log, "ser ")]


def text_item(ctx: DurableContext, item: int, index: int, items: Any) -> Any:
    return [item, str(item)]


@durable_execution
def text_map(event: dict[str, Any], context: DurableContext) -> Any:
    serdes = Text(event["log"])
    config = MapConfig(item_serdes=serdes) if event["where"] == "item" else MapConfig(serdes=serdes)
    return context.map([10, 11, 12], text_item, name="text", config=config).to_dict()


@pytest.mark.parametrize("where", ["item", "whole"])
def test_a_str_returning_serdes_is_stored_as_that_str(tmp_path: Path, where: str) -> None:
    log = str(tmp_path)
    event = {"log": log, "where": where}
    first = run(text_map, event, tmp_path)
    assert [entry["result"] for entry in first["all"]] == [[10, "10"], [11, "11"], [12, "12"]]
    for index in range(3):
        assert record_at(tmp_path, (1, index)).payload == json.dumps({"value": [10 + index, str(10 + index)]})
    map_record = record_at(tmp_path, (1,))
    if where == "item":
        # item_serdes never applies to the BatchResult (reference 6.3): the map record is the default's.
        assert isinstance(map_record.payload, bytes)
        assert "ser 1" not in calls(log)
    else:
        # With only `serdes` set, it serializes the items and the whole BatchResult (reference 6.3).
        assert map_record.payload == json.dumps({"batch": first})
        assert "ser 1" in calls(log)

    (tmp_path / "calls").unlink()
    assert run(text_map, event, tmp_path) == first
    if where == "whole":
        assert calls(log) == ["de 1"]  # the replay goes through the map serdes' deserialize, once


# -- a whole-BatchResult serdes -------------------------------------------------------------------------


class Prefixed(SerDes[Any]):
    """msgpack behind a marker: encodes BatchResult as well as item values."""

    def __init__(self, log: str) -> None:
        self.log = log

    def serialize(self, value: Any, serdes_context: SerDesContext) -> bytes:
        note(self.log, f"ser {serdes_context.operation_id}")
        return b"PRE:" + MsgpackSerDes().serialize(value, serdes_context)

    def deserialize(self, data: str | bytes, serdes_context: SerDesContext) -> Any:
        note(self.log, f"de {serdes_context.operation_id}")
        assert isinstance(data, bytes) and data.startswith(b"PRE:"), data
        return MsgpackSerDes().deserialize(data[4:], serdes_context)


def logged_square(ctx: DurableContext, item: dict[str, Any], index: int, items: Any) -> Any:
    note(item["log"], f"func {index}")
    return (index, index * index)


@durable_execution
def prefixed_map(event: dict[str, Any], context: DurableContext) -> Any:
    result = context.map([event] * 3, logged_square, name="prefixed", config=MapConfig(serdes=Prefixed(event["log"])))
    return result.get_results()


def test_a_whole_batch_result_serdes_writes_the_map_record_and_replays_through_its_deserialize(tmp_path: Path) -> None:
    log = str(tmp_path)
    event = {"log": log}
    first = run(prefixed_map, event, tmp_path)
    assert first == [(0, 0), (1, 1), (2, 4)]
    map_record = record_at(tmp_path, (1,))
    assert isinstance(map_record.payload, bytes) and map_record.payload.startswith(b"PRE:")
    # with only `serdes` set it serializes the items too
    assert [record_at(tmp_path, (1, i)).payload for i in range(3)] == [
        b"PRE:" + MsgpackSerDes().serialize((i, i * i), SerDesContext()) for i in range(3)]
    assert "ser 1" in calls(log)

    (tmp_path / "calls").unlink()
    assert run(prefixed_map, event, tmp_path) == first
    assert calls(log) == ["de 1"]  # no item ran; the BatchResult came through Prefixed.deserialize


def plain_square(ctx: DurableContext, item: int, index: int, items: Any) -> int:
    return item * item


@durable_execution
def json_batch_map(event: Any, context: DurableContext) -> Any:
    return context.map([1, 2, 3], plain_square, name="json", config=MapConfig(serdes=JsonSerDes())).to_dict()


def test_json_serdes_for_the_whole_batch_result_raises_serdes_error(tmp_path: Path) -> None:
    # Checklist 19: the items encode as JSON, the BatchResult does not.
    with pytest.raises(SerDesError, match="BatchResult"):
        run(json_batch_map, None, tmp_path)
    assert record_at(tmp_path, (1, 0)).payload == "1"
    # the failure is recorded: a re-run raises it again
    with pytest.raises(SerDesError, match="BatchResult"):
        run(json_batch_map, None, tmp_path)


# -- extended types -----------------------------------------------------------------------------------

IST = dt.timezone(dt.timedelta(hours=5, minutes=30))
EXTENDED = [
    (1, "a", None),
    (1, (2, (3, (4,))), [(5, 6)]),
    Decimal("1.10"),
    Decimal("-0.000"),
    dt.datetime(2024, 3, 1, 12, 30, 15, 123456, tzinfo=IST),
    dt.datetime(2024, 11, 3, 1, 30, fold=1, tzinfo=zoneinfo.ZoneInfo("America/New_York")),
    dt.datetime(2024, 1, 1, 0, 0),
    dt.date(1999, 12, 31),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    b"\x00\xffraw",
    {1: "one", 2: {3: (4, 5)}, "s": [b"x"]},
    2**100,
    -(2**80),
    [Decimal("2.50"), dt.date(2000, 1, 1), {(1, 2): uuid.UUID(int=7)}],
]


def extended_item(ctx: DurableContext, item: int, index: int, items: Any) -> Any:
    return EXTENDED[item]


@durable_execution
def extended_map(event: Any, context: DurableContext) -> Any:
    return context.map(list(range(len(EXTENDED))), extended_item, name="extended").get_results()


def test_extended_types_round_trip_as_item_results_on_the_first_run_and_on_replay(tmp_path: Path) -> None:
    first = run(extended_map, None, tmp_path)
    mismatched = [(expected, got) for expected, got in zip(EXTENDED, first, strict=True) if not same(expected, got)]
    assert mismatched == []
    replayed = run(extended_map, None, tmp_path)
    mismatched = [(expected, got) for expected, got in zip(EXTENDED, replayed, strict=True) if not same(expected, got)]
    assert mismatched == []


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """A random value of the default serdes' supported types, nested up to 3 levels."""
    scalars = [
        lambda: None, lambda: rng.random() < 0.5, lambda: rng.randint(-(2**70), 2**70),
        lambda: rng.uniform(-1e9, 1e9), lambda: "".join(rng.choice("aé€😀\x00z") for _ in range(rng.randint(0, 6))),
        lambda: rng.randbytes(rng.randint(0, 8)), lambda: Decimal(rng.randint(-99999, 99999)).scaleb(-rng.randint(0, 4)),
        lambda: dt.datetime(2000, 1, 1, tzinfo=dt.timezone(dt.timedelta(minutes=rng.randint(-600, 600))))
        + dt.timedelta(seconds=rng.randint(0, 10**9), microseconds=rng.randint(0, 999999)),
        lambda: dt.date.fromordinal(rng.randint(1, 800000)), lambda: uuid.UUID(int=rng.getrandbits(128)),
    ]
    if depth >= 3 or rng.random() < 0.4:
        return rng.choice(scalars)()
    size = rng.randint(0, 4)
    kind = rng.choice(["list", "tuple", "dict"])
    if kind == "dict":
        return {rng.choice([rng.randint(-50, 50), f"k{rng.randint(0, 50)}"]): random_value(rng, depth + 1)
                for _ in range(size)}
    values = [random_value(rng, depth + 1) for _ in range(size)]
    return values if kind == "list" else tuple(values)


def identity(ctx: DurableContext, item: Any, index: int, items: Any) -> Any:
    return item


@durable_execution
def identity_map(event: Any, context: DurableContext) -> Any:
    values = [random_value(random.Random(seed)) for seed in range(event["n"])]
    return context.map(values, identity, name="identity").get_results()


def test_random_nested_values_come_back_identical_from_a_real_map(tmp_path: Path) -> None:
    n = 60
    values = [random_value(random.Random(seed)) for seed in range(n)]
    first = run(identity_map, {"n": n}, tmp_path)
    assert [i for i in range(n) if not same(values[i], first[i])] == []
    replayed = run(identity_map, {"n": n}, tmp_path)
    assert [i for i in range(n) if not same(values[i], replayed[i])] == []


# -- errors ---------------------------------------------------------------------------------------------


class Thing:
    pass


def unencodable_item(ctx: DurableContext, item: str, index: int, items: Any) -> Any:
    return {"set": {1, 2}, "thing": Thing()}.get(item, item)


@durable_execution
def unencodable_map(event: Any, context: DurableContext) -> Any:
    return context.map(["ok", "set", "ok2", "thing"], unencodable_item, name="enc").to_dict()


def test_a_value_the_default_serdes_cannot_encode_fails_only_its_item(tmp_path: Path) -> None:
    for result in (run(unencodable_map, None, tmp_path), run(unencodable_map, None, tmp_path)):
        entries = result["all"]
        assert [(e["status"], e["result"]) for e in entries[0::2]] == [("SUCCEEDED", "ok"), ("SUCCEEDED", "ok2")]
        for index, type_name in ((1, "set"), (3, "tests.test_serdes_map.Thing")):
            error = entries[index]["error"]
            assert entries[index]["status"] == "FAILED"
            assert error["ErrorType"] == "durablemap.SerDesError"
            assert f"item {index} of map '1'" in error["ErrorMessage"]
            assert f"type {type_name}" in error["ErrorMessage"]


class Picky(SerDes[Any]):
    """Refuses to serialize 13; on replay (``broken`` set) refuses to deserialize anything."""

    def __init__(self, broken_flag: str) -> None:
        self.broken_flag = broken_flag

    def serialize(self, value: Any, serdes_context: SerDesContext) -> bytes:
        if value == 13:
            raise RuntimeError("thirteen is unlucky")
        return json.dumps(value).encode()

    def deserialize(self, data: str | bytes, serdes_context: SerDesContext) -> Any:
        if os.path.exists(self.broken_flag):
            raise ValueError("cannot read this any more")
        return json.loads(data)


def big_or_picky(ctx: DurableContext, item: int, index: int, items: Any) -> Any:
    return "x" * 70_000 if item != 13 else 13


@durable_execution
def picky_map(event: dict[str, Any], context: DurableContext) -> Any:
    config = MapConfig(item_serdes=Picky(event["flag"]))
    result = context.map(event["items"], big_or_picky, name="picky", config=config)
    return [(item.status.value, len(item.result) if item.result else None,
             item.error.message if item.error else None) for item in result.all]


def test_a_custom_serdes_that_raises_in_serialize_fails_that_item_only(tmp_path: Path) -> None:
    event = {"flag": str(tmp_path / "broken"), "items": [1, 13, 2]}
    result = run(picky_map, event, tmp_path)
    assert [(status, size) for status, size, _ in result] == [("SUCCEEDED", 70_000), ("FAILED", None),
                                                              ("SUCCEEDED", 70_000)]
    message = result[1][2]
    assert "item 1 of map '1'" in message and "thirteen is unlucky" in message
    assert record_at(tmp_path, (1, 1)).error["ErrorType"] == "durablemap.SerDesError"  # type: ignore[index]


def test_a_record_that_cannot_be_decoded_on_replay_raises_serdes_error_naming_it(tmp_path: Path) -> None:
    # 4 x 70 KB: the map record holds a summary, so a replay reads every item through the item serdes.
    event = {"flag": str(tmp_path / "broken"), "items": [1, 2, 3, 4]}
    assert [status for status, _, _ in run(picky_map, event, tmp_path)] == ["SUCCEEDED"] * 4
    assert record_at(tmp_path, (1,)).get("replay_children") is True
    (tmp_path / "broken").touch()
    with pytest.raises(SerDesError, match=r"item 0 of map '1'.*cannot be deserialized.*cannot read this any more"):
        run(picky_map, event, tmp_path)


class BadOutput(SerDes[Any]):
    """Returns a dict for 0 and an object for 1 (neither str nor bytes), a bytearray (bytes-like) for 2."""

    def serialize(self, value: Any, serdes_context: SerDesContext) -> Any:
        return [{"v": value}, Thing(), bytearray(b"2")][value]

    def deserialize(self, data: Any, serdes_context: SerDesContext) -> Any:
        assert type(data) is bytes, data
        return int(data)


@durable_execution
def bad_output_map(event: Any, context: DurableContext) -> Any:
    return context.map([0, 1, 2], identity, name="bad", config=MapConfig(item_serdes=BadOutput())).to_dict()


def test_a_serdes_returning_neither_str_nor_bytes_fails_the_item_not_the_job(tmp_path: Path) -> None:
    entries = run(bad_output_map, None, tmp_path)["all"]
    assert [entry["status"] for entry in entries] == ["FAILED", "FAILED", "SUCCEEDED"]
    for index, type_name in ((0, "dict"), (1, "tests.test_serdes_map.Thing")):
        message = entries[index]["error"]["ErrorMessage"]
        assert f"item {index} of map '1'" in message and f"BadOutput.serialize returned {type_name}" in message
        assert "str or bytes" in message
    assert (entries[2]["result"], record_at(tmp_path, (1, 2)).payload) == (2, b"2")


# -- step and child serdes inside items ---------------------------------------------------------------------


def step_and_child(ctx: DurableContext, item: dict[str, Any], index: int, items: Any) -> Any:
    serdes = Wrap(item["log"])

    def compute(step_context: StepContext) -> Any:
        note(item["log"], f"step {index}")
        return {"step": index, "pair": (index, index)}

    def block(child: DurableContext) -> Any:
        note(item["log"], f"block {index}")
        return (index, "child")

    stepped = ctx.step(compute, name="compute", config=StepConfig(serdes=serdes))
    child = ctx.run_in_child_context(block, name="block", config=ChildConfig(serdes=serdes))
    if os.path.exists(item["poison"]):
        raise ValueError("poisoned after the step and the child")
    return [stepped, child]


@durable_execution
def step_child_map(event: dict[str, Any], context: DurableContext) -> Any:
    result = context.map([event] * 2, step_and_child, name="inner")
    return [(item.status.value, item.result) for item in result.all]


def test_step_and_child_serdes_inside_items_are_stored_byte_for_byte_and_replayed_through_them(
        tmp_path: Path) -> None:
    log = str(tmp_path)
    poison = tmp_path / "poison"
    poison.touch()
    event = {"log": log, "poison": str(poison)}
    first = run(step_child_map, event, tmp_path)
    assert [status for status, _ in first] == ["FAILED", "FAILED"]
    for index in range(2):
        step = record_at(tmp_path, (1, index, 1))
        child = record_at(tmp_path, (1, index, 2))
        assert (step.kind, step.status, step.payload) == ("STEP", "SUCCEEDED",
                                                          wrapped({"step": index, "pair": (index, index)}))
        assert (child.status, child.payload) == ("SUCCEEDED", wrapped((index, "child")))
    assert calls(log, "ser ") == ["ser 1/0/1", "ser 1/0/2", "ser 1/1/1", "ser 1/1/2"]

    poison.unlink()
    (tmp_path / "calls").unlink()
    second = run(step_child_map, event, tmp_path, retry_failed=True)
    # JSON round trips on the first run of an operation and on its replay alike: tuples become lists.
    assert second == [("SUCCEEDED", [{"step": i, "pair": [i, i]}, [i, "child"]]) for i in range(2)]
    assert calls(log, "step ") == [] and calls(log, "block ") == []  # replayed, not run again
    assert calls(log, "de ") == ["de 1/0/1", "de 1/0/2", "de 1/1/1", "de 1/1/2"]
    assert calls(log, "ser ") == []


# -- summaries --------------------------------------------------------------------------------------------


def seventy_kb(ctx: DurableContext, item: dict[str, Any], index: int, items: Any) -> str:
    note(item["log"], f"func {index}")
    return chr(ord("a") + index) * 70_000


def summarize(result: BatchResult[str]) -> str:
    return f"{result.success_count} items, {sum(len(r) for r in result.get_results())} chars"


def raising_summary(result: BatchResult[str]) -> str:
    raise RuntimeError("summary broke")


SUMMARIES = {"none": None, "count": summarize, "raising": raising_summary}


@durable_execution
def large_map(event: dict[str, Any], context: DurableContext) -> Any:
    serdes = Text(event["log"]) if event.get("text") else None
    config = MapConfig(summary_generator=SUMMARIES[event["summary"]], serdes=serdes)
    result = context.map([event] * 4, seventy_kb, name="large", config=config)
    return [(item.index, item.status.value, item.result) for item in result.all]


@pytest.mark.parametrize(("summary", "text"), [("none", False), ("count", False), ("count", True)])
def test_a_batch_result_over_256_kib_is_stored_as_a_summary_and_replayed_in_full(tmp_path: Path, summary: str,
                                                                                   text: bool) -> None:
    log = str(tmp_path)
    event = {"log": log, "summary": summary, "text": text}
    expected = [(i, "SUCCEEDED", chr(ord("a") + i) * 70_000) for i in range(4)]
    assert run(large_map, event, tmp_path) == expected
    record = record_at(tmp_path, (1,))
    assert (record.status, record.payload, record.get("replay_children")) == ("SUCCEEDED", None, True)
    assert record.get("summary") == ("4 items, 280000 chars" if summary == "count" else None)
    assert (record.get("succeeded"), record.get("total"), record.get("reason")) == (4, 4, "ALL_COMPLETED")
    if text:
        assert record_at(tmp_path, (1, 3)).payload == json.dumps({"value": "d" * 70_000})

    (tmp_path / "calls").unlink(missing_ok=True)
    assert run(large_map, event, tmp_path) == expected
    assert calls(log, "func ") == []  # rebuilt from the item records; no item ran again
    # with a custom serdes, every item came back through its deserialize, the BatchResult did not
    assert calls(log) == (["de 1/0", "de 1/1", "de 1/2", "de 1/3"] if text else [])


def test_a_raising_summary_generator_fails_the_map(tmp_path: Path) -> None:
    event = {"log": str(tmp_path), "summary": "raising"}
    with pytest.raises(ChildContextError, match="summary broke"):
        run(large_map, event, tmp_path)
    assert record_at(tmp_path, (1,)).status == "FAILED"
    (tmp_path / "calls").unlink()
    with pytest.raises(ChildContextError, match="summary broke"):
        run(large_map, event, tmp_path)
    assert calls(str(tmp_path)) == []

