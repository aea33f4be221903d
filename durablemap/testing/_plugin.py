"""The pytest plugin (entry point ``pytest11: durablemap``): the ``durable_execution`` marker and
the ``durable_runner`` fixture.

    @pytest.mark.durable_execution(handler=handler, lambda_function_name="my_function")
    def test_it(durable_runner):
        with durable_runner:
            result = durable_runner.run(input={}, timeout=10)

The marker may also pass ``workers=``, ``executor=``, ``real_time=`` and ``store=`` to the runner.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from durablemap.testing._runner import DurableTestRunner

__all__ = ["durable_runner", "pytest_configure"]

_RUNNER_OPTIONS = ("store", "workers", "executor", "real_time")


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker, so ``--strict-markers`` accepts it."""
    config.addinivalue_line(
        "markers",
        "durable_execution(handler, lambda_function_name=None, workers=None, executor=None, "
        "real_time=False): the durable handler the durable_runner fixture runs",
    )


@pytest.fixture
def durable_runner(request: pytest.FixtureRequest) -> Iterator[DurableTestRunner]:
    """A ``DurableTestRunner`` for the handler named by the test's ``durable_execution`` marker;
    closed (worker processes stopped, temporary stores removed) after the test."""
    marker = request.node.get_closest_marker("durable_execution")
    if marker is None:
        raise pytest.UsageError(
            f"{request.node.nodeid} uses the durable_runner fixture but has no "
            "@pytest.mark.durable_execution(handler=...) marker naming the handler to run.")
    handler: Any = marker.kwargs.get("handler", marker.args[0] if marker.args else None)
    if handler is None:
        raise pytest.UsageError(f"{request.node.nodeid}: @pytest.mark.durable_execution needs handler=...")
    options = {k: marker.kwargs[k] for k in _RUNNER_OPTIONS if k in marker.kwargs}
    runner = DurableTestRunner(handler, **options)
    try:
        yield runner
    finally:
        runner.close()
