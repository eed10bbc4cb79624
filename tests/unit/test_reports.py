"""Reports made by dvdexit are valid DICOM that a PACS files with the study's images."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest
from peers import require_tool

from dvdexit_cli.dicom.reports import (
    BASIC_TEXT_SR,
    ENCAPSULATED_PDF,
    basic_text_sr,
    encapsulated_pdf,
)
from dvdexit_cli.samples import write_study

PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"  # odd length on purpose


@pytest.fixture
def reference(tmp_path: Path) -> pydicom.Dataset:
    path = write_study(tmp_path / "study", n_instances=1, seed="reports")[0]
    return pydicom.dcmread(path, stop_before_pixels=True)


def dciodvfy_problems(path: Path) -> list[str]:
    tool = require_tool("dciodvfy")
    done = subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)
    return [line for line in (done.stdout + done.stderr).splitlines() if "Error" in line]


def test_pdf_report_joins_the_study_and_keeps_its_bytes(
    tmp_path: Path, reference: pydicom.Dataset
) -> None:
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(PDF)

    ds = encapsulated_pdf(pdf, reference=reference, title="Radiology report")
    ds.save_as(tmp_path / "pdf.dcm", enforce_file_format=True)

    back = pydicom.dcmread(tmp_path / "pdf.dcm")
    assert back.SOPClassUID == ENCAPSULATED_PDF
    assert back.StudyInstanceUID == reference.StudyInstanceUID
    assert back.PatientID == reference.PatientID
    assert back.SeriesInstanceUID != reference.SeriesInstanceUID
    assert back.SOPInstanceUID != reference.SOPInstanceUID
    document = back.EncapsulatedDocument[: back.EncapsulatedDocumentLength]
    assert document == PDF
    assert len(back.EncapsulatedDocument) % 2 == 0
    assert dciodvfy_problems(tmp_path / "pdf.dcm") == []


def test_a_file_that_is_not_a_pdf_is_refused(tmp_path: Path, reference: pydicom.Dataset) -> None:
    fake = tmp_path / "report.pdf"
    fake.write_text("not a pdf")
    with pytest.raises(ValueError, match="not a PDF"):
        encapsulated_pdf(fake, reference=reference, title="x")


def test_text_report_is_a_valid_basic_text_sr(tmp_path: Path, reference: pydicom.Dataset) -> None:
    ds = basic_text_sr(["No acute findings.", "", "Follow-up in six months."], reference=reference)
    ds.save_as(tmp_path / "sr.dcm", enforce_file_format=True)

    back = pydicom.dcmread(tmp_path / "sr.dcm")
    assert back.SOPClassUID == BASIC_TEXT_SR
    assert back.StudyInstanceUID == reference.StudyInstanceUID
    assert [item.TextValue for item in back.ContentSequence] == [
        "No acute findings.",
        "Follow-up in six months.",
    ]
    assert dciodvfy_problems(tmp_path / "sr.dcm") == []


def test_empty_text_report_is_refused(reference: pydicom.Dataset) -> None:
    with pytest.raises(ValueError, match="empty"):
        basic_text_sr(["  ", ""], reference=reference)


def test_non_ascii_report_text_is_declared_utf8_and_kept(
    tmp_path: Path, reference: pydicom.Dataset
) -> None:
    ds = basic_text_sr(
        ["Geen afwijkingen; controle over één jaar — Ĳsselmeer."], reference=reference
    )
    ds.save_as(tmp_path / "sr.dcm", enforce_file_format=True)

    back = pydicom.dcmread(tmp_path / "sr.dcm")
    assert back.SpecificCharacterSet == "ISO_IR 192"
    assert back.ContentSequence[0].TextValue.endswith("Ĳsselmeer.")
    assert back.PatientName == reference.PatientName
    assert dciodvfy_problems(tmp_path / "sr.dcm") == []


def test_sr_to_pdf_renders_the_report_text_into_a_valid_encapsulated_pdf(
    tmp_path: Path, reference: pydicom.Dataset
) -> None:
    from dvdexit_cli.dicom.attach import Attachments
    from dvdexit_cli.dicom.scan import scan

    sr = basic_text_sr(["No acute findings.", "Follow-up in six months."], reference=reference)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    sr.save_as(inputs / "sr.dcm", enforce_file_format=True)

    (written,) = Attachments.under(tmp_path / "out", sr_to_pdf=True)(scan([inputs]).instances)

    pdf = pydicom.dcmread(written)
    document = pdf.EncapsulatedDocument[: pdf.EncapsulatedDocumentLength]
    assert pdf.SOPClassUID == ENCAPSULATED_PDF
    assert pdf.StudyInstanceUID == reference.StudyInstanceUID
    assert pdf.SourceInstanceSequence[0].ReferencedSOPInstanceUID == sr.SOPInstanceUID
    assert document.startswith(b"%PDF-")
    assert b"No acute findings." in document and b"Follow-up in six months." in document
    assert dciodvfy_problems(written) == []


def test_sr_to_pdf_with_no_sr_among_the_inputs_adds_nothing(tmp_path: Path) -> None:
    from dvdexit_cli.dicom.attach import Attachments
    from dvdexit_cli.dicom.scan import scan

    write_study(tmp_path / "ct", n_instances=1, seed="no-sr")
    attachments = Attachments.under(tmp_path / "out", sr_to_pdf=True)

    assert attachments(scan([tmp_path / "ct"]).instances) == []
    assert not (tmp_path / "out").exists()
