"""Operation records: what one operation stored in the journal looks like, as msgpack.

A record is a msgpack array ``[kind, status, name, sub_type, payload, error, meta]``:

- ``kind``: one of :class:`Kind` (``"EXECUTION"``, ``"CONTEXT"``, ``"STEP"``, ``"WAIT"``).
- ``status``: one of :class:`Status`.
- ``name``: the operation's name, or None.
- ``sub_type``: one of :class:`SubType` (``"Map"``, ``"MapIteration"``, ``"Parallel"``,
  ``"ParallelBranch"``, ``"Step"``, ``"Wait"``, ``"RunInChildContext"`` or ``"Execution"``).
- ``payload``: what the operation's serdes wrote (``bytes`` or ``str``), byte for byte, or None.
- ``error``: an ``ErrorObject.to_dict()``, or None.
- ``meta``: a small dict of operation-specific facts (attempt, deadline, counts, ...), or None.

A SUCCEEDED map item or parallel branch with its default name, whose result was written by the
default serdes, is stored compactly: ``[code, meta, value]``, where ``code`` says the sub_type (1:
MapIteration, 2: ParallelBranch), ``meta`` is the meta dict or, when all it holds is the input
fingerprint, the fingerprint alone, and ``value`` is the default serdes' msgpack encoding spliced in
as it is. One unpack then decodes record and value together, with few objects made: that is what
makes replaying a million items fast. ``decode_record`` expands such a record to the seven fields
(its ``payload`` being the same msgpack bytes), so other readers need not care.

Records never hold pickles: decoding one runs no user code.

This module is the one owner of the record format: the record fields (read them by name, through
:class:`Record` or the helpers below, never by position elsewhere), the item-key layout (re-exported
from ``_store._keys``, which the store itself needs), :data:`FORMAT_VERSION`, the sub-types, and the
size above which an operation's result is not kept in its record.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from enum import StrEnum
from operator import countOf, itemgetter
from typing import TYPE_CHECKING, Any, NamedTuple

import msgpack

from durablemap._batch import BatchItemStatus
from durablemap._errors import ErrorObject, SerDesError, StoreError
from durablemap._store._keys import FORMAT_VERSION, item_index, item_key, item_keys, op_key, path_of
from durablemap.serdes import DEFAULT_SERDES, SerDesContext, deserialize_value, unpack_default

if TYPE_CHECKING:
    from durablemap._store._interface import RecordStore

__all__ = [
    "BATCH_SUB_TYPES", "CHECKPOINT_SIZE_LIMIT_BYTES", "FORMAT_VERSION", "ITEM_SUB_TYPES", "Kind", "Record",
    "ItemRecords", "RecordWriter", "Status", "SubType", "all_compact", "as_record", "compact_code", "compact_fields",
    "compact_values", "decode_item_outcome", "decode_raw", "decode_record", "encode_record", "fields_meta",
    "is_compact", "is_compact_raw", "item_index", "item_key", "item_keys", "item_outcome", "item_records",
    "op_key", "path_of", "record_head", "with_meta",
]

#: An operation's result larger than this (serialized) is not kept in its record: a replay rebuilds
#: it (a map from its items' records, a child context by running its block again).
CHECKPOINT_SIZE_LIMIT_BYTES = 256 * 1024


class OperationType(StrEnum):
    """The type of a recorded operation (public as ``durablemap.lambda_service.OperationType``)."""

    EXECUTION = "EXECUTION"
    CONTEXT = "CONTEXT"
    STEP = "STEP"
    WAIT = "WAIT"


class OperationStatus(StrEnum):
    """The state of a recorded operation (public as ``durablemap.lambda_service.OperationStatus``)."""

    STARTED = "STARTED"
    PENDING = "PENDING"  # a step waiting for its next retry attempt
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


class OperationSubType(StrEnum):
    """What a recorded operation is, more precisely than its type (public as
    ``durablemap.lambda_service.OperationSubType``)."""

    EXECUTION = "Execution"
    MAP = "Map"
    MAP_ITERATION = "MapIteration"
    PARALLEL = "Parallel"
    PARALLEL_BRANCH = "ParallelBranch"
    STEP = "Step"
    WAIT = "Wait"
    RUN_IN_CHILD_CONTEXT = "RunInChildContext"


Kind = OperationType
Status = OperationStatus
SubType = OperationSubType
#: The sub-types of a batch operation, and of its items.
BATCH_SUB_TYPES = frozenset((SubType.MAP, SubType.PARALLEL))
ITEM_SUB_TYPES = frozenset((SubType.MAP_ITERATION, SubType.PARALLEL_BRANCH))


class Record(NamedTuple):
    """One decoded operation record."""

    kind: str
    status: str
    name: str | None
    sub_type: str | None
    payload: bytes | str | None = None
    error: dict[str, Any] | None = None
    meta: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        """True when the operation SUCCEEDED or FAILED."""
        return self.status in _FINISHED

    def get(self, key: str, default: Any = None) -> Any:
        """A value from ``meta``."""
        return default if self.meta is None else self.meta.get(key, default)


_FINISHED = frozenset((Status.SUCCEEDED, Status.FAILED))
_CONTEXT = SerDesContext()
_pack = msgpack.Packer(use_bin_type=True).pack


def encode_record(record: Record) -> bytes:
    """The msgpack bytes of a record."""
    data: bytes = _pack(list(record))
    return data


_ARRAY3 = b"\x93"
_COMPACT_SUB_TYPES = {1: SubType.MAP_ITERATION.value, 2: SubType.PARALLEL_BRANCH.value}
_COMPACT_CODES = {sub_type: code for code, sub_type in _COMPACT_SUB_TYPES.items()}


def _encode_inline_item(status: str, name: str | None, sub_type: str, meta: dict[str, Any] | None,
                        value: bytes) -> bytes:
    """The record of an item whose result ``value`` is default-serdes msgpack: compact when it can
    be (see the module docstring), else the seven fields with ``value`` as the payload."""
    head = record_head(Kind.CONTEXT, status, sub_type) if name is None else None
    if head is None:
        return encode_record(Record(Kind.CONTEXT, status, name, sub_type, value, None, meta))
    record: bytes = head + _pack(meta) + value
    return record


class ItemRecords:
    """The one builder of item records (map items and parallel branches) of one sub-type: the
    worker's loops, ``run_item`` and crash recovery (``_lost``) all write items through it. Get one
    with :func:`item_records`."""

    __slots__ = ("fingerprinted", "head", "plain", "sub_type")

    def __init__(self, sub_type: str) -> None:
        self.sub_type = sub_type
        #: The bytes before ``meta`` of a compact SUCCEEDED record of this sub-type (None: none).
        self.head = record_head(Kind.CONTEXT, Status.SUCCEEDED, sub_type)
        #: ``fingerprinted(fp, value)``: the SUCCEEDED record of a default-named item whose meta is
        #: at most its input fingerprint ``fp`` and whose result ``value`` is default-serdes msgpack
        #: (the hot path of tiny items: compact, the fingerprint standing for meta). A closure, not
        #: a method: it runs once per item.
        self.fingerprinted: Callable[[int | bytes | None, bytes], bytes] = self._fingerprinted()
        #: ``plain(fp, value)``: the same record for a result ``value`` that is an int (of 64 bits),
        #: float, str, bool or None, not yet packed: one pack call for the whole record (msgpack
        #: encodes these as the default serdes does); None for any other value, or when this
        #: sub-type has no compact records.
        self.plain: Callable[[int | bytes | None, Any], bytes | None] = self._plain()

    def _fingerprinted(self) -> Callable[[int | bytes | None, bytes], bytes]:
        head, pack = self.head, _pack
        if head is None:
            return lambda fp, value: self.succeeded(value, None if fp is None else {"fp": fp})
        bare: bytes = head + pack(None)

        def fingerprinted(fp: int | bytes | None, value: bytes) -> bytes:
            if fp is None:
                return bare + value
            record: bytes = head + pack(fp) + value
            return record

        return fingerprinted

    def _plain(self) -> Callable[[int | bytes | None, Any], bytes | None]:
        code, pack = _COMPACT_CODES.get(self.sub_type), _pack
        if self.head is None or code is None:
            return lambda fp, value: None

        def plain(fp: int | bytes | None, value: Any) -> bytes | None:
            if type(value) not in _PLAIN:
                return None
            try:
                record: bytes = pack((code, fp, value))  # [code, meta, value], as head + meta + value
            except OverflowError:  # an int past 64 bits: the default serdes has its own encoding
                return None
            return record

        return plain

    def succeeded(self, value: bytes, meta: dict[str, Any] | None = None, name: str | None = None) -> bytes:
        """The SUCCEEDED record of an item whose result ``value`` is default-serdes msgpack."""
        return _encode_inline_item(Status.SUCCEEDED, name, self.sub_type, meta, value)

    def serialized(self, payload: bytes | str, meta: dict[str, Any] | None = None, name: str | None = None) -> bytes:
        """The SUCCEEDED record of an item whose result a custom serdes wrote as ``payload``."""
        return encode_record(Record(Kind.CONTEXT, Status.SUCCEEDED, name, self.sub_type, payload, None, meta))

    def failed(self, error: dict[str, Any], meta: dict[str, Any] | None = None, name: str | None = None) -> bytes:
        """The FAILED record of an item, ``error`` an ``ErrorObject.to_dict()``."""
        return encode_record(Record(Kind.CONTEXT, Status.FAILED, name, self.sub_type, None, error, meta))

    def started(self, meta: dict[str, Any] | None = None, name: str | None = None) -> bytes:
        """The STARTED record of an unfinished item (what a worker crash leaves: its crash count)."""
        return encode_record(Record(Kind.CONTEXT, Status.STARTED, name, self.sub_type, None, None, meta))


_PLAIN = frozenset((int, float, str, bool, type(None)))


def compact_code(sub_type: str) -> int | None:
    """The code that stands for ``sub_type`` in a compact record (``[code, meta, value]``), or None
    when its records are not compact."""
    return _COMPACT_CODES.get(sub_type)


@functools.cache
def item_records(sub_type: str) -> ItemRecords:
    """The builder of item records of ``sub_type``."""
    return ItemRecords(sub_type)


def with_meta(raw: bytes, key: str, value: Any) -> bytes:
    """The record ``raw`` with ``meta[key] = value`` (a compact record's value bytes are kept as they
    are, not decoded)."""
    if is_compact_raw(raw):  # [code, meta, value]
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=max(len(raw), 1))
        unpacker.feed(raw)
        unpacker.read_array_header()
        code, old = unpacker.unpack(), unpacker.unpack()
        merged = dict(old) if isinstance(old, dict) else ({"fp": old} if old is not None else {})
        merged[key] = value
        return _encode_inline_item(Status.SUCCEEDED, None, _COMPACT_SUB_TYPES[code], merged, raw[unpacker.tell():])
    record = decode_record(raw)
    merged = dict(record.meta or {})
    merged[key] = value
    return encode_record(record._replace(meta=merged))


def fields_meta(fields: list[Any]) -> Any:
    """The ``meta`` of a record's ``fields`` as ``decode_raw`` gave them (compact or not): a dict,
    a compact record's fingerprint alone, or None."""
    return fields[1] if len(fields) == 3 else fields[6]


