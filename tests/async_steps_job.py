"""An async map whose items record two steps around an await (tests/test_concurrency.py).

    python async_steps_job.py STORE LOG

Each step appends ``1000 * (index + 1) + step`` to LOG when it runs. While the file LOG.hold exists,
items from 15 on wait after their first step, so the test can SIGKILL the job with steps recorded
and items in flight; without it the map runs to its end, and the job prints the sum of the results.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from durablemap import DurableContext, durable_execution
from durablemap.config import MapConfig


def _log(path: str, code: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{code}\n".encode())
    finally:
        os.close(fd)


async def item(ctx: DurableContext, job: dict[str, Any], index: int, inputs: Any) -> int:
    def first(_: Any) -> int:
        _log(job["log"], 1000 * (index + 1) + 1)
        return 3 * index

    def second(_: Any) -> int:
        _log(job["log"], 1000 * (index + 1) + 2)
        return 1

    a = ctx.step(first, name="first")
    await asyncio.sleep(0.02)
    while index >= 15 and os.path.exists(job["log"] + ".hold"):
        await asyncio.sleep(0.05)
    b = ctx.step(second, name="second")
    return a + b


@durable_execution
def handler(event: dict[str, Any], context: DurableContext) -> int:
    result = context.map([event] * 40, item, name="async-items", config=MapConfig(max_concurrency=30))
    return sum(result.get_results())


if __name__ == "__main__":
    store, log = sys.argv[1:3]
    print(handler.run({"log": log}, store=store, execution_id="async-steps", workers=2,
                      progress=False))
