"""Serialization of operation results: the `SerDes` interface and durablemap's msgpack default.

`MsgpackSerDes` (the default) writes msgpack with extension types, so a value comes back with the type
it had: tuples stay tuples, int dict keys stay ints, and ``Decimal``, ``datetime`` (with its tzinfo),
``date``, ``UUID``, ``bytes``, big ints and `BatchResult` survive. Anything else raises `SerDesError`
naming the type; the item or step that produced it fails, nothing else.

The default is on the hot path (every item result goes through it twice), so it reuses msgpack
packers, one free list per thread: building a ``Packer`` costs several times more than packing a
small value with it.
"""

from __future__ import annotations

import datetime as _dt
import json
import threading
import uuid
import zoneinfo
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Generic, TypeVar

import msgpack

from durablemap._batch import BatchItem, BatchResult
from durablemap._errors import ErrorObject, RetryableSerDesError, SerDesError

__all__ = [
    "SerDesContext",
    "SerDes",
    "MsgpackSerDes",
    "JsonSerDes",
    "PassThroughSerDes",
    "ExtendedTypeSerDes",
    "DEFAULT_SERDES",
    "EXTENDED_TYPES_SERDES",
    "DEFAULT_JSON_SERDES",
    "serialize_value",
    "deserialize_value",
    "serialize",
    "deserialize",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SerDesContext:
    """Where a value is being (de)serialized: the operation id and the execution id."""

    operation_id: str = ""
    durable_execution_arn: str = ""


class SerDes(ABC, Generic[T]):
    """Turns values into ``str`` or ``bytes`` for the store, and back."""

    @abstractmethod
    def serialize(self, value: T, serdes_context: SerDesContext) -> str | bytes:
        """Encode ``value``; raise `SerDesError` when it cannot be encoded."""

    @abstractmethod
    def deserialize(self, data: str | bytes, serdes_context: SerDesContext) -> T:
        """Decode what `serialize` produced."""


# Extension type codes. They are part of the store format: never renumber them.
_EXT_TUPLE = 1
_EXT_DECIMAL = 2
_EXT_DATETIME = 3
_EXT_DATE = 4
_EXT_UUID = 5
_EXT_BIGINT = 6
_EXT_BATCH_RESULT = 7
_EXT_BATCH_ITEM = 8
_EXT_ERROR_OBJECT = 9
_EXT_DATETIME_EXACT = 10  # a datetime with a ZoneInfo or fold=1: "isoformat|zone key|fold"

_SUPPORTED = "None, bool, int, float, str, bytes, list, tuple, dict, Decimal, datetime, date, UUID and BatchResult"


def _type_name(value: object) -> str:
    """``module.QualName`` of a value's type, unqualified for builtins (as error types are named)."""
    cls = type(value)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _unsupported(value: object) -> SerDesError:
    name = _type_name(value)
    return SerDesError(
        f"Cannot serialize a value of type {name}: durablemap's default serdes (msgpack) supports "
        f"{_SUPPORTED}. Return one of these (for example a list instead of a set, a dict instead of "
        "an object), or pass a custom SerDes (MapConfig(item_serdes=...), StepConfig(serdes=...))."
    )


_tuple_new = tuple.__new__


def _ext(code: int, data: bytes) -> msgpack.ExtType:
    # ExtType's own constructor validates in Python and costs three times as much; our codes and
    # payloads are valid by construction.
    return _tuple_new(msgpack.ExtType, (code, data))


def _pack_ext(code: int, value: Any) -> msgpack.ExtType:
    return _ext(code, _pack(value))


def _encode_bigint(value: int) -> msgpack.ExtType:
    # Only ints outside msgpack's 64-bit range reach the default hook.
    return _ext(_EXT_BIGINT, str(int(value)).encode("ascii"))


def _encode_datetime(value: _dt.datetime) -> msgpack.ExtType:
    tz = value.tzinfo
    key = tz.key if isinstance(tz, zoneinfo.ZoneInfo) else None
    if key is None and not value.fold:
        return _ext(_EXT_DATETIME, value.isoformat().encode("ascii"))
    # isoformat keeps only the offset: record the zone's name (its DST rules) and the fold as well.
    return _ext(_EXT_DATETIME_EXACT, f"{value.isoformat()}|{key or ''}|{value.fold}".encode())


def _parse_datetime(text: str) -> _dt.datetime:
    """``datetime.fromisoformat``, but exact for an offset with microseconds on every Python version.

    Python 3.11 reads ``+00:00:00.000001`` as UTC: such an offset (never one of a real zone) is split
    off and applied here.
    """
    if text[-7:-6] != "." or text[-16:-15] not in ("+", "-"):
        return _dt.datetime.fromisoformat(text)
    sign = -1 if text[-16] == "-" else 1
    hours, minutes, seconds = (int(part) for part in text[-15:-7].split(":"))
    offset = _dt.timedelta(hours=hours, minutes=minutes, seconds=seconds, microseconds=int(text[-6:]))
    return _dt.datetime.fromisoformat(text[:-16]).replace(tzinfo=_dt.timezone(sign * offset))


def _decode_datetime_exact(data: bytes) -> _dt.datetime:
    text, key, fold = data.decode().split("|")
    parsed = _parse_datetime(text)
    if key:
        # Same wall time, zone and fold as recorded: the very same local time, even in a DST gap.
        return parsed.replace(tzinfo=zoneinfo.ZoneInfo(key), fold=int(fold))
    return parsed.replace(fold=int(fold))


def _encode_subclass(value: object) -> Any:
    """Encode a value whose type is not exactly a supported one (subclasses, str enums)."""
    if isinstance(value, BatchResult):
        return _pack_ext(_EXT_BATCH_RESULT, value.to_dict())
    if isinstance(value, BatchItem):  # before tuple: a BatchItem is one
        return _pack_ext(_EXT_BATCH_ITEM, value.to_dict())
    if isinstance(value, ErrorObject):
        return _pack_ext(_EXT_ERROR_OBJECT, value.to_dict())
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        # IntEnum members and other int subclasses are stored as their int value.
        return int.__int__(value)
    if isinstance(value, str):
        # str.__str__ gives the plain text even for (str, Enum) members, whose str() is "Cls.NAME".
        return str.__str__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, tuple):  # named tuples come back as plain tuples
        return _pack_ext(_EXT_TUPLE, list(value))
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    if isinstance(value, _dt.datetime):
        return _encode_datetime(value)
    if isinstance(value, _dt.date):
        return _ext(_EXT_DATE, value.isoformat().encode("ascii"))
    if isinstance(value, Decimal):
        return _ext(_EXT_DECIMAL, str(value).encode("ascii"))
    if isinstance(value, uuid.UUID):
        return _ext(_EXT_UUID, value.bytes)
    raise _unsupported(value)


