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


def test_note_hook_example_logs_the_senders_text_without_running_it(tmp_path: Path) -> None:
    log = tmp_path / "arrivals.log"
    env = {
        "PATH": "/usr/bin:/bin",
        "DVDEXIT_STUDY_UID": "1.2.3",
        "DVDEXIT_INSTANCE_COUNT": "5",
        "DVDEXIT_COMPLETED_BY": "idle",
        "DVDEXIT_CALLING_AE": "SENDER",
        "DVDEXIT_NOTE": f"line one\n$(touch {tmp_path}/pwned); `touch {tmp_path}/pwned2`",
        "DVDEXIT_REASON": "second opinion",
    }
    done = subprocess.run(
        ["sh", str(EXAMPLES / "on-complete-note.sh"), str(log)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (line,) = log.read_text().splitlines()
    assert "study=1.2.3 instances=5 by=idle from=SENDER" in line
    assert 'reason="second opinion" recipient=""' in line
    assert f'note="line one $(touch {tmp_path}/pwned)' in line
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()
