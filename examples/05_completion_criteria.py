"""Seed example 5: custom completion criteria.

Items 0, 7 and 14 raise ``ValueError``; the map completes once 15 items succeeded
(``MIN_SUCCESSFUL_REACHED``) or every item finished (``ALL_COMPLETED``), whichever the workers reach
first, and would stop early after more than five failures. Failed items are in the result, with their
error; the map itself does not raise.

Run it: ``python examples/05_completion_criteria.py``. (The seed's snippet omitted its top-level
imports; they are added here.)
"""

# ruff: noqa: I001  (the seed's code is kept as written, import order included)

from durablemap import DurableContext, durable_execution
from durablemap.config import MapConfig, CompletionConfig


def process_item(context: DurableContext, item: int, index: int, items: list[int]) -> dict:
    """Process an item that might fail."""
    # Processing that might fail
    if item % 7 == 0:
        raise ValueError(f"Item {item} failed")
    return {"item": item, "processed": True}


@durable_execution
def handler(event: dict, context: DurableContext) -> dict:
    items = list(range(20))

    # Succeed if at least 15 items succeed, fail after 5 failures
    config = MapConfig(
        completion_config=CompletionConfig(
            min_successful=15,
            tolerated_failure_count=5,
        )
    )

    result = context.map(items, process_item, config=config)
    return result.to_dict()


if __name__ == "__main__":
    output = handler.run({})
    statuses: dict[str, int] = {}
    for entry in output["all"]:
        statuses[entry["status"]] = statuses.get(entry["status"], 0) + 1
    print("completion reason:", output["completionReason"])
    print("items by status:", statuses)
    for entry in output["all"]:
        if entry["status"] == "FAILED":
            error = entry["error"]
            print(f"  item {entry['index']} failed: {error['ErrorType']}: {error['ErrorMessage']}")
