"""Seed example 2: a map function that uses its index and the whole collection.

Run it: ``python examples/02_validate_email.py``. Two addresses are valid, ``"invalid"`` is not.
"""

from durablemap import DurableContext, durable_execution


def validate_email(
    context: DurableContext,
    item: str,
    index: int,
    items: list[str]
) -> dict:
    """Validate an email address."""
    is_valid = "@" in item and "." in item
    return {
        "email": item,
        "valid": is_valid,
        "position": index,
        "total": len(items)
    }


@durable_execution
def handler(event: dict, context: DurableContext) -> dict:
    emails = ["jane_doe@example.com", "john_doe@example.org", "invalid"]
    result = context.map(emails, validate_email)
    return result.to_dict()


if __name__ == "__main__":
    output = handler.run({})
    for entry in output["all"]:
        print(entry["status"], entry["result"])
    print("completion reason:", output["completionReason"])