_ENCODERS: dict[type, Callable[[Any], Any]] = {
    tuple: lambda v: _pack_ext(_EXT_TUPLE, list(v)),
    int: _encode_bigint,
    Decimal: lambda v: _ext(_EXT_DECIMAL, str(v).encode("ascii")),
    _dt.datetime: _encode_datetime,
    _dt.date: lambda v: _ext(_EXT_DATE, v.isoformat().encode("ascii")),
    uuid.UUID: lambda v: _ext(_EXT_UUID, v.bytes),
    bytearray: bytes,
    memoryview: bytes,
}


def _default(value: object) -> Any:
    """msgpack's hook for every value whose type is not exactly a native msgpack type."""
    encode = _ENCODERS.get(type(value))
    if encode is not None:
        return encode(value)
    return _encode_subclass(value)


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_ext_hook)


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _EXT_TUPLE:
        return tuple(_unpack(data))
    if code == _EXT_DECIMAL:
        return Decimal(data.decode("ascii"))
    if code == _EXT_DATETIME:
        return _parse_datetime(data.decode("ascii"))
    if code == _EXT_DATETIME_EXACT:
        return _decode_datetime_exact(data)
    if code == _EXT_DATE:
        return _dt.date.fromisoformat(data.decode("ascii"))
    if code == _EXT_UUID:
        return uuid.UUID(bytes=data)
    if code == _EXT_BIGINT:
        return int(data.decode("ascii"))
    if code == _EXT_BATCH_RESULT:
        return BatchResult.from_dict(_unpack(data))
    if code == _EXT_BATCH_ITEM:
        return BatchItem.from_dict(_unpack(data))
    if code == _EXT_ERROR_OBJECT:
        return ErrorObject.from_dict(_unpack(data))
    raise SerDesError(
        f"Unknown msgpack extension type {code}: the data was written by a newer durablemap or another "
        "serdes; read it with the serdes that wrote it."
    )


def _new_packer() -> msgpack.Packer:
    return msgpack.Packer(default=_default, strict_types=True, use_bin_type=True)


class _Packers(threading.local):
    """Idle packers of this thread. A free list, not one packer: the default hook packs nested values
    (tuples) while the outer packer is busy."""

    def __init__(self) -> None:
        self.free: list[msgpack.Packer] = []


_packers = _Packers()


def _pack(value: Any) -> bytes:
    free = _packers.free
    packer = free.pop() if free else _new_packer()
    try:
        data: bytes = packer.pack(value)
    finally:
        # msgpack resets the packer's buffer when pack() raises, so it can be reused either way.
        free.append(packer)
    return data


class MsgpackSerDes(SerDes[Any]):
    """durablemap's default: msgpack bytes that keep Python types (see the module docstring)."""

    def serialize(self, value: Any, serdes_context: SerDesContext | None = None) -> bytes:
        """Encode ``value``; an unsupported type raises `SerDesError` naming it. The context is
        optional (the encoding does not depend on it), as in the SDK's ``ExtendedTypeSerDes``."""
        return _pack(value)

    def deserialize(self, data: str | bytes, serdes_context: SerDesContext | None = None) -> Any:
        """Decode bytes written by `serialize`; the context is optional, as for `serialize`."""
        if isinstance(data, str):
            raise SerDesError(
                "MsgpackSerDes.deserialize needs bytes, got str: the value was probably written by a "
                "str serdes such as JsonSerDes; read it with that serdes."
            )
        return _unpack(data)


