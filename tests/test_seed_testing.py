"""The seed's "Testing" section, every test, with only the imports changed.

One change beyond imports: the seed's first test reads ``result.result`` as a BatchResult, but its
handler returns ``result.to_dict()``, so that test wraps the value in ``BatchResult.from_dict(...)``.
"""

import pytest

from durablemap import BatchResult
from durablemap.testing import InvocationStatus
from tests.seed_handlers import handler, handler_with_config, handler_with_errors


@pytest.mark.durable_execution(
    handler=handler,
    lambda_function_name="map_operations",
)
def test_map_operations(durable_runner):
    """Test map operations."""
    with durable_runner:
        result = durable_runner.run(input={}, timeout=10)

    # Check overall status
    assert result.status is InvocationStatus.SUCCEEDED

    # Check the BatchResult
    batch_result = BatchResult.from_dict(result.result)  # the seed: `result.result`; its handler returns to_dict()
    assert batch_result.total_count == 5
    assert batch_result.success_count == 5
    assert batch_result.failure_count == 0

    # Check individual results
    assert batch_result.results[0].result == 1
    assert batch_result.results[1].result == 4
    assert batch_result.results[2].result == 9


from durablemap.lambda_service import OperationType  # noqa: E402, F401 - where the seed imports it


@pytest.mark.durable_execution(
    handler=handler,
    lambda_function_name="map_operations",
)
def test_map_individual_items(durable_runner):
    """Test individual item processing."""
    with durable_runner:
        result = durable_runner.run(input={}, timeout=10)

    # Get the map operation
    map_op = result.get_map("square")
    assert map_op is not None

    # Verify all items were processed
    assert map_op.result.total_count == 5

    # Check specific items
    assert map_op.result.results[0].result == 1
    assert map_op.result.results[2].result == 9


@pytest.mark.durable_execution(
    handler=handler_with_errors,
    lambda_function_name="map_with_errors",
)
def test_map_error_handling(durable_runner):
    """Test error handling in map operations."""
    with durable_runner:
        result = durable_runner.run(input={}, timeout=10)

    # Function should handle errors based on completion config
    assert result.status is InvocationStatus.SUCCEEDED
    batch_result = result.result

    # Check that some items succeeded
    successful = [r for r in batch_result.results if r.status == "SUCCEEDED"]
    assert len(successful) > 0

    # Check that some items failed
    failed = [r for r in batch_result.results if r.status == "FAILED"]
    assert len(failed) > 0


from durablemap.config import CompletionConfig, MapConfig  # noqa: E402, F401 - where the seed imports them


@pytest.mark.durable_execution(
    handler=handler_with_config,
    lambda_function_name="map_with_config",
)
def test_map_with_config(durable_runner):
    """Test map operations with custom configuration."""
    with durable_runner:
        result = durable_runner.run(input={}, timeout=30)

    # Verify the map operation completed
    assert result.status is InvocationStatus.SUCCEEDED

    # Get the map operation
    map_op = result.get_map("process_items")

    # Verify configuration was applied
    assert map_op is not None
    assert map_op.result.total_count > 0
