"""Progress bars on stderr (placeholder until issue 9 builds them on rich)."""

from __future__ import annotations

__all__ = ["ProgressObserver"]


class ProgressObserver:
    """Draws nothing yet."""

    def close(self) -> None:
        """Nothing to close."""