@functools.cache
def record_head(kind: str, status: str, sub_type: str) -> bytes | None:
    """The bytes before ``meta`` of a compact record of this kind, status and sub_type, or None
    when such records are not stored compactly."""
    code = _COMPACT_CODES.get(sub_type)
    if kind != Kind.CONTEXT or status != Status.SUCCEEDED or code is None:
        return None
    head: bytes = _ARRAY3 + _pack(code)
    return head


def compact_fields(fields: list[Any]) -> list[Any]:
    """The seven fields of a compact record (``fields`` as ``decode_raw`` gave them), the value's
    msgpack bytes as payload."""
    code, meta, value = fields
    if meta is not None and not isinstance(meta, dict):
        meta = {"fp": meta}
    return [Kind.CONTEXT.value, Status.SUCCEEDED.value, None, _COMPACT_SUB_TYPES[code],
            DEFAULT_SERDES.serialize(value, _CONTEXT), None, meta]


def is_compact_raw(raw: bytes) -> bool:
    """Whether the record bytes ``raw`` are a compact SUCCEEDED item record (nothing decoded)."""
    return raw[:1] == _ARRAY3


def is_compact(fields: list[Any]) -> bool:
    """Whether ``fields`` (as ``decode_raw`` gave them) are a compact SUCCEEDED item record."""
    return len(fields) == 3


