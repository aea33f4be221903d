"""Execution lock records: who holds a lock, and whether that holder is still alive.

A lock record names a process by pid, its start time (psutil ``create_time``) and the hostname. The
pid alone is not enough: pids are reused, so a lock whose pid now belongs to a process that started
at another time was left by a dead process and may be taken over. The record is JSON, never pickle,
so reading a lock cannot run code.
"""

from __future__ import annotations

import functools
import json
import os
import socket
from typing import TypedDict, cast

import psutil

__all__ = ["LockHolder", "current_process", "decode_lock", "encode_lock", "is_alive", "is_same_process"]

# Two readings of one process's create_time agree to well under this; a reused pid that started
# within it is not a practical concern.
_CREATE_TIME_TOLERANCE = 0.01


class LockHolder(TypedDict):
    """The process that holds an execution lock."""

    pid: int
    create_time: float
    hostname: str


@functools.cache
def _process_identity(pid: int) -> LockHolder:
    # Cached by pid, so a forked child computes its own identity instead of reusing its parent's.
    return LockHolder(pid=pid, create_time=psutil.Process(pid).create_time(), hostname=socket.gethostname())


def current_process() -> LockHolder:
    """The identity of the calling process."""
    return _process_identity(os.getpid())


def encode_lock(holder: LockHolder) -> bytes:
    """The stored form of a lock record."""
    return json.dumps(dict(holder), sort_keys=True).encode()


def decode_lock(raw: bytes) -> LockHolder | None:
    """The holder named by a stored lock record, or None when the record is unreadable.

    An unreadable record cannot name a live holder, so callers treat it like a stale lock.
    """
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    pid, create_time, hostname = data.get("pid"), data.get("create_time"), data.get("hostname")
    if not (isinstance(pid, int) and isinstance(create_time, int | float) and isinstance(hostname, str)):
        return None
    return LockHolder(pid=pid, create_time=float(create_time), hostname=hostname)


def is_same_process(a: LockHolder, b: LockHolder) -> bool:
    """Whether two identities name the same process (same host, pid and start time)."""
    return (
        a["hostname"] == b["hostname"]
        and a["pid"] == b["pid"]
        and abs(a["create_time"] - b["create_time"]) < _CREATE_TIME_TOLERANCE
    )


def is_alive(holder: LockHolder) -> bool:
    """Whether the holder still runs. A holder on another host cannot be checked: it counts as alive."""
    if holder["hostname"] != socket.gethostname():
        return True
    try:
        process = psutil.Process(holder["pid"])
        if process.status() == psutil.STATUS_ZOMBIE:
            return False  # killed but not yet reaped by its parent: it will never release the lock
        started = cast(float, process.create_time())
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # it exists and we may not inspect it: do not steal its lock
    return abs(started - holder["create_time"]) < _CREATE_TIME_TOLERANCE
