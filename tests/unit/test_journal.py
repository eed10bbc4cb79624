"""The journal: states survive, migrations apply once, a newer schema is refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from dvdexit_cli.dicom.scan import Rejected, scan
from dvdexit_cli.errors import JournalError
from dvdexit_cli.journal import Journal
from dvdexit_cli.journal.store import SCHEMA_VERSION
from dvdexit_cli.samples import write_study


def test_items_are_pending_before_sending_and_keep_their_answer(tmp_path: Path) -> None:
    files = write_study(tmp_path / "in", n_instances=3, seed="journal")
    found = scan(files)
    with Journal(tmp_path / "j.sqlite") as journal:
        transfer_id, ids = journal.create_transfer(
            peer="pacs",
            peer_address="127.0.0.1:104",
            inputs=[tmp_path / "in"],
            instances=found.instances,
            rejected=[Rejected(tmp_path / "x.txt", "not DICOM", "skipped")],
        )
        assert [i.state for i in journal.items(transfer_id)] == ["pending"] * 3 + ["skipped"]
        journal.mark_sending(ids[0])
        journal.record_outcome(ids[0], state="sent", status=0, reason=None)
        journal.mark_sending(ids[1])
        journal.record_outcome(ids[1], state="failed", status=0xA700, reason="full", retryable=True)
        journal.mark_sending(ids[2])

    with Journal(tmp_path / "j.sqlite") as reopened:
        items = {i.id: i for i in reopened.items(transfer_id)}
        assert items[ids[0]].state == "sent"
        assert items[ids[1]].state == "failed"
        assert items[ids[1]].retryable
        assert items[ids[1]].status == 0xA700
        assert items[ids[2]].state == "sending"
        assert items[ids[2]].attempts == 1
        (summary,) = reopened.transfers()
        assert summary.counts == {"sent": 1, "failed": 1, "sending": 1, "skipped": 1}
        assert summary.outcome == "running"
        assert reopened.sent_digests([found.instances[0].sop_instance_uid]) == {
            found.instances[0].sop_instance_uid: found.instances[0].digest
        }


def test_schema_is_migrated_once_and_recorded(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    Journal(path).close()
    Journal(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_journal_from_a_newer_dvdexit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(JournalError, match="newer"):
        Journal(path)


def test_a_file_that_is_not_a_database_is_a_journal_error(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(JournalError):
        Journal(path)


def test_a_journal_of_the_previous_version_keeps_every_item_when_abandoned_is_added(
    tmp_path: Path,
) -> None:
    from dvdexit_cli.journal.store import _MIGRATIONS

    path = tmp_path / "j.sqlite"
    with sqlite3.connect(path) as db:  # as dvdexit with schema 6 left it
        for number, script in enumerate(_MIGRATIONS[:6]):
            db.executescript(script)
            db.execute(f"PRAGMA user_version = {number + 1}")
        db.execute(
            "INSERT INTO transfers (id, peer, peer_address, created_at, outcome, inputs)"
            " VALUES (1, 'pacs', 'h:104', 't', 'partial', '[]')"
        )
        db.execute(
            "INSERT INTO items (id, transfer_id, path, sop_instance_uid, digest, state,"
            " attempts, status, retryable, reason, updated_at, claim, lease_expires)"
            " VALUES (7, 1, '/a.dcm', '1.2.3', 'd', 'failed', 2, 42752, 1, 'full', 't', 'c', 1.5)"
        )

    with Journal(path) as journal:
        (item,) = journal.items(1)
        assert (item.id, item.state, item.attempts, item.status, item.reason) == (
            7,
            "failed",
            2,
            0xA700,
            "full",
        )
        assert item.abandoned_at is None
        done = journal.abandon(by="pacsadmin", reason="gone", peer="pacs")
        assert [i.id for i in done.items] == [7] and done.held == 0
        (item,) = journal.items(1)
        assert (item.state, item.abandoned_by, item.abandon_reason) == (
            "abandoned",
            "pacsadmin",
            "gone",
        )
        assert journal.transfers()[0].outcome == "abandoned"
