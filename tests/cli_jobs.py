"""Job scripts the CLI tests run (``durablemap run tests/cli_jobs.py:batch``).

``batch`` maps ``work`` over ``range(event["n"])``. Each item takes a few ms. Items whose index is
``3 mod 10`` fail the first time they run, and succeed after that: each leaves a marker file in
``event["dir"]`` when it fails. While ``event["dir"]/hold`` exists, items from ``event["hold_from"]``
on wait for it to go away (so a test can interrupt the job at a known point, without timing).
The handler raises when any item failed, so its execution FAILED until every item succeeds.
"""

from __future__ import annotations

import os
import time
from typing import Any

from durablemap import BatchResult, DurableContext, durable_execution
from durablemap.config import MapConfig


def work(context: DurableContext, item: int, index: int, inputs: Any) -> int:
    """One item: fail once for indexes 3 mod 10, wait while the hold file exists, else square."""
    directory = os.environ["CLI_JOB_DIR"]
    hold = os.path.join(directory, "hold")
    deadline = time.monotonic() + 60
    while index >= int(os.environ.get("CLI_JOB_HOLD_FROM", "0")) and os.path.exists(hold):
        if time.monotonic() > deadline:
            raise TimeoutError("the test never removed the hold file")
        time.sleep(0.01)
    time.sleep(0.003)
    if index % 10 == 3:
        marker = os.path.join(directory, f"failed-{index}")
        if not os.path.exists(marker):
            open(marker, "w").close()
            raise ValueError(f"item {item} fails on its first run")
    context.logger.info("item %d done", index)
    return item * item


@durable_execution
def batch(event: dict[str, Any], context: DurableContext) -> BatchResult[int]:
    """Map ``work`` over ``event["n"]`` items; raise if any failed."""
    # At most 40 in flight: a Ctrl-C while items wait on the hold file leaves items never started
    # (workers run waiting items several at once, up to max_concurrency).
    result = context.map(list(range(event["n"])), work, name="squares",
                         config=MapConfig(item_namer=lambda item, index: f"sq-{index}", max_concurrency=40))
    result.throw_if_error()
    return result


@durable_execution
def nested(event: dict[str, Any], context: DurableContext) -> dict[str, Any]:
    """A map whose items each run a step (so ``show`` has a tree to draw)."""
    def item(ctx: DurableContext, x: int, index: int, inputs: Any) -> int:
        return ctx.step(lambda _: x + 1, name="plus-one")
    result = context.map(list(range(event.get("n", 5))), item, name="outer")
    return {"sum": sum(result.get_results())}