class JsonSerDes(SerDes[Any]):
    """Plain JSON text: tuples become lists and dict keys become str, as ``json`` does."""

    def serialize(self, value: Any, serdes_context: SerDesContext | None = None) -> str:
        """``json.dumps(value)`` (the context is optional and unused)."""
        return json.dumps(value)

    def deserialize(self, data: str | bytes, serdes_context: SerDesContext | None = None) -> Any:
        """``json.loads(data)`` (the context is optional and unused)."""
        return json.loads(data)


class PassThroughSerDes(SerDes[Any]):
    """Stores a value that already is ``str`` or ``bytes`` as it is."""

    def serialize(self, value: Any, serdes_context: SerDesContext | None = None) -> str | bytes:
        """Return ``value`` unchanged; it must be ``str`` or ``bytes`` (the context is unused)."""
        if not isinstance(value, str | bytes):
            raise SerDesError(
                f"PassThroughSerDes stores only str or bytes, got {_type_name(value)}; "
                "use the default serdes for other values."
            )
        return value

    def deserialize(self, data: str | bytes, serdes_context: SerDesContext | None = None) -> Any:
        """Return ``data`` unchanged (the context is unused)."""
        return data


ExtendedTypeSerDes = MsgpackSerDes
"""The AWS SDK's name for its type-keeping default serdes; here it is `MsgpackSerDes`."""

DEFAULT_SERDES = MsgpackSerDes()
"""The shared default instance, used wherever a serdes is None."""

EXTENDED_TYPES_SERDES = DEFAULT_SERDES
"""The AWS SDK's name for the default instance."""

DEFAULT_JSON_SERDES = JsonSerDes()
"""A shared `JsonSerDes` instance."""


def serialize_value(serdes: SerDes[Any] | None, value: Any, operation_id: str, execution_id: str) -> bytes | str:
    """Serialize ``value`` for ``operation_id`` with ``serdes`` (None: `DEFAULT_SERDES`).

    `SerDesError` and `RetryableSerDesError` pass through; any other error becomes `SerDesError`.
    """
    chosen = serdes if serdes is not None else DEFAULT_SERDES
    try:
        if type(chosen) is MsgpackSerDes:
            return _pack(value)  # the hot path: the default ignores the context, so skip building it
        data = chosen.serialize(value, SerDesContext(operation_id, execution_id))
    except (SerDesError, RetryableSerDesError):
        raise
    except Exception as e:
        raise SerDesError(
            f"Serialization failed for operation {operation_id}: {e}. Return a value the serdes "
            f"{type(chosen).__name__} supports, or pass a SerDes that can encode "
            f"{_type_name(value)}."
        ) from e
    if type(data) is bytes or type(data) is str:
        return data
    if isinstance(data, str):
        return str.__str__(data)
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    # Anything else would be written into the record as it is (or fail to be written at all).
    raise SerDesError(
        f"Serialization failed for operation {operation_id}: {type(chosen).__name__}.serialize returned "
        f"{_type_name(data)}; a SerDes must return str or bytes."
    )


def deserialize_value(serdes: SerDes[Any] | None, data: str | bytes, operation_id: str, execution_id: str) -> Any:
    """Deserialize ``data`` of ``operation_id`` with ``serdes`` (None: `DEFAULT_SERDES`).

    `SerDesError` and `RetryableSerDesError` pass through; any other error becomes `SerDesError`.
    """
    chosen = serdes if serdes is not None else DEFAULT_SERDES
    try:
        if type(chosen) is MsgpackSerDes and type(data) is bytes:
            return _unpack(data)  # the hot path, as in serialize_value
        return chosen.deserialize(data, SerDesContext(operation_id, execution_id))
    except (SerDesError, RetryableSerDesError):
        raise
    except Exception as e:
        raise SerDesError(
            f"Deserialization failed for operation {operation_id}: {e}. Read the value with the same "
            f"serdes that wrote it (this is {type(chosen).__name__})."
        ) from e


serialize = serialize_value
"""The AWS SDK's name for `serialize_value`."""

deserialize = deserialize_value
"""The AWS SDK's name for `deserialize_value`."""


def pack_default(value: Any) -> bytes:
    """The default serdes' bytes for ``value`` without a context (durablemap's hot paths)."""
    return _pack(value)


def unpack_default(data: bytes) -> Any:
    """Decode default-serdes bytes without a context (durablemap's hot paths)."""
    return _unpack(data)


def new_unpacker() -> msgpack.Unpacker:
    """A streaming unpacker for default-serdes values, to decode many concatenated values in C."""
    return msgpack.Unpacker(raw=False, strict_map_key=False, ext_hook=_ext_hook, max_buffer_size=2**31 - 1)


def new_packer() -> msgpack.Packer:
    """A packer of default-serdes bytes for one caller's own use (not re-entrant: a loop that packs
    one value at a time may keep one)."""
    return _new_packer()
