"""Record keys: an execution id, a NUL, then one 4-byte big-endian index per path component.

    key = execution_id.encode() + b"\\x00" + b"".join(c.to_bytes(4, "big") for c in path)

Why this layout:

- every record of an execution starts with ``execution_prefix(id)``, and the NUL ends the id, so
  execution ``"a"`` never sees the records of execution ``"ab"``;
- an operation's descendants all start with its key, so they lie contiguous right after it;
- fixed-width big-endian components sort numerically, so a map's items (``path + (i,)``) are in
  index order and resume is one ordered scan.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from durablemap._errors import StoreError

__all__ = [
    "COMPONENT_SIZE",
    "FORMAT_VERSION",
    "MAX_COMPONENT",
    "MAX_KEY_SIZE",
    "decode_key",
    "execution_prefix",
    "item_index",
    "item_key",
    "item_keys",
    "op_key",
    "parse_path",
    "path_of",
    "path_str",
]

COMPONENT_SIZE = 4
MAX_COMPONENT = 2**32 - 1
MAX_KEY_SIZE = 511  # LMDB's compiled-in limit (mdb_env_get_maxkeysize)
#: The version of the key layout and record format a store holds (its meta ``b"format"`` entry);
#: raise it when either changes in a way an older durablemap cannot read. 2: runs of item records
#: (``_runs``); a store of format 1 is read as it is, and becomes 2 when opened to write.
FORMAT_VERSION = 2
_component = struct.Struct(">I").pack


def item_key(map_key: bytes, index: int) -> bytes:
    """The record key of item ``index`` of the map (or parallel) whose record key is ``map_key``."""
    return map_key + _component(index)


def item_keys(map_key: bytes, indexes: Iterable[int]) -> list[bytes]:
    """:func:`item_key` of each of ``indexes``, in order (the hot path of committing a chunk)."""
    return list(map(map_key.__add__, map(_component, indexes)))


def item_index(map_key: bytes, key: bytes) -> int:
    """The index of the item of map ``map_key`` that ``key`` is, or lies under."""
    start = len(map_key)
    return int.from_bytes(key[start:start + COMPONENT_SIZE], "big")


def execution_prefix(execution_id: str) -> bytes:
    """The prefix shared by every record key of ``execution_id``."""
    encoded = execution_id.encode()
    if b"\x00" in encoded:
        raise StoreError(f"execution id {execution_id!r} contains a NUL character; choose an id without one")
    return encoded + b"\x00"


def op_key(execution_id: str, path: tuple[int, ...]) -> bytes:
    """The record key of the operation at ``path`` inside execution ``execution_id``."""
    for component in path:
        if not 0 <= component <= MAX_COMPONENT:
            raise StoreError(
                f"operation path {path_str(path)!r} of execution {execution_id!r} has a component "
                f"outside 0..{MAX_COMPONENT}; operation ids and item indexes must fit in 32 bits"
            )
    key = execution_prefix(execution_id) + b"".join(c.to_bytes(COMPONENT_SIZE, "big") for c in path)
    if len(key) > MAX_KEY_SIZE:
        raise StoreError(
            f"operation {path_str(path)!r} of execution {execution_id[:60]!r}... needs a record key of "
            f"{len(key)} bytes, more than LMDB's {MAX_KEY_SIZE}; use a shorter execution id or less nesting"
        )
    return key


def decode_key(key: bytes) -> tuple[str, tuple[int, ...]]:
    """Split a record key into ``(execution_id, path)``; raises ``StoreError`` for anything else."""
    id_bytes, sep, rest = bytes(key).partition(b"\x00")
    if not sep:
        raise StoreError(f"record key {key[:64]!r} has no execution id terminator; the store may be "
                         "damaged (`durablemap salvage STORE NEW_DIR` copies what can be read into a new store)")
    if len(rest) % COMPONENT_SIZE:
        raise StoreError(
            f"record key {key[:64]!r} has a path of {len(rest)} bytes, not a multiple of {COMPONENT_SIZE}; "
            "the store may be damaged (`durablemap salvage STORE NEW_DIR` copies what can be read into a new store)"
        )
    try:
        execution_id = id_bytes.decode()
    except UnicodeDecodeError as exc:
        raise StoreError(
            f"record key {key[:64]!r} has an execution id that is not UTF-8; the store may be "
            "damaged (`durablemap salvage STORE NEW_DIR` copies what can be read into a new store)"
        ) from exc
    return execution_id, path_of(rest, 0)


def path_of(key: bytes, skip: int) -> tuple[int, ...]:
    """The path of record key ``key`` whose execution prefix is ``skip`` bytes long."""
    rest = key[skip:]
    return tuple(int.from_bytes(rest[i:i + COMPONENT_SIZE], "big") for i in range(0, len(rest), COMPONENT_SIZE))


def path_str(path: tuple[int, ...]) -> str:
    """The readable form of an operation path: ``(1, 3, 2)`` -> ``"1/3/2"``; the root is ``""``."""
    return "/".join(str(c) for c in path)


def parse_path(text: str) -> tuple[int, ...]:
    """The inverse of :func:`path_str`: ``"1/3/2"`` -> ``(1, 3, 2)``; ``""`` -> ``()``."""
    if text == "":
        return ()
    parts = text.split("/")
    # isdecimal + ascii rejects "+1", " 1", "1_0" and non-ASCII digits, which int() would accept.
    if not all(p.isascii() and p.isdecimal() for p in parts):
        raise StoreError(f"operation id {text!r} is not of the form '1/3/2' (integers >= 0 joined by '/')")
    path = tuple(int(p) for p in parts)
    if any(c > MAX_COMPONENT for c in path):
        raise StoreError(f"operation id {text!r} has a component larger than {MAX_COMPONENT}")
    return path
