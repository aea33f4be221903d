"""Input fingerprints: a short digest of each item's input, recorded with the item's result, so a
resume can tell that an input changed since its result was recorded."""

from __future__ import annotations

import hashlib
import pickle
from typing import Any

from durablemap.serdes import DEFAULT_SERDES, SerDesContext

__all__ = ["fingerprint"]

_CONTEXT = SerDesContext()


def fingerprint(value: Any) -> bytes:
    """8 bytes that change when ``value`` changes (msgpack encoding, else pickle, else repr)."""
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
