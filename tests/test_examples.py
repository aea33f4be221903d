"""The seed document's examples run as scripts (their imports changed, nothing else), and print what
the seed says they compute; a second run replays them from the store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

EXPECTED = {
    "01_square.py": "[1, 4, 9, 16, 25]",
    "02_validate_email.py": "ALL_COMPLETED",
    "03_configured_map.py": "{'item': 99, 'squared': 9801}",
    "04_max_concurrency.py": "https://example.com/api/99",
    "05_completion_criteria.py": "ValueError: Item 0 failed",
    "06_steps_in_items.py": "{'user_id': 'user_3', 'notification_sent': True}",
    "07_inventory.py": "['prod_1', 'prod_2', 'prod_3', 'prod_4']",
    "08_nested_and_steps.py": "'revenue': 330",
}


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs_and_replays(tmp_path: Path, script: str) -> None:
    env = {**os.environ, "DURABLEMAP_STORE": str(tmp_path / "store")}
    outputs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, str(EXAMPLES / script)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        assert EXPECTED[script] in done.stdout
        outputs.append(done.stdout)
    assert outputs[0] == outputs[1]  # the second run replays the first, in-flight items included
