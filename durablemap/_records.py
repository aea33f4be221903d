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

Records never hold pickles: decoding one runs no user code.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, NamedTuple

import msgpack

from durablemap._errors import StoreError

__all__ = ["Kind", "Record", "Status", "decode_record", "encode_record"]


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
_pack = msgpack.Packer(use_bin_type=True).pack


def encode_record(record: Record) -> bytes:
    """The msgpack bytes of a record."""
    data: bytes = _pack(list(record))
    return data


def decode_record(data: bytes, where: str = "") -> Record:
    """Decode record bytes; anything that is not a record raises :class:`StoreError`."""
    try:
        fields = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if not isinstance(fields, list) or len(fields) != 7:
            raise ValueError("not a 7-field array")
        return Record(*fields)
    except Exception as exc:
        raise StoreError(
            f"The record of {where or 'an operation'} cannot be decoded ({exc}). The store may be "
            "corrupt or written by another program; remove that execution with `durablemap rm ID` "
            "to start it afresh."
        ) from None
