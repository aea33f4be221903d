"""Serialization: the msgpack default keeps types exactly; JSON and the module-level helpers."""

from __future__ import annotations

import collections
import datetime as dt
import enum
import math
import threading
import uuid
import zoneinfo
from decimal import Decimal
from typing import Any, NamedTuple

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import durablemap.serdes as serdes_module
from durablemap._batch import BatchItem, BatchItemStatus, BatchResult, CompletionReason
from durablemap._errors import ErrorObject, RetryableSerDesError, SerDesError
from durablemap.serdes import (
    DEFAULT_SERDES,
    JsonSerDes,
    MsgpackSerDes,
    PassThroughSerDes,
    SerDes,
    SerDesContext,
    deserialize_value,
    serialize_value,
)

CTX = SerDesContext("op-1", "exec-1")


def round_trip(value: Any) -> Any:
    data = DEFAULT_SERDES.serialize(value, CTX)
    assert isinstance(data, bytes)
    return DEFAULT_SERDES.deserialize(data, CTX)


def same(a: Any, b: Any) -> bool:
    """Equal and of the same type all the way down (Decimal exponents, tz and fold included)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, Decimal):
        return bool(a.as_tuple() == b.as_tuple())
    if isinstance(a, dt.datetime):
        return bool(a == b) and a.tzinfo == b.tzinfo and a.fold == b.fold and a.utcoffset() == b.utcoffset()
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb) for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True)
        )
    return bool(a == b)


def test_all_names_exist() -> None:
    for name in serdes_module.__all__:
        assert getattr(serdes_module, name) is not None
    assert isinstance(serdes_module.DEFAULT_SERDES, MsgpackSerDes)
    assert serdes_module.ExtendedTypeSerDes is MsgpackSerDes


def test_serdes_context() -> None:
    assert SerDesContext() == SerDesContext("", "")
    assert (CTX.operation_id, CTX.durable_execution_arn) == ("op-1", "exec-1")


PARIS = zoneinfo.ZoneInfo("Europe/Paris")

EXTENDED_VALUES = [
    None,
    True,
    False,
    0,
    -1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    2**64,
    -(2**63) - 1,
    10**40,
    -(10**40),
    1.5,
    -0.0,
    math.inf,
    "",
    "héllo",
    b"",
    b"\x00\xff",
    [],
    {},
    (),
    (1,),
    ((1, 2), [3, (4,)]),
    [(1, 2)],
    {"t": (1, 2)},
    {1: "x", 2: [None]},
    {(1, "a"): 2},
    {None: 1, True: 2, 1.5: 3},
    Decimal("1.10"),
    Decimal("-0"),
    Decimal("1E+3"),
    Decimal("Infinity"),
    dt.datetime(2024, 5, 6, 7, 8, 9, 123456),
    dt.datetime(2024, 5, 6, tzinfo=dt.UTC),
    dt.datetime(2024, 5, 6, tzinfo=dt.timezone(dt.timedelta(hours=-3, minutes=-30))),
    # Python 3.11's fromisoformat reads this offset (from isoformat's '+00:00:00.000001') as UTC.
    dt.datetime(2000, 1, 1, tzinfo=dt.timezone(dt.timedelta(microseconds=1))),
    dt.datetime(2024, 7, 1, 12, tzinfo=PARIS),
    dt.datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=PARIS),
    dt.datetime(2024, 3, 31, 2, 30, tzinfo=PARIS),  # inside the DST gap
    dt.datetime(2024, 1, 1, fold=1),
    dt.date(2024, 2, 29),
    dt.date(1, 1, 1),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    {uuid.UUID(int=1): Decimal("2.50")},
]


@pytest.mark.parametrize("value", EXTENDED_VALUES, ids=repr)
def test_extended_types_round_trip_exactly(value: Any) -> None:
    assert same(round_trip(value), value)


def test_nan_round_trips() -> None:
    assert math.isnan(round_trip(math.nan))
    assert round_trip(Decimal("NaN")).is_nan()


@pytest.mark.parametrize("value", [bytearray(b"ab"), memoryview(b"ab")])
def test_bytes_like_become_bytes(value: Any) -> None:
    assert same(round_trip(value), b"ab")


class Color(str, enum.Enum):  # noqa: UP042 - the (str, Enum) mixin, whose str() is 'Color.RED'
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Point(NamedTuple):
    x: int
    y: int


class Tag(str):
    pass


def test_subclasses_become_their_base_types() -> None:
    assert same(round_trip(Color.RED), "red")
    assert same(round_trip(BatchItemStatus.FAILED), "FAILED")
    assert same(round_trip(Level.HIGH), 3)
    assert same(round_trip(Tag("t")), "t")
    assert same(round_trip(Point(1, 2)), (1, 2))
    assert same(round_trip(collections.OrderedDict(a=1)), {"a": 1})
    assert same(round_trip(collections.defaultdict(list, {1: [2]})), {1: [2]})
    assert same(round_trip({Color.RED: [Level.HIGH]}), {"red": [3]})


def test_batch_result_round_trips() -> None:
    result = BatchResult(
        [
            BatchItem(0, BatchItemStatus.SUCCEEDED, {"v": (1, Decimal("2.0"))}),
            BatchItem(1, BatchItemStatus.FAILED, None, ErrorObject("bad", "ValueError", None, ["tb"])),
            BatchItem(2, BatchItemStatus.STARTED),
        ],
        CompletionReason.FAILURE_TOLERANCE_EXCEEDED,
    )
    restored = round_trip(result)
    assert type(restored) is BatchResult
    assert restored == result
    assert same(restored.all[0].result, {"v": (1, Decimal("2.0"))})
    nested = round_trip({"inner": result, "items": [result.all[0]], "err": result.all[1].error})
    assert nested["inner"] == result
    assert type(nested["items"][0]) is BatchItem
    assert nested["err"] == result.all[1].error


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        ({1, 2}, "set"),
        (frozenset(), "frozenset"),
        (object(), "object"),
        (Color, "enum.EnumType"),
        ([1, {"deep": {3}}], "set"),
        (dt.time(1, 2), "datetime.time"),
        (Point, "type"),
    ],
)
def test_unsupported_types_raise_serdes_error(value: Any, type_name: str) -> None:
    with pytest.raises(SerDesError) as info:
        DEFAULT_SERDES.serialize(value, CTX)
    message = str(info.value)
    assert f"Cannot serialize a value of type {type_name}:" in message
    assert "custom SerDes" in message


def test_custom_class_is_named_with_its_module() -> None:
    class Custom:
        pass

    with pytest.raises(SerDesError, match=rf"type {__name__}\.test_custom_class_is_named_with_its_module"):
        DEFAULT_SERDES.serialize(Custom(), CTX)


def test_packer_is_reusable_after_a_failure() -> None:
    with pytest.raises(SerDesError):
        DEFAULT_SERDES.serialize([1, 2, (3, {4})], CTX)
    assert round_trip([1, (2, 3)]) == [1, (2, 3)]


def test_deserialize_rejects_str_and_unknown_extensions() -> None:
    with pytest.raises(SerDesError, match="needs bytes, got str"):
        DEFAULT_SERDES.deserialize("[1]", CTX)
    with pytest.raises(SerDesError, match="Unknown msgpack extension type 99"):
        DEFAULT_SERDES.deserialize(msgpack.packb(msgpack.ExtType(99, b"")), CTX)


def test_concurrent_threads_do_not_share_buffers() -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(300):
                value = {"n": n, "i": i, "t": (n, (i, [Decimal(i)])), "big": 2**70 + i}
                assert same(round_trip(value), value)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_json_serdes() -> None:
    json_serdes = JsonSerDes()
    data = json_serdes.serialize({"a": (1, 2), 3: None}, CTX)
    assert data == '{"a": [1, 2], "3": null}'
    assert json_serdes.deserialize(data, CTX) == {"a": [1, 2], "3": None}
    assert json_serdes.deserialize(data.encode(), CTX) == {"a": [1, 2], "3": None}


def test_pass_through_serdes() -> None:
    p = PassThroughSerDes()
    assert p.serialize("x", CTX) == "x"
    assert p.serialize(b"x", CTX) == b"x"
    assert p.deserialize(b"x", CTX) == b"x"
    with pytest.raises(SerDesError, match="only str or bytes, got int"):
        p.serialize(1, CTX)


class Upper(SerDes[str]):
    def serialize(self, value: str, serdes_context: SerDesContext) -> str:
        return f"{serdes_context.operation_id}:{value.upper()}"

    def deserialize(self, data: str | bytes, serdes_context: SerDesContext) -> str:
        assert isinstance(data, str)
        return data.split(":", 1)[1].lower()


class Broken(SerDes[Any]):
    def __init__(self, error: Exception) -> None:
        self.error = error

    def serialize(self, value: Any, serdes_context: SerDesContext) -> bytes:
        raise self.error

    def deserialize(self, data: str | bytes, serdes_context: SerDesContext) -> Any:
        raise self.error


def test_helpers_default_and_custom_serdes() -> None:
    data = serialize_value(None, (1, 2), "op", "exec")
    assert isinstance(data, bytes)
    assert deserialize_value(None, data, "op", "exec") == (1, 2)
    text = serialize_value(Upper(), "abc", "op-7", "exec")
    assert text == "op-7:ABC"
    assert deserialize_value(Upper(), text, "op-7", "exec") == "abc"


def test_helpers_wrap_unexpected_errors() -> None:
    with pytest.raises(SerDesError, match=r"^Serialization failed for operation op-3: nope\. ") as info:
        serialize_value(Broken(TypeError("nope")), 1, "op-3", "exec")
    assert isinstance(info.value.__cause__, TypeError)
    assert "Broken" in str(info.value)
    with pytest.raises(SerDesError, match=r"^Deserialization failed for operation op-4: nope\. "):
        deserialize_value(Broken(ValueError("nope")), b"", "op-4", "exec")
    with pytest.raises(SerDesError, match=r"^Serialization failed for operation op-5: .*Object of type set"):
        serialize_value(JsonSerDes(), {1}, "op-5", "exec")
    with pytest.raises(SerDesError, match=r"^Deserialization failed for operation op-6"):
        deserialize_value(None, b"\xc1", "op-6", "exec")


@pytest.mark.parametrize("error", [SerDesError("mine"), RetryableSerDesError("mine")])
def test_helpers_pass_serdes_errors_through(error: Exception) -> None:
    with pytest.raises(type(error)) as info:
        serialize_value(Broken(error), 1, "op", "exec")
    assert info.value is error
    with pytest.raises(type(error)) as info:
        deserialize_value(Broken(error), b"", "op", "exec")
    assert info.value is error


def test_default_serdes_error_passes_through_helpers_unwrapped() -> None:
    with pytest.raises(SerDesError, match=r"^Cannot serialize a value of type set"):
        serialize_value(None, {1}, "op", "exec")


# Hypothesis: any value built from supported types comes back exactly.

hashable_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**80), 2**80)
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | st.uuids()
    | st.dates()
)
scalars = (
    hashable_scalars
    | st.floats(allow_nan=False)
    | st.decimals(allow_nan=False)
    | st.datetimes(
        timezones=st.none()
        | st.timezones()
        | st.builds(dt.timezone, st.timedeltas(dt.timedelta(hours=-23), dt.timedelta(hours=23)))
    )
)
keys = hashable_scalars | st.tuples(hashable_scalars, hashable_scalars)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=4).map(tuple)
        | st.dictionaries(keys, children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(values)
def test_any_supported_value_round_trips_exactly(value: Any) -> None:
    assert same(round_trip(value), value)
