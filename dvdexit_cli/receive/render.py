"""``receive --sr-to-pdf``: a received structured report also stored as an Encapsulated PDF.

For PACS that cannot show SR. When the receiver stores a new Basic Text, Enhanced or
Comprehensive SR, it renders it (dicom/sr_pdf.py, the same rendering as ``send
--sr-to-pdf``) as an Encapsulated PDF instance in the same study (a new series; its
Source Instance Sequence names the SR) and stores that beside it like a received
instance: same store layout, digest and journal, so the study's hook, forward and verify
see it. A report that cannot be rendered is logged and left as it arrived; the sender's
C-STORE is answered by what happened to the SR alone.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian

from dvdexit_cli.dicom.attach import sr_as_encapsulated_pdf
from dvdexit_cli.dicom.reports import ENCAPSULATED_PDF, SR_CLASSES
from dvdexit_cli.fsmode import PRIVATE
from dvdexit_cli.journal import Journal
from dvdexit_cli.receive.store import InstanceStore, PutResult

__all__ = ["RENDERED_BY", "render_sr_beside"]

log = logging.getLogger(__name__)

#: What the journal shows as the peer address of a rendered PDF.
RENDERED_BY = "dvdexit --sr-to-pdf"


def render_sr_beside(
    store: InstanceStore,
    journal: Journal,
    *,
    sr_path: Path,
    sop_class_uid: str,
    calling_ae: str,
    spool: Path,
) -> PutResult | None:
    """Render the SR at ``sr_path`` and store the PDF in its study; None if not an SR/failed."""
    if sop_class_uid not in SR_CLASSES:
        return None
    tmp = spool / f".render-{secrets.token_hex(6)}.dcm"
    try:
        sr = pydicom.dcmread(sr_path)
        pdf = sr_as_encapsulated_pdf(sr)
        with PRIVATE.open_new(tmp, exclusive=True) as out:
            pdf.save_as(out, enforce_file_format=True)
    except Exception as exc:  # rendering is a courtesy: never fail the received SR for it
        tmp.unlink(missing_ok=True)
        log.error("could not render SR %s as PDF: %s", sr_path.name, exc)
        return None

    def journal_it(put: PutResult) -> None:
        # In the store's hands: a PDF that cannot be journaled is not kept.
        journal.record_received(
            calling_ae=calling_ae,
            peer_address=RENDERED_BY,
            sop_class_uid=ENCAPSULATED_PDF,
            sop_instance_uid=str(pdf.SOPInstanceUID),
            study_uid=put.study_uid,
            series_uid=put.series_uid,
            transfer_syntax=ExplicitVRLittleEndian,
            size=put.size,
            digest=put.digest,
            path=str(put.path),
            outcome=put.outcome,
            status=0,
            reason="rendered from SR " + str(sr.SOPInstanceUID),
        )

    try:
        put = store.put(
            tmp,
            sop_class_uid=ENCAPSULATED_PDF,
            sop_instance_uid=str(pdf.SOPInstanceUID),
            transfer_syntax=ExplicitVRLittleEndian,
            calling_ae=calling_ae,
            record=journal_it,
        )
    except Exception as exc:  # journal or store trouble: the PDF is not kept, the SR is
        log.error("could not store SR %s rendered as PDF: %s", sr_path.name, exc)
        return None
    finally:
        tmp.unlink(missing_ok=True)
    return put