def all_compact(records: list[list[Any]]) -> bool:
    """Whether every one of ``records`` (fields as ``decode_raw`` gave them) is compact."""
    return countOf(map(len, records), 3) == len(records)


def compact_values(records: Iterable[list[Any]]) -> Iterator[Any]:
    """The results held by compact item records (``all_compact``), already decoded, in order."""
    return map(_third, records)


_third = itemgetter(2)


def as_record(fields: list[Any]) -> Record:
    """The :class:`Record` of ``fields`` as ``decode_raw`` gave them (compact or not)."""
    return Record(*(compact_fields(fields) if len(fields) == 3 else fields))


class RecordWriter:
    """Writes the records of one operation: its key, kind, name and sub-type fixed, so each
    operation module states only what changes between its records (status, payload, error, meta)."""

    __slots__ = ("key", "kind", "name", "store", "sub_type")

    def __init__(self, store: RecordStore, key: bytes, kind: str, name: str | None, sub_type: str) -> None:
        self.store, self.key, self.kind, self.name, self.sub_type = store, key, kind, name, sub_type

    def record(self, status: str, payload: bytes | str | None = None, error: dict[str, Any] | None = None,
               meta: dict[str, Any] | None = None) -> bytes:
        """The encoded record of this operation with these fields."""
        return encode_record(Record(self.kind, status, self.name, self.sub_type, payload, error, meta))

    def put(self, status: str, payload: bytes | str | None = None, error: dict[str, Any] | None = None,
            meta: dict[str, Any] | None = None) -> None:
        """Write this operation's record, durably."""
        self.store.put(self.key, self.record(status, payload, error, meta))


