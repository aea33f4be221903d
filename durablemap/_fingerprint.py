"""Input fingerprints: a short digest of each item's input, recorded with the item's result, so a
resume can tell that an input changed since its result was recorded."""

from __future__ import annotations

import hashlib
import pickle
from typing import Any

from durablemap.serdes import DEFAULT_SERDES, SerDesContext

__all__ = ["fingerprint"]

_CONTEXT = SerDesContext()


def fingerprint(value: Any) -> bytes | int:
    """A small value that changes when ``value`` changes: a machine-sized int stands for itself,
    anything else gives 8 bytes of digest (of its msgpack encoding, else pickle, else repr)."""
    if type(value) is int and -(2**63) <= value < 2**63:
        return value
    try:
        data = DEFAULT_SERDES.serialize(value, _CONTEXT)
    except Exception:
        try:
            data = pickle.dumps(value, protocol=5)
        except Exception:
            data = repr(value).encode()
    if isinstance(data, str):
        data = data.encode()
    return hashlib.blake2b(data, digest_size=8).digest()
