"""A map too large for its own record replays from its item records, decoded batch by batch (so
that a replay holds no more than the first run did): batch boundaries change nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from durablemap import BatchResult, DurableContext, _stored, durable_execution
from durablemap._records import decode_record
from durablemap._store import Store, op_key


def four_kib(ctx: DurableContext, item: dict[str, Any], index: int, items: Any) -> bytes:
    if index in item["fail"]:
        raise ValueError(f"bad {index}")
    return bytes([index % 256]) * 4096


@durable_execution
def big_results(event: dict[str, Any], context: DurableContext) -> BatchResult[bytes]:
    # 100 results of 4 KiB: more than the map record holds, so a replay reads the item records.
    return context.map([event] * 100, four_kib, name="big")


@pytest.mark.parametrize("fail", [[], [0, 6, 7, 50, 99]], ids=["all-compact", "with-failures"])
def test_replay_across_decode_batches_gives_the_same_result(tmp_path: Path, fail: list[int],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    event = {"fail": fail}
    run = {"store": tmp_path / "s", "execution_id": "x", "executor": "inline", "progress": False}
    first = big_results.run(event, **run)
    with Store.open(tmp_path / "s", readonly=True) as store:
        assert decode_record(store.get(op_key("x", (1,))) or b"").get("replay_children") is True
    monkeypatch.setattr(_stored, "PAGE", 7)  # 15 batches, boundaries between failures
    replayed = big_results.run(event, **run)
    assert replayed.to_dict() == first.to_dict()
    assert [item.index for item in replayed.failed()] == fail
    assert replayed.get_results() == [bytes([i % 256]) * 4096 for i in range(100) if i not in fail]
