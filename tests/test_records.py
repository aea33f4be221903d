"""The item-record builder of ``_records``: every record it writes reads back as what was written,
through the decoders every reader uses (``decode_record``, ``item_outcome``)."""

from __future__ import annotations

from typing import Any

import pytest

from durablemap._batch import BatchItemStatus
from durablemap._errors import ErrorObject
from durablemap._records import (
    Status,
    SubType,
    decode_raw,
    decode_record,
    fields_meta,
    is_compact,
    is_compact_raw,
    item_outcome,
    item_records,
    with_meta,
)
from durablemap.serdes import JsonSerDes, pack_default


def _outcome(raw: bytes, serdes: Any = None) -> Any:
    return item_outcome(decode_raw(raw), serdes, 7, "1", "exec")


@pytest.mark.parametrize("sub_type", [SubType.MAP_ITERATION, SubType.PARALLEL_BRANCH])
def test_a_default_named_success_is_compact_and_reads_back(sub_type: str) -> None:
    build = item_records(sub_type)
    value = {"a": [1, 2.5, "x"], "b": None}
    for raw, meta in [(build.fingerprinted(None, pack_default(value)), None),
                      (build.fingerprinted(12345, pack_default(value)), {"fp": 12345}),
                      (build.succeeded(pack_default(value), {"fp": b"\x01", "rss": 9}), {"fp": b"\x01", "rss": 9})]:
        assert is_compact_raw(raw) and is_compact(decode_raw(raw))
        record = decode_record(raw)
        assert (record.kind, record.status, record.name, record.sub_type) == ("CONTEXT", "SUCCEEDED", None, sub_type)
        assert record.meta == meta
        assert _outcome(raw) == (BatchItemStatus.SUCCEEDED, value, None)


def test_a_named_success_and_a_custom_serdes_success_are_full_records() -> None:
    build = item_records(SubType.MAP_ITERATION)
    named = build.succeeded(pack_default([1, 2]), {"fp": 3}, "first")
    assert not is_compact_raw(named)
    assert decode_record(named).name == "first" and decode_record(named).meta == {"fp": 3}
    assert _outcome(named) == (BatchItemStatus.SUCCEEDED, [1, 2], None)
    custom = build.serialized('{"k": 1}', None, None)
    assert not is_compact_raw(custom) and decode_record(custom).payload == '{"k": 1}'
    assert _outcome(custom, JsonSerDes()) == (BatchItemStatus.SUCCEEDED, {"k": 1}, None)


def test_failed_and_started_records() -> None:
    build = item_records(SubType.PARALLEL_BRANCH)
    error = ErrorObject.from_exception(ValueError("boom"))
    failed = build.failed(error.to_dict(), {"crashes": 2}, "b")
    record = decode_record(failed)
    assert (record.status, record.name, record.sub_type, record.meta) == (Status.FAILED, "b", "ParallelBranch",
                                                                         {"crashes": 2})
    status, result, got = _outcome(failed)
    assert status is BatchItemStatus.FAILED and result is None and got is not None
    assert (got.type, got.message) == ("ValueError", "boom")
    started = build.started({"crashes": 1, "exit": "exit code 9"})
    assert decode_record(started).status == Status.STARTED and _outcome(started) is None
    assert fields_meta(decode_raw(started)) == {"crashes": 1, "exit": "exit code 9"}


def test_with_meta_keeps_a_compact_record_compact_and_its_value() -> None:
    build = item_records(SubType.MAP_ITERATION)
    raw = build.fingerprinted(99, pack_default("value"))
    stamped = with_meta(raw, "chunk", {"n": 3})
    assert is_compact_raw(stamped)
    assert fields_meta(decode_raw(stamped)) == {"fp": 99, "chunk": {"n": 3}}
    assert _outcome(stamped) == (BatchItemStatus.SUCCEEDED, "value", None)
    plain = with_meta(build.fingerprinted(None, pack_default(1)), "chunk", {"n": 1})
    assert decode_record(plain).meta == {"chunk": {"n": 1}}
    failed = with_meta(build.failed({"ErrorType": "E", "ErrorMessage": "m"}, {"fp": 1}), "chunk", {"n": 2})
    assert decode_record(failed).meta == {"fp": 1, "chunk": {"n": 2}}
    assert decode_record(failed).status == Status.FAILED
