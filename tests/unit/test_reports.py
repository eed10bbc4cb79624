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
