"""Forwarding to the local PACS (Orthanc) with import reconciliation, and Orthanc as a sender.

The receiver forwards a complete study to Orthanc with the local Patient ID from a
mapping; the sender's ID stays in Other Patient IDs Sequence and Original Attributes
Sequence; UIDs never change; a study with no mapping is held.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import pydicom
import pytest
from peers import run_dcmsend, run_dvdexit

from dvdexit_cli.config import resolve_paths
from dvdexit_cli.dicom.digest import dataset_digest
from dvdexit_cli.journal import Journal
from dvdexit_cli.samples import write_study

pytestmark = pytest.mark.peer


def study_with_issuer(folder: Path, *, seed: str, patient_id: str, issuer: str) -> list[Path]:
    files = write_study(folder, n_instances=3, seed=seed, patient_id=patient_id)
    for path in files:
        ds = pydicom.dcmread(path)
        ds.IssuerOfPatientID = issuer
        ds.save_as(path, enforce_file_format=True)
    return files


def wait_until(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_forwarded_copy_in_orthanc_has_the_local_id_and_keeps_the_original(
    tmp_path, orthanc, dvdexit_receiver, dvdexit_home
):
    mapped = study_with_issuer(
        tmp_path / "mapped", seed="reconcile-mapped", patient_id="SENDER-123", issuer="HOSP_A"
    )
    unmapped = study_with_issuer(
        tmp_path / "unmapped", seed="reconcile-unmapped", patient_id="STRANGER-9", issuer="HOSP_A"
    )
    mapping = tmp_path / "mapping.csv"
    mapping.write_text(
        "sender_id,sender_issuer,local_id,local_issuer\nSENDER-123,HOSP_A,LOCAL-777,OURHOSP\n"
    )
    pacs = orthanc()
    added = run_dvdexit(
        "peers",
        "add",
        "pacs",
        "--dimse",
        f"127.0.0.1:{pacs.dicom_port}",
        "--ae",
        pacs.aet,
        home=dvdexit_home,
    )
    assert added.returncode == 0, added.stderr
    receiver = dvdexit_receiver(
        tmp_path / "STORE",
        extra=["--idle-timeout", "1", "--forward-to", "pacs", "--reconcile", str(mapping)],
    )
    for files in (mapped, unmapped):
        assert run_dcmsend(files, receiver.port, called_ae="DVDEXIT").returncode == 0

    wait_until(lambda: len(pacs.instance_uids()) >= len(mapped), "the forward to Orthanc")
    with Journal(resolve_paths({"DVDEXIT_HOME": str(dvdexit_home)}).journal_file) as journal:
        wait_until(
            lambda: (
                [f["outcome"] for f in journal.forwards()].count("pending") == 0
                and len(journal.forwards()) == 2
            ),
            "both studies' forward outcomes",
        )
        outcomes = {f["study_uid"]: f["outcome"] for f in journal.forwards()}
    assert receiver.stop() == 0

    originals = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in mapped}
    held_study = str(pydicom.dcmread(unmapped[0]).StudyInstanceUID)
    assert outcomes == {
        str(pydicom.dcmread(mapped[0]).StudyInstanceUID): "sent",
        held_study: "held",
    }
    in_pacs = pacs.instance_uids()
    assert set(in_pacs) == set(originals), "the unmapped study must not reach the PACS"
    for sop_uid, orthanc_id in in_pacs.items():
        copy = pydicom.dcmread(io.BytesIO(pacs.rest("GET", f"/instances/{orthanc_id}/file")))
        source = pydicom.dcmread(originals[sop_uid])
        assert (copy.StudyInstanceUID, copy.SeriesInstanceUID, copy.SOPInstanceUID) == (
            source.StudyInstanceUID,
            source.SeriesInstanceUID,
            source.SOPInstanceUID,
        )
        assert (copy.PatientID, copy.IssuerOfPatientID) == ("LOCAL-777", "OURHOSP")
        (other,) = copy.OtherPatientIDsSequence
        assert (other.PatientID, other.IssuerOfPatientID) == ("SENDER-123", "HOSP_A")
        (change,) = copy.OriginalAttributesSequence
        (old,) = change.ModifiedAttributesSequence
        assert (old.PatientID, old.IssuerOfPatientID) == ("SENDER-123", "HOSP_A")
        assert change.ReasonForTheAttributeModification == "COERCE"
    # The store keeps what arrived: the sender's ID, untouched.
    for path in receiver.store.rglob("*.dcm"):
        assert pydicom.dcmread(path).PatientID in ("SENDER-123", "STRANGER-9")
    assert f"forward held: study {held_study} to pacs" in receiver.stderr
    assert "STRANGER-9" not in receiver.stderr, "patient IDs stay out of the log"


def test_orthanc_pushing_a_study_to_the_receiver_is_stored_as_orthanc_holds_it(
    tmp_path, orthanc, dvdexit_receiver
):
    files = write_study(tmp_path / "study", n_instances=2, seed="orthanc-pushes")
    receiver = dvdexit_receiver(tmp_path / "STORE", extra=["--allow-ae", "ORTHANC"])
    pacs = orthanc(modalities={"gw": ("DVDEXIT", "127.0.0.1", receiver.port)})
    ids = [pacs.rest("POST", "/instances", content=p.read_bytes())["ID"] for p in files]

    pacs.rest("POST", "/modalities/gw/store", json={"Resources": ids, "Synchronous": True})

    assert receiver.stop() == 0
    stored = sorted(receiver.store.rglob("*.dcm"))
    assert len(stored) == len(files)
    theirs = set()
    for orthanc_id in ids:
        blob = tmp_path / f"{orthanc_id}.dcm"
        blob.write_bytes(pacs.rest("GET", f"/instances/{orthanc_id}/file"))
        theirs.add(dataset_digest(blob)[1])
    assert {dataset_digest(p)[1] for p in stored} == theirs
