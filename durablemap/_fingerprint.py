"""Input fingerprints: a short digest of each item's input, recorded with the item's result, so a
resume can tell that an input changed since its result was recorded."""

from __future__ import annotations

import hashlib
from typing import Any

from durablemap.serdes import DEFAULT_SERDES, SerDesContext

__all__ = ["fingerprint"]

_CONTEXT = SerDesContext()


def fingerprint(value: Any) -> bytes | int | None:
    """A small value that changes when ``value`` changes: a machine-sized int stands for itself,
    anything else the default serdes can encode gives 8 bytes of digest of that encoding.

    Anything else (a set, a custom object) gives None: no fingerprint, so no drift check for that
    item. Its pickle would not do: a set's order, for one, changes from one process to the next, and
    an unchanged input would look changed."""
    if type(value) is int and -(2**63) <= value < 2**63:
        return value
    try:
        data = DEFAULT_SERDES.serialize(value, _CONTEXT)
    except Exception:
        return None
    if isinstance(data, str):
        data = data.encode()
    return hashlib.blake2b(data, digest_size=8).digest()
