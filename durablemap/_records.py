"""Operation records: what one operation stored in the journal looks like, as msgpack.

A record is a msgpack array ``[kind, status, name, sub_type, payload, error, meta]``:

- ``kind``: one of :class:`Kind` (``"EXECUTION"``, ``"CONTEXT"``, ``"STEP"``, ``"WAIT"``).
- ``status``: one of :class:`Status`.
- ``name``: the operation's name, or None.
- ``sub_type``: ``"Map"``, ``"MapIteration"``, ``"Parallel"``, ``"ParallelBranch"``, ``"Step"``,
  ``"Wait"``, ``"RunInChildContext"`` or ``"Execution"``.
- ``payload``: what the operation's serdes wrote (``bytes`` or ``str``), byte for byte, or None.
- ``error``: an ``ErrorObject.to_dict()``, or None.
- ``meta``: a small dict of operation-specific facts (attempt, deadline, counts, ...), or None.

A map item whose result was written by the default serdes uses an eighth field instead of
``payload``: ``[kind, status, name, sub_type, None, error, meta, value]``, where ``value`` is the
default serdes' msgpack encoding spliced in as it is. One unpack then decodes record and value
together, which is what makes replaying a million items fast; ``decode_record`` gives such a
record's ``payload`` as the same msgpack bytes, so readers need not care.

Records never hold pickles: decoding one runs no user code.
"""

from __future__ import annotations

import functools
from enum import StrEnum
from typing import Any, NamedTuple

import msgpack

from durablemap._errors import StoreError
from durablemap.serdes import DEFAULT_SERDES, SerDesContext, unpack_default

__all__ = [
    "Kind", "Record", "Status", "decode_raw", "decode_record", "encode_inline_item", "encode_record", "record_head",
]


class Kind(StrEnum):
    """The type of a recorded operation."""

    EXECUTION = "EXECUTION"
    CONTEXT = "CONTEXT"
    STEP = "STEP"
    WAIT = "WAIT"


class Status(StrEnum):
    """The state of a recorded operation."""

    STARTED = "STARTED"
    PENDING = "PENDING"  # a step waiting for its next retry attempt
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


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


_ARRAY8 = b"\x98"
_NIL = b"\xc0"


def encode_inline_item(kind: str, status: str, name: str | None, sub_type: str,
                       error: dict[str, Any] | None, meta: dict[str, Any] | None, value: bytes) -> bytes:
    """A record whose value is default-serdes msgpack ``value``, spliced in as the eighth field."""
    if name is None and error is None:
        record: bytes = record_head(kind, status, sub_type) + _pack(meta) + value
        return record
    return b"".join((_ARRAY8, _pack(kind), _pack(status), _pack(name), _pack(sub_type), _NIL,
                     _pack(error), _pack(meta), value))


@functools.cache
def record_head(kind: str, status: str, sub_type: str) -> bytes:
    """The fields before ``meta`` of an inline record of an unnamed item without error: the same
    bytes for every such item."""
    return b"".join((_ARRAY8, _pack(kind), _pack(status), _NIL, _pack(sub_type), _NIL, _NIL))


def decode_raw(data: bytes) -> list[Any]:
    """The record's fields as a list, an inline value decoded in the same pass (the fast path:
    callers check ``len(fields) == 8``). Raises what msgpack raises on garbage."""
    fields: list[Any] = unpack_default(data)
    return fields


def decode_record(data: bytes, where: str = "") -> Record:
    """Decode record bytes; anything that is not a record raises :class:`StoreError`."""
    try:
        fields = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if not isinstance(fields, list) or len(fields) not in (7, 8):
            raise ValueError("not a 7-field array")
        if len(fields) == 8:
            fields = decode_raw(data)
            fields[4] = DEFAULT_SERDES.serialize(fields.pop(), _CONTEXT)
        return Record(*fields)
    except Exception as exc:
        raise StoreError(
            f"The record of {where or 'an operation'} cannot be decoded ({exc}). The store may be "
            "corrupt or written by another program; remove that execution with `durablemap rm ID` "
            "to start it afresh."
        ) from None
