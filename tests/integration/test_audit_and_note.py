"""The audit trail and the sender's note, end to end between two dvdexit processes.

A ``dvdexit send --note --reason --recipient --note-as-sr`` to a running ``dvdexit
receive --on-complete CMD`` on loopback: the hook sees the note in its environment,
``status --json`` shows it, and both sides append one audit record per study that names
the study by UID only (never the patient). A second send with one instance changed
meets a conflict at the receiver: the sender's audit record says "serious failure".
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from peers import LOOPBACK, run_dvdexit

from dvdexit_cli.samples import DEFAULT_PATIENT_ID, DEFAULT_PATIENT_NAME, make_sample_dvd

pytestmark = pytest.mark.peer

HOOK = """\
#!/bin/sh
printf '%s|%s|%s|%s\\n' "$DVDEXIT_STUDY_UID" "$DVDEXIT_NOTE" "$DVDEXIT_REASON" \
"$DVDEXIT_RECIPIENT" >> "$1"
"""
NOTE = "Prior CT attached; 'please' compare"
REASON = "Referral for second opinion"
RECIPIENT = "Dr. B. Jansen, radiology"


def _audit(home: Path) -> list[dict[str, Any]]:
    path = home / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _wait(predicate: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return found


def test_send_with_a_note_reaches_the_hook_status_and_both_audit_trails_without_the_patient(
    tmp_path: Path, dvdexit_receiver: Any
) -> None:
    receiver_home = tmp_path / "receiver-home"
    sender_home = tmp_path / "sender-home"
    receiver_home.mkdir()
    sender_home.mkdir()
    media = make_sample_dvd(tmp_path / "dvd", seed="audit-note", ct_slices=3, sc_images=1)
    script = tmp_path / "hook.sh"
    script.write_text(HOOK)
    marker = tmp_path / "hook-runs.txt"
    receiver = dvdexit_receiver(
        tmp_path / "store",
        home=receiver_home,
        extra=["--idle-timeout", "1", "--on-complete", f"sh {script} {marker}"],
        # The receiver's own environment must not leak into the hook as a sender's note.
        env={"DVDEXIT_NOTE": "not from the sender"},
    )
    added = run_dvdexit(
        "peers", "add", "recv", "--dimse", f"{LOOPBACK}:{receiver.port}", "--ae", "DVDEXIT",
        home=sender_home,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr

    sent = run_dvdexit(
        "send", media.root, "--to", "recv", "--note", NOTE, "--reason", REASON,
        "--recipient", RECIPIENT, "--note-as-sr", "--json", home=sender_home,
    )  # fmt: skip

    assert sent.returncode == 0, sent.stderr
    transfer = json.loads(sent.stdout)
    assert transfer["sent"] == media.instance_count + 2  # one transfer-note SR per study
    runs = _wait(
        lambda: marker.exists() and len(marker.read_text().splitlines()) >= 2 and marker,
        "the hook of both studies",
    )
    by_study = {line.split("|")[0]: line.split("|")[1:] for line in runs.read_text().splitlines()}
    assert set(by_study) == set(media.study_uids)
    assert all(v == [NOTE, REASON, RECIPIENT] for v in by_study.values())

    status = run_dvdexit("status", "--json", home=receiver_home)
    assert status.returncode == 0, status.stderr
    received = {r["study_uid"]: r for r in json.loads(status.stdout)["received"]}
    for uid in media.study_uids:
        assert received[uid]["sender_note"] == {
            "note": NOTE,
            "reason": REASON,
            "recipient": RECIPIENT,
            "source": "sr",
            "sender_ae": "DVDEXIT",
        }
    text = run_dvdexit("status", home=receiver_home)
    assert f"sender's reason {REASON!r}" in text.stdout

    # The sender's audit: one record per study of the transfer, everything delivered.
    sends = _audit(sender_home)
    assert {r["study"]["uid"] for r in sends} == set(media.study_uids)
    assert len(sends) == 2
    for record in sends:
        assert record["event"]["code"] == "110104"
        assert record["type"] == "send" and record["action"] == "R"
        assert (record["outcome"], record["outcome_text"]) == (0, "success")
        assert record["transfer_id"] == transfer["transfer_id"]
        assert record["destination"]["ae_title"] == "DVDEXIT"
        assert record["destination"]["address"] == f"{LOOPBACK}:{receiver.port}"
        assert record["destination"]["name"] == "recv"
        assert record["source"]["ae_title"] and record["source"]["requestor"] is True
        assert record["who"]["user"]
        assert (record["note"], record["reason"], record["recipient"]) == (
            NOTE,
            REASON,
            RECIPIENT,
        )
        assert record["counts"]["failed"] == 0
        assert record["counts"]["sent"] == record["study"]["instances"]
        assert "1.2.840.10008.5.1.4.1.1.88.11" in record["study"]["sop_classes"]

    # The receiver's audit: one record per completed study, new instances stored (C).
    receives = _wait(lambda: len(_audit(receiver_home)) >= 2 and _audit(receiver_home), "audit")
    assert {r["study"]["uid"] for r in receives} == set(media.study_uids)
    for record in receives:
        assert record["type"] == "receive" and record["action"] == "C"
        assert record["outcome"] == 0
        assert record["destination"]["ae_title"] == "DVDEXIT"
        assert record["reason"] == REASON

    # Second send: one CT slice changed under its UID; the receiver refuses it (conflict).
    victim = media.instances[0]
    ds = pydicom.dcmread(victim)
    ds.SeriesDescription = "changed after the first send"
    ds.save_as(victim)
    again = run_dvdexit("send", media.root, "--to", "recv", "--json", home=sender_home)

    assert again.returncode == 6, again.stderr
    second = json.loads(again.stdout)
    records = [r for r in _audit(sender_home) if r["transfer_id"] == second["transfer_id"]]
    (bad,) = [r for r in records if r["counts"]["failed"]]
    assert (bad["outcome"], bad["outcome_text"]) == (8, "serious failure")
    assert bad["counts"]["failed"] == 1 and bad["detail"]
    assert bad["note"] is None and bad["recipient"] is None
    (good,) = [r for r in records if not r["counts"]["failed"]]
    assert good["outcome"] == 0

    receiver.stop()
    for home in (sender_home, receiver_home):
        raw = (home / "audit.jsonl").read_bytes()
        assert DEFAULT_PATIENT_NAME.encode() not in raw
        assert DEFAULT_PATIENT_NAME.split("^")[0].encode() not in raw
        assert DEFAULT_PATIENT_ID.encode() not in raw
    listed = run_dvdexit("status", "--audit", "--json", home=sender_home)
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)["records"]) == len(_audit(sender_home))
