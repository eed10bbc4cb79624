"""The audit trail file, the outcome mapping, and reading a transfer note back from its SR."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom
import pytest

from dvdexit_cli.audit import AuditTrail, Participant, read_audit, send_outcome
from dvdexit_cli.dicom.reports import basic_text_sr, read_transfer_note, transfer_note_sr
from dvdexit_cli.samples import write_study

SOURCE = Participant("source", ae_title="US", address="here", requestor=True)
DESTINATION = Participant("destination", name="them", ae_title="THEM", address="h:104")


def _write_many(path: str, worker: int, count: int) -> None:
    trail = AuditTrail(Path(path))
    for n in range(count):
        trail.record(
            kind="send",
            action="R",
            outcome=0,
            study_uid=f"1.2.{worker}.{n}",
            source=SOURCE,
            destination=DESTINATION,
            instances=1,
            sop_classes={"1.2.840.10008.5.1.4.1.1.2": 1},
            counts={"sent": 1},
            # Long text makes each line several kilobytes: interleaving would show.
            note="x" * 1000,
        )


def test_concurrent_writers_append_whole_lines_that_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_many, args=(str(path), w, 50)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(60)
        assert p.exitcode == 0

    lines = path.read_text().splitlines()
    assert len(lines) == 200
    records = [json.loads(line) for line in lines]  # each line a whole JSON object
    assert {r["study"]["uid"] for r in records} == {
        f"1.2.{w}.{n}" for w in range(4) for n in range(50)
    }
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_an_unwritable_audit_file_is_counted_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    trail = AuditTrail(blocker / "audit.jsonl")
    assert trail.write({"a": 1}) is False
    assert trail.failures == 1


def test_read_audit_filters_by_time_and_skips_damaged_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    old = (datetime.now(UTC) - timedelta(days=3)).isoformat()
    path.write_text(
        json.dumps({"time": old, "n": 1}) + "\n{not json\n" + json.dumps({"time": "x"}) + "\n"
    )
    AuditTrail(path).write({"time": datetime.now(UTC).isoformat(), "n": 2})
    assert [r.get("n") for r in read_audit(path)] == [1, None, 2]
    since = datetime.now(UTC) - timedelta(days=1)
    assert [r["n"] for r in read_audit(path, since=since)] == [2]
    assert list(read_audit(tmp_path / "absent.jsonl")) == []


@pytest.mark.parametrize(
    ("counts", "retryable", "unreachable", "expected"),
    [
        ({"sent": 5}, True, False, 0),
        ({"sent": 4, "failed": 1}, True, False, 4),  # a replay may finish it
        ({"sent": 4, "failed": 1}, False, False, 8),  # failed for good
        ({"sent": 4, "pending": 1}, True, False, 4),
        ({"sent": 0, "failed": 5}, True, False, 8),
        ({"sent": 0, "failed": 5}, True, True, 12),  # peer unreachable
    ],
)
def test_send_outcome_maps_to_the_dicom_outcome_indicator(
    counts: dict[str, int], retryable: bool, unreachable: bool, expected: int
) -> None:
    assert send_outcome(counts, retryable_only=retryable, unreachable=unreachable) == expected


@pytest.fixture
def reference(tmp_path: Path) -> pydicom.Dataset:
    path = write_study(tmp_path / "study", n_instances=1, seed="audit-note")[0]
    return pydicom.dcmread(path, stop_before_pixels=True)


def test_a_transfer_note_is_read_back_from_its_sr_and_other_srs_are_not_notes(
    tmp_path: Path, reference: pydicom.Dataset
) -> None:
    sr = transfer_note_sr(
        reference=reference, note="line one\nline two\x07bell", reason="why", recipient="Dr. Ä"
    )
    sr.save_as(tmp_path / "note.dcm", enforce_file_format=True)
    note = read_transfer_note(pydicom.dcmread(tmp_path / "note.dcm"))
    assert note is not None
    assert (note.note, note.reason, note.recipient) == ("line one\nline two bell", "why", "Dr. Ä")

    only_reason = read_transfer_note(transfer_note_sr(reference=reference, reason="r"))
    assert only_reason is not None and (only_reason.note, only_reason.recipient) == (None, None)
    assert read_transfer_note(basic_text_sr(["a report"], reference=reference)) is None
    forged = transfer_note_sr(reference=reference, note="n")
    forged.Manufacturer = "someone else"
    assert read_transfer_note(forged) is None
    long = read_transfer_note(transfer_note_sr(reference=reference, note="y" * 5000))
    assert long is not None and long.note == "y" * 1024


def test_a_replay_names_the_recipient_the_journal_kept_even_from_an_older_journal(
    tmp_path: Path,
) -> None:
    """A journal at schema 5 (no recipient column) is migrated; its transfers keep working."""
    from dvdexit_cli.audit import TransferAuditor
    from dvdexit_cli.dicom.scan import scan
    from dvdexit_cli.journal import Journal
    from dvdexit_cli.journal.store import _MIGRATIONS

    path = tmp_path / "j.sqlite"
    with sqlite3.connect(path) as db:  # as dvdexit of migration 5 left it
        for migration in _MIGRATIONS[:5]:
            db.executescript(migration)
        db.execute(
            "INSERT INTO transfers (peer, peer_address, created_at, note, reason, inputs)"
            " VALUES ('old', 'h:104', '2026-11-01T00:00:00.000Z', 'n', 'r', '[]')"
        )
        db.execute("PRAGMA user_version = 5")
    db.close()
    found = scan(write_study(tmp_path / "in", n_instances=2, seed="audit-recipient"))
    trail = AuditTrail(tmp_path / "audit.jsonl")
    auditor = TransferAuditor(
        trail, source_for=lambda _n: SOURCE, destination_for=lambda _n: DESTINATION, kind="retry"
    )
    with Journal(path) as journal:
        old = journal.transfer_row(1)
        assert old is not None and old["recipient"] is None  # migrated, nothing invented
        transfer_id, ids = journal.create_transfer(
            peer="them",
            peer_address="h:104",
            inputs=[tmp_path / "in"],
            instances=found.instances,
            rejected=[],
            note="the note",
            reason="the reason",
            recipient="Dr. Demo",
        )
        for item_id in ids:
            journal.mark_sending(item_id)
            journal.record_outcome(item_id, state="sent", status=0, reason=None)
        auditor.transfer(journal, transfer_id, outcome="complete", error=None)

    (record,) = read_audit(trail.path)
    assert record["type"] == "retry" and record["outcome"] == 0
    assert (record["note"], record["reason"], record["recipient"]) == (
        "the note",
        "the reason",
        "Dr. Demo",
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://pacs.example.org/dicom-web", "https://pacs.example.org/dicom-web"),
        ("http://127.0.0.1:8042/dicom-web", "http://127.0.0.1:8042/dicom-web"),
        (
            "https://user:s3cret@pacs.example.org:8443/dw?token=abc#x",
            "https://pacs.example.org:8443/dw",
        ),
        ("https://[::1]:8443/dw", "https://[::1]:8443/dw"),
    ],
)
def test_a_dicomweb_destination_is_its_url_without_credentials(url: str, expected: str) -> None:
    from dvdexit_cli.audit import destination_for_peer
    from dvdexit_cli.config import DicomWebPeer

    participant = destination_for_peer(DicomWebPeer(name="web", url=url))
    assert (participant.name, participant.ae_title, participant.address) == ("web", None, expected)
    assert "s3cret" not in json.dumps(participant.to_json())


def test_a_refusal_later_delivered_is_not_counted_but_a_conflict_and_an_open_refusal_are() -> None:
    from dvdexit_cli.audit import received_counts

    ct = "1.2.840.10008.5.1.4.1.1.2"

    def row(uid: str | None, outcome: str) -> dict[str, object]:
        return {"sop_instance_uid": uid, "sop_class_uid": ct, "outcome": outcome}

    rows = [
        row("1.1", "refused"),  # out of resources, then the sender's retry stored it
        row("1.1", "stored"),
        row("1.2", "stored"),
        row("1.2", "conflict"),  # other content offered under a held UID: not stored
        row("1.3", "refused"),  # never delivered
        row(None, "refused"),  # a hostile UID, not kept: counted
        row("1.2", "duplicate"),
    ]
    counts, classes = received_counts(rows)
    assert counts == {"stored": 2, "duplicate": 1, "conflict": 1, "refused": 2}
    assert classes == {ct: 2}
