"""``dvdexit receive --sr-to-pdf``: an SR sent by DCMTK is stored, and beside it its PDF."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from peers import require_tool, run_dcmsend, run_dvdexit

from dvdexit_cli.dicom.reports import ENCAPSULATED_PDF, basic_text_sr
from dvdexit_cli.samples import write_study

pytestmark = pytest.mark.peer


def test_a_received_sr_is_also_stored_as_an_encapsulated_pdf_that_dciodvfy_accepts(
    tmp_path: Path, dvdexit_home: Path, dvdexit_receiver: Any
) -> None:
    (image,) = write_study(tmp_path / "study", n_instances=1, seed="receive-sr-pdf")
    reference = pydicom.dcmread(image, stop_before_pixels=True)
    sr = basic_text_sr(["Findings: no change since the prior study."], reference=reference)
    sr_file = tmp_path / "sr.dcm"
    sr.save_as(sr_file, enforce_file_format=True)
    store = tmp_path / "store"
    receiver = dvdexit_receiver(store, extra=["--sr-to-pdf", "--idle-timeout", "1"])

    sent = run_dcmsend([image, sr_file], receiver.port, called_ae="DVDEXIT")
    assert sent.returncode == 0, sent.stderr

    deadline = time.monotonic() + 30
    while len(stored := sorted(store.rglob("*.dcm"))) < 3:
        assert time.monotonic() < deadline, f"only {len(stored)} instance(s) stored"
        time.sleep(0.1)
    pdfs = [p for p in stored if str(pydicom.dcmread(p).SOPClassUID) == ENCAPSULATED_PDF]
    (pdf_file,) = pdfs
    pdf = pydicom.dcmread(pdf_file)
    assert pdf.StudyInstanceUID == sr.StudyInstanceUID
    assert pdf.SeriesInstanceUID not in (sr.SeriesInstanceUID, reference.SeriesInstanceUID)
    assert pdf.SourceInstanceSequence[0].ReferencedSOPInstanceUID == sr.SOPInstanceUID
    document = bytes(pdf.EncapsulatedDocument)[: int(pdf.EncapsulatedDocumentLength)]
    assert document.startswith(b"%PDF-") and b"no change since the prior study" in document
    checked = subprocess.run(
        [require_tool("dciodvfy"), str(pdf_file)], capture_output=True, text=True, check=False
    )
    errors = [x for x in (checked.stdout + checked.stderr).splitlines() if "Error" in x]
    assert errors == []

    receiver.stop()
    status = json.loads(run_dvdexit("status", "--json", home=dvdexit_home).stdout)
    (study,) = status["received"]
    assert study["stored"] == 3  # the image, the SR and its PDF, all journaled
