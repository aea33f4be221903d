"""Item results have no size limit but the disk (issue 4): a 100 MB item result is stored whole in
its item record and replayed from it, while the map record holds only a summary."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import Any

from durablemap import DurableContext, durable_execution
from durablemap._records import decode_record
from durablemap._store import Store, op_key
from durablemap.config import MapConfig

SIZE = 100 * 1024 * 1024


def blob(seed: int) -> bytes:
    return random.Random(seed).randbytes(SIZE)


def huge_item(ctx: DurableContext, item: dict[str, Any], index: int, items: Any) -> Any:
    with open(os.path.join(item["log"], "calls"), "a") as fh:
        fh.write(f"func {index}\n")
    return blob(item["seed"]) if index == 0 else index


@durable_execution
def huge_map(event: dict[str, Any], context: DurableContext) -> Any:
    result = context.map([event, event], huge_item, name="huge",
                         config=MapConfig(summary_generator=lambda r: f"{r.success_count} ok"))
    value = result.get_results()[0]
    # Return a digest, not the value: the handler's own result is recorded too.
    return type(value).__name__, len(value), hashlib.sha256(value).hexdigest(), result.get_results()[1]


def test_a_100_mb_item_result_is_stored_and_replayed(tmp_path: Path) -> None:
    event = {"log": str(tmp_path), "seed": 7}
    expected = ("bytes", SIZE, hashlib.sha256(blob(7)).hexdigest(), 1)
    run = {"store": tmp_path / "s", "execution_id": "huge", "workers": 2, "progress": False}

    assert huge_map.run(event, **run) == expected
    with Store.open(tmp_path / "s", readonly=True) as store:
        map_record = decode_record(store.get(op_key("huge", (1,))) or b"")
        item_raw = store.get(op_key("huge", (1, 0)))
    assert (map_record.payload, map_record.get("replay_children"), map_record.get("summary")) == (None, True, "2 ok")
    assert item_raw is not None and len(item_raw) > SIZE
    del item_raw

    os.unlink(tmp_path / "calls")
    assert huge_map.run(event, **run) == expected
    assert not os.path.exists(tmp_path / "calls")  # replayed from the record; the item did not run again
