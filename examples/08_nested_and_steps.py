"""Operations inside map items: steps with retries, a durable wait, a parallel fan-out and a nested map.

Each region is an item of the outer map (it runs in a worker process). Inside it, a step fetches the
region's stores (retried on a flaky failure), a wait pauses durably, a parallel runs three checks,
and a nested map prices every store (its items run inside the same worker). Everything is recorded
under the region's item, so a re-run after Ctrl-C resumes each region where it stopped.

Run it: ``python examples/08_nested_and_steps.py`` (twice: the second run replays at once).
"""

from __future__ import annotations

from typing import Any

from durablemap import DurableContext, StepContext, durable_execution, durable_step
from durablemap.config import MapConfig, StepConfig
from durablemap.retries import RetryPresets


@durable_step
def fetch_stores(step_context: StepContext, region: str) -> list[str]:
    """Pretend to call a flaky service: the first attempt fails, the retry succeeds."""
    if step_context.attempt == 1:
        raise ConnectionError(f"{region}: service busy")
    step_context.logger.info("fetched stores of %s on attempt %d", region, step_context.attempt)
    return [f"{region}-store-{n}" for n in range(3)]


def price_store(context: DurableContext, store: str, index: int, stores: list[str]) -> dict[str, Any]:
    """A nested map item: one step per store."""
    total = context.step(lambda _: 100 + 10 * index, name="total")
    return {"store": store, "total": total}


def process_region(context: DurableContext, region: str, index: int, regions: list[str]) -> dict[str, Any]:
    """One outer item: step, wait, parallel, nested map."""
    stores = context.step(fetch_stores(region), config=StepConfig(retry_strategy=RetryPresets.critical()))
    context.wait(1, name="cool-down")
    checks = context.parallel([
        lambda ctx: ctx.step(lambda _: "stock ok", name="stock"),
        lambda ctx: ctx.step(lambda _: "prices ok", name="prices"),
        lambda ctx: ctx.step(lambda _: "staff ok", name="staff"),
    ], name="checks")
    priced = context.map(stores, price_store, name="price", config=MapConfig(max_concurrency=2))
    context.logger.info("region %s done", region)
    return {"region": region, "checks": checks.get_results(),
            "revenue": sum(row["total"] for row in priced.get_results())}


@durable_execution
def handler(event: dict[str, Any], context: DurableContext) -> list[Any]:
    """Process every region; each region is durable on its own."""
    result = context.map(event["regions"], process_region, name="regions")
    return result.get_results()


if __name__ == "__main__":
    for row in handler.run({"regions": ["north", "south", "east"]}):
        print(row)
