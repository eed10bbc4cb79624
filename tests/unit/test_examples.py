"""The examples in examples/ run as documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_library_example_sends_to_the_in_memory_peer() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "library_send.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "8 sent, 0 failed" in done.stdout
