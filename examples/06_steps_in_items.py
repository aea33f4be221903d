"""Seed example 6: steps inside map items.

Each item runs two checkpointed steps; on a re-run after an interruption, an item resumes after its
last finished step. Run it: ``python examples/06_steps_in_items.py``. (The seed's snippet omitted
``DurableContext`` and ``durable_execution`` from its imports; they are added here.)
"""

# ruff: noqa: I001  (the seed's code is kept as written, import order included)

from durablemap import DurableContext, durable_execution
from durablemap import durable_step, StepContext


@durable_step
def fetch_user_data(step_context: StepContext, user_id: str) -> dict:
    """Fetch user data from external service."""
    return {"user_id": user_id, "name": "Jane Doe", "email": "jane_doe@example.com"}


@durable_step
def send_notification(step_context: StepContext, user: dict) -> dict:
    """Send notification to user."""
    return {"sent": True, "email": user["email"]}


def process_user(
    context: DurableContext,
    user_id: str,
    index: int,
    user_ids: list[str]
) -> dict:
    """Process a user by fetching data and sending notification."""
    # Use steps within the map function
    user = context.step(fetch_user_data(user_id))
    notification = context.step(send_notification(user))
    return {"user_id": user_id, "notification_sent": notification["sent"]}


@durable_execution
def handler(event: dict, context: DurableContext) -> dict:
    """Process multiple users using context operations within map functions."""
    user_ids = ["user_1", "user_2", "user_3"]
    result = context.map(user_ids, process_user)
    # Convert to dict for JSON serialization (BatchResult is not JSON serializable)
    return result.to_dict()


if __name__ == "__main__":
    output = handler.run({})
    for entry in output["all"]:
        print(entry["status"], entry["result"])
