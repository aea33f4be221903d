"""Seed example 4: limit how many items run at once with ``MapConfig(max_concurrency=5)``.

Run it: ``python examples/04_max_concurrency.py``. Prints 100 fetched URLs; at most five items are in
flight at any time. (The seed's snippet omitted its top-level imports; they are added here.)
"""

from durablemap import DurableContext, durable_execution
from durablemap.config import MapConfig


def fetch_data(context: DurableContext, url: str, index: int, urls: list[str]) -> dict:
    """Fetch data from a URL."""
    # Network call that might be rate-limited
    return {"url": url, "data": "..."}


@durable_execution
def handler(event: dict, context: DurableContext) -> dict:
    urls = [f"https://example.com/api/{i}" for i in range(100)]

    # Process only 5 URLs at a time
    config = MapConfig(max_concurrency=5)
    result = context.map(urls, fetch_data, config=config)
    return result.to_dict()


if __name__ == "__main__":
    output = handler.run({})
    results = [entry["result"] for entry in output["all"]]
    print(f"{len(results)} URLs fetched ({output['completionReason']})")
    print("first:", results[0])
    print("last:", results[-1])
