"""A journal that existed and is now empty, cut short or garbage is an error, never a new one.

Taking a damaged journal for a new one forgets, in silence, every item a cron replay
should still send. `status` and `send --retry-failed` must exit 8 and say how to get out.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest
from peers import run_dvdexit

from dvdexit_cli.dicom.scan import scan
from dvdexit_cli.errors import JournalDamagedError
from dvdexit_cli.journal import Journal
from dvdexit_cli.samples import write_study


def _journal_with_failed_items(home: Path, tmp_path: Path) -> Path:
    study = write_study(tmp_path / "study", n_instances=40, seed="damaged-journal")
    found = scan(study)
    path = home / "journal.sqlite"
    with Journal(path) as journal:
        transfer, ids = journal.create_transfer(
            peer="pacs",
            peer_address="10.0.0.5:104",
            inputs=[tmp_path / "study"],
            instances=found.instances,
            rejected=[],
        )
        for item in ids:
            journal.record_outcome(
                item, state="failed", status=0xA700, reason="out of resources", retryable=True
            )
        journal.finish_transfer(transfer, outcome="failed", error=None)
    assert not Path(f"{path}-wal").exists()
    return path


def _damage(path: Path, kind: str) -> None:
    data = path.read_bytes()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "cut_in_half":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "cut_by_one_byte":
        path.write_bytes(data[:-1])
    else:
        path.write_bytes(os.urandom(len(data)))


@pytest.mark.parametrize("kind", ["empty", "cut_in_half", "cut_by_one_byte", "garbage"])
def test_damaged_journal_stops_status_and_replay_with_exit_8_and_the_way_out(
    tmp_path: Path, dvdexit_home: Path, kind: str
) -> None:
    path = _journal_with_failed_items(dvdexit_home, tmp_path)
    _damage(path, kind)
    damaged = path.read_bytes()

    for command in (["status"], ["send", "--retry-failed"]):
        result = run_dvdexit(*command, home=dvdexit_home)
        assert result.returncode == 8, (command, result.stdout, result.stderr)
        assert f"journal {path} is damaged" in result.stderr
        assert f"mv {path} {path}.damaged" in result.stderr
        assert "nothing to resend" not in result.stdout + result.stderr
    assert path.read_bytes() == damaged, "the damaged journal was written to"


def test_journal_that_never_existed_is_created_once_by_racing_processes(tmp_path: Path) -> None:
    path = tmp_path / "data" / "journal.sqlite"
    with multiprocessing.get_context("spawn").Pool(6) as pool:
        errors = pool.map(_open_journal, [path] * 12)
    assert errors == [None] * 12
    assert sorted(
        p.name for p in path.parent.iterdir() if not p.name.endswith(("-wal", "-shm"))
    ) == ["journal.sqlite"]
    with Journal(path) as journal:
        assert journal.transfers() == []


def _open_journal(path: Path) -> str | None:
    try:
        Journal(path).close()
    except JournalDamagedError as exc:
        return str(exc)
    return None
