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


@pytest.mark.parametrize(("durability", "level"), [(True, "full"), (False, "normal")])
def test_receiver_journal_is_as_durable_as_its_store(
    tmp_path: Path, durability: bool, level: str
) -> None:
    from dvdexit_cli.receive import ReceiveSettings, StorageServer

    settings = ReceiveSettings(
        host="127.0.0.1", port=0, ae_title="DVDEXIT", store=tmp_path / "store", fsync=durability
    )
    with Journal(tmp_path / "j.sqlite") as journal:
        StorageServer(settings, journal=journal)
        # --durability full fsyncs each instance before answering success: a power cut
        # must not then lose its journal row (WAL with synchronous=NORMAL can).
        assert journal.synchronous == level


def test_a_resent_instance_whose_file_was_never_journaled_is_journaled_as_stored(
    tmp_path: Path,
) -> None:
    """The receiver stored a file, then could not journal it (killed, journal locked).

    The sender was never told "stored" and sends it again; the store finds an identical
    file (a duplicate), but for the journal it is new: stored, and its study re-opens.
    """
    (path,) = write_study(tmp_path / "in", n_instances=1, seed="orphan")
    (inst,) = scan([path]).instances
    row = {
        "calling_ae": "HOSP_A",
        "peer_address": "127.0.0.1:5000",
        "sop_class_uid": inst.sop_class_uid,
        "sop_instance_uid": inst.sop_instance_uid,
        "study_uid": inst.study_uid,
        "series_uid": inst.series_uid,
        "transfer_syntax": inst.transfer_syntax,
        "size": inst.size,
        "digest": inst.digest,
        "path": str(path),
        "status": 0,
        "reason": None,
        "study_folder": str(tmp_path / "in"),
        "receiver": "DVDEXIT@127.0.0.1:11112 /store",
    }
    with Journal(tmp_path / "j.sqlite") as journal:
        assert journal.record_received(**row, outcome="duplicate") == "stored"
        assert journal.record_received(**row, outcome="duplicate") == "duplicate"
        study = journal.study(inst.study_uid)
        assert study is not None and study.state == "receiving"
        assert study.receiver == "DVDEXIT@127.0.0.1:11112 /store"


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