def decode_raw(data: bytes) -> list[Any]:
    """The record's fields as a list, an inline value decoded in the same pass (the fast path:
    callers check ``len(fields) == 8``). Raises what msgpack raises on garbage."""
    fields: list[Any] = unpack_default(data)
    return fields


def decode_record(data: bytes, where: str = "") -> Record:
    """Decode record bytes; anything that is not a record raises :class:`StoreError`."""
    try:
        fields = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if not isinstance(fields, list) or len(fields) not in (3, 7):
            raise ValueError("not a record array")
        if len(fields) == 3:
            fields = compact_fields(decode_raw(data))
        return Record(*fields)
    except Exception as exc:
        raise StoreError(
            f"The record of {where or 'an operation'} cannot be decoded ({exc}). The store may be "
            "damaged or written by another program: `durablemap salvage STORE NEW_DIR` copies every "
            "record that can be read into a new store (run the job on that one: it re-runs only what "
            "was lost), or remove that execution with `durablemap rm ID` to start it afresh."
        ) from None


def item_outcome(fields: list[Any], item_serdes: Any, index: int, op_id: str,
                 execution_id: str) -> tuple[BatchItemStatus, Any, ErrorObject | None] | None:
    """What the item record ``fields`` (as ``decode_raw`` gives them) holds: ``(status, result,
    error)``, the result decoded with the map's item serdes; None when the item has not finished (a
    crash record). Every reader of item records (resume, replay, crash recovery) goes through here."""
    if len(fields) == 3:
        return BatchItemStatus.SUCCEEDED, fields[2], None
    if fields[1] == Status.SUCCEEDED:
        try:
            value = deserialize_value(item_serdes, fields[4] or b"", f"{op_id}/{index}", execution_id)
        except SerDesError as exc:
            raise SerDesError(f"The recorded result of item {index} of map '{op_id}' cannot be "
                              f"deserialized: {exc}") from exc
        return BatchItemStatus.SUCCEEDED, value, None
    if fields[1] == Status.FAILED:
        return BatchItemStatus.FAILED, None, ErrorObject.from_dict(fields[5] or {})
    return None


def decode_item_outcome(raw: bytes, item_serdes: Any, index: int, op_id: str,
                        execution_id: str) -> tuple[BatchItemStatus, Any, ErrorObject | None] | None:
    """``item_outcome`` of the record bytes ``raw``."""
    return item_outcome(decode_raw(raw), item_serdes, index, op_id, execution_id)
