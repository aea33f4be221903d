"""Seed example 3: a named map with ``MapConfig`` (concurrency 10, every item must succeed).

Run it: ``python examples/03_configured_map.py``. Prints 100 results, the first ones
``{'item': 0, 'squared': 0}``, ``{'item': 1, 'squared': 1}``, ...
"""

# ruff: noqa: I001  (the seed's code is kept as written, import order included)

from durablemap import (
    DurableContext,
    durable_execution,
    BatchResult,
)
from durablemap.config import (
    MapConfig,
    CompletionConfig,
)


def process_item(context: DurableContext, item: int, index: int, items: list[int]) -> dict:
    """Process a single item."""
    return {"item": item, "squared": item * item}


@durable_execution
def handler(event: dict, context: DurableContext) -> dict:
    items = list(range(100))

    # Configure map operation
    config = MapConfig(
        max_concurrency=10,  # Process 10 items at a time
        completion_config=CompletionConfig.all_successful(),  # Require all to succeed
    )

    result = context.map(items, process_item, name="process_numbers", config=config)
    return result.to_dict()


if __name__ == "__main__":
    batch = BatchResult.from_dict(handler.run({}))
    print(f"{batch.success_count} of {batch.total_count} succeeded ({batch.completion_reason.value})")
    print("first three:", batch.get_results()[:3])
    print("last:", batch.get_results()[-1])
