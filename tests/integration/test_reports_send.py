"""Reports and the sender's note travel with the study to a real PACS (Orthanc)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pydicom
from peers import LOOPBACK, require_tool, run_dvdexit

from dvdexit_cli.dicom.reports import BASIC_TEXT_SR, ENCAPSULATED_PDF
from dvdexit_cli.samples import make_sample_dvd, write_study

# An odd-length PDF, so the padding rule is exercised end to end.
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n% report body for the receiving team\n%%EOF\n"


def _add_orthanc(home: Path, pacs: object) -> None:
    added = run_dvdexit(
        "peers", "add", "pacs", "--dimse", f"{LOOPBACK}:{pacs.dicom_port}",  # type: ignore[attr-defined]
        "--ae", pacs.aet, home=home,  # type: ignore[attr-defined]
    )  # fmt: skip
    assert added.returncode == 0, added.stderr


def _orthanc_instances(pacs: object) -> dict[str, dict[str, str]]:
    """SOP Instance UID -> {tags..., "ID": Orthanc ID} for every instance Orthanc holds."""
    found = {}
    for orthanc_id in pacs.rest("GET", "/instances"):  # type: ignore[attr-defined]
        tags = pacs.rest("GET", f"/instances/{orthanc_id}/simplified-tags")  # type: ignore[attr-defined]
        found[tags["SOPInstanceUID"]] = {**tags, "ID": orthanc_id}
    return found


def test_a_pdf_report_arrives_in_the_same_study_with_its_exact_bytes(
    tmp_path: Path, dvdexit_home: Path, orthanc: object
) -> None:
    study = write_study(tmp_path / "ct", n_instances=3, seed="report-to-orthanc")
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(PDF)
    pacs = orthanc()  # type: ignore[operator]
    _add_orthanc(dvdexit_home, pacs)

    done = run_dvdexit(
        "send", tmp_path / "ct", "--to", "pacs", "--report", pdf, "--json", home=dvdexit_home
    )

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["sent"] == 4
    held = _orthanc_instances(pacs)
    study_uid = pydicom.dcmread(study[0], stop_before_pixels=True).StudyInstanceUID
    (report,) = [t for t in held.values() if t["SOPClassUID"] == ENCAPSULATED_PDF]
    assert report["StudyInstanceUID"] == study_uid
    assert len({t["StudyInstanceUID"] for t in held.values()}) == 1
    stored = pydicom.dcmread(
        __import__("io").BytesIO(pacs.rest("GET", f"/instances/{report['ID']}/file"))  # type: ignore[attr-defined]
    )
    assert stored.EncapsulatedDocument[: stored.EncapsulatedDocumentLength] == PDF
    assert pacs.rest("GET", f"/instances/{report['ID']}/pdf") == PDF  # type: ignore[attr-defined]


def test_a_text_report_and_the_transfer_note_arrive_as_basic_text_sr(
    tmp_path: Path, dvdexit_home: Path, orthanc: object
) -> None:
    write_study(tmp_path / "ct", n_instances=2, seed="text-to-orthanc")
    text = tmp_path / "report.txt"
    text.write_text("No acute findings.\n\nFollow-up CT in six months.\n", encoding="utf-8")
    pacs = orthanc()  # type: ignore[operator]
    _add_orthanc(dvdexit_home, pacs)

    done = run_dvdexit(
        "send", tmp_path / "ct", "--to", "pacs", "--report-text", text,
        "--note", "Prior CT for comparison", "--reason", "Second opinion",
        "--recipient", "Dr. Demo, neurosurgery", "--note-as-sr", "--sr-to-pdf", "--json",
        home=dvdexit_home,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    srs = [t for t in _orthanc_instances(pacs).values() if t["SOPClassUID"] == BASIC_TEXT_SR]
    assert len(srs) == 2
    texts = set()
    for sr in srs:
        ds = pydicom.dcmread(
            __import__("io").BytesIO(pacs.rest("GET", f"/instances/{sr['ID']}/file"))  # type: ignore[attr-defined]
        )
        texts |= {item.TextValue for item in ds.ContentSequence}
    assert texts == {
        "No acute findings.",
        "Follow-up CT in six months.",
        "Second opinion",
        "Recipient: Dr. Demo, neurosurgery",
        "Prior CT for comparison",
    }
    # --sr-to-pdf: each SR also arrives as a PDF, for a PACS that cannot show SR.
    pdfs = [t for t in _orthanc_instances(pacs).values() if t["SOPClassUID"] == ENCAPSULATED_PDF]
    rendered = b"".join(pacs.rest("GET", f"/instances/{p['ID']}/pdf") for p in pdfs)  # type: ignore[attr-defined]
    assert len(pdfs) == 2
    assert {p["StudyInstanceUID"] for p in pdfs} == {srs[0]["StudyInstanceUID"]}
    assert b"No acute findings." in rendered and b"Prior CT for comparison" in rendered


def test_a_report_without_its_study_among_several_is_a_usage_error_and_nothing_is_sent(
    tmp_path: Path, dvdexit_home: Path, orthanc: object
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=2, sc_images=1)
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(PDF)
    pacs = orthanc()  # type: ignore[operator]
    _add_orthanc(dvdexit_home, pacs)

    refused = run_dvdexit("send", media.root, "--to", "pacs", "--report", pdf, home=dvdexit_home)
    status = run_dvdexit("status", "--json", home=dvdexit_home)

    assert refused.returncode == 2
    assert "2 studies" in refused.stderr and "STUDY_UID=" in refused.stderr
    assert pacs.rest("GET", "/instances") == []  # type: ignore[attr-defined]
    assert json.loads(status.stdout).get("transfers", []) == []

    named = run_dvdexit(
        "send", media.root, "--to", "pacs", "--report", f"{media.study_uids[1]}={pdf}",
        "--json", home=dvdexit_home,
    )  # fmt: skip

    assert named.returncode == 0, named.stderr
    held = _orthanc_instances(pacs)
    (report,) = [t for t in held.values() if t["SOPClassUID"] == ENCAPSULATED_PDF]
    assert report["StudyInstanceUID"] == media.study_uids[1]
    assert len(held) == media.instance_count + 1


def test_every_object_dvdexit_attaches_passes_dciodvfy(tmp_path: Path) -> None:
    from dvdexit_cli.dicom.attach import Attachments, ReportFile
    from dvdexit_cli.dicom.scan import scan

    tool = require_tool("dciodvfy")
    write_study(tmp_path / "ct", n_instances=1, seed="dciodvfy-attach")
    (tmp_path / "r.pdf").write_bytes(PDF)
    (tmp_path / "r.txt").write_text("Findings.\n", encoding="utf-8")
    attachments = Attachments.under(
        tmp_path / "out",
        pdf_reports=(ReportFile(tmp_path / "r.pdf"),),
        text_reports=(ReportFile(tmp_path / "r.txt"),),
        note="a note",
        reason="a reason",
        recipient="a recipient",
        note_as_sr=True,
    )

    written = attachments(scan([tmp_path / "ct"]).instances)

    assert len(written) == 3
    for path in written:
        checked = subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)
        errors = [
            line for line in (checked.stdout + checked.stderr).splitlines() if "Error" in line
        ]
        assert errors == [], (path.name, errors)


def test_a_report_whose_send_failed_is_resent_by_retry_failed_then_its_copy_removed(
    tmp_path: Path, dvdexit_home: Path, storescp: object
) -> None:
    from peers import free_port

    study = write_study(tmp_path / "ct", n_instances=2, seed="report-replay")
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(PDF)
    down = ("peers", "add", "scp", "--dimse", f"{LOOPBACK}:{free_port()}", "--ae", "STORESCP")
    assert run_dvdexit(*down, home=dvdexit_home).returncode == 0

    failed = run_dvdexit(
        "send", tmp_path / "ct", "--to", "scp", "--report", pdf, "--retries", "0",
        home=dvdexit_home,
    )  # fmt: skip

    assert failed.returncode == 5, failed.stderr
    (kept,) = list(dvdexit_home.rglob("attached-*"))  # the report, kept for the replay
    scp = storescp(tmp_path / "pacs")  # type: ignore[operator]
    # The peer's address is corrected (removing it would be refused: items are open).
    up = ("peers", "add", "scp", "--replace", "--dimse", f"{LOOPBACK}:{scp.port}", "--ae", scp.ae)
    assert run_dvdexit(*up, home=dvdexit_home).returncode == 0

    replay = run_dvdexit("send", "--retry-failed", "--json", home=dvdexit_home)

    assert replay.returncode == 0, replay.stderr
    assert json.loads(replay.stdout)["sent"] == 3
    stored = [pydicom.dcmread(p) for p in scp.stored_files()]  # type: ignore[attr-defined]
    (report,) = [ds for ds in stored if ds.SOPClassUID == ENCAPSULATED_PDF]
    assert report.EncapsulatedDocument[: report.EncapsulatedDocumentLength] == PDF
    assert report.StudyInstanceUID == pydicom.dcmread(study[0]).StudyInstanceUID
    assert not kept.exists()
