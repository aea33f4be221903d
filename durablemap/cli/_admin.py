"""The write commands' store access (``rm``, ``gc``, ``compact``): they change the store, which the
public store API (``durablemap.store``) only reads. Reading what to remove goes through that API."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from durablemap._store import Store, execution_prefix
from durablemap._store import compact as compact_store

__all__ = ["compact_store", "remove_executions"]


def remove_executions(path: str, execution_ids: list[str]) -> Iterator[tuple[str, int]]:
    """Remove each execution's records and its index entry, one write transaction each; yield
    ``(execution_id, records removed)`` as each is removed. A missing store raises StoreError."""
    with Store.open(path) as store:
        for execution_id in execution_ids:
            yield execution_id, _remove(store, execution_id)


def _remove(store: Any, execution_id: str) -> int:
    removed: int = store.delete_prefix(execution_prefix(execution_id))
    store.index_delete("executions", execution_id.encode())
    return removed
