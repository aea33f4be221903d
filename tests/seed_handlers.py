"""Handlers the seed's "Testing" section imports (tests/test_seed_testing.py)."""

from __future__ import annotations

from typing import Any

from durablemap import BatchResult, DurableContext, durable_execution
from durablemap.config import CompletionConfig, MapConfig


def square(context: DurableContext, item: int, index: int, items: list[int]) -> int:
    """Square a number."""
    return item * item


@durable_execution
def handler(event: dict[str, Any], context: DurableContext) -> dict[str, Any]:
    """The seed's getting-started example: squares five numbers, returns the BatchResult as a dict."""
    items = [1, 2, 3, 4, 5]
    result = context.map(items, square)
    return result.to_dict()


def check_even(context: DurableContext, item: int, index: int, items: list[int]) -> int:
    """Fail on odd numbers."""
    if item % 2:
        raise ValueError(f"odd number: {item}")
    return item


@durable_execution
def handler_with_errors(event: dict[str, Any], context: DurableContext) -> BatchResult[int]:
    """Some items fail; every item runs (no completion criterion), and the handler succeeds.
    Returns the BatchResult itself, which the seed's test reads as ``result.result.results``."""
    return context.map([1, 2, 3, 4, 5, 6], check_even, name="check_even")


def process_item(context: DurableContext, item: dict[str, Any], index: int, items: list[Any]) -> int:
    """Double an item's value."""
    return int(item["value"]) * 2


@durable_execution
def handler_with_config(event: dict[str, Any], context: DurableContext) -> dict[str, Any]:
    """A map named "process_items" with a concurrency limit and a failure tolerance."""
    items = [{"value": v} for v in range(10)]
    config = MapConfig(max_concurrency=2,
                       completion_config=CompletionConfig(tolerated_failure_percentage=10))
    return context.map(items, process_item, name="process_items", config=config).to_dict()
