"""Seed example 1: square a list of numbers with ``context.map``.

Run it: ``python examples/01_square.py``. It prints ``[1, 4, 9, 16, 25]``. The execution is
checkpointed in ``./.durablemap`` (or ``$DURABLEMAP_STORE``); running the script again replays every
item from the store instead of squaring again.
"""

# ruff: noqa: I001  (the seed's code is kept as written, import order included)

from durablemap import (
    DurableContext,
    durable_execution,
    BatchResult,
)


def square(context: DurableContext, item: int, index: int, items: list[int]) -> int:
    """Square a number."""
    return item * item


@durable_execution
def handler(event: dict, context: DurableContext) -> dict:
    """Process a list of items using map operations."""
    items = [1, 2, 3, 4, 5]
    result = context.map(items, square)
    # Convert to dict for JSON serialization (BatchResult is not JSON serializable)
    return result.to_dict()


if __name__ == "__main__":
    output = handler.run({})
    batch = BatchResult.from_dict(output)
    print(batch.get_results())
