"""Reports that travel with the images: PDF as Encapsulated PDF, text as a Basic Text SR.

Each new object belongs to the study of a reference instance: it copies that instance's
Patient and General Study attributes (so a PACS files it with the images) and gets a new
series and SOP Instance UID. Nothing else of the reference is copied.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

__all__ = [
    "BASIC_TEXT_SR",
    "ENCAPSULATED_PDF",
    "SR_CLASSES",
    "TransferNote",
    "basic_text_sr",
    "clean_note_text",
    "encapsulated_pdf",
    "encapsulated_pdf_bytes",
    "read_transfer_note",
    "transfer_note_sr",
]

ENCAPSULATED_PDF = UID("1.2.840.10008.5.1.4.1.1.104.1")
BASIC_TEXT_SR = UID("1.2.840.10008.5.1.4.1.1.88.11")
SR_CLASSES = frozenset(
    {
        BASIC_TEXT_SR,
        UID("1.2.840.10008.5.1.4.1.1.88.22"),  # Enhanced SR
        UID("1.2.840.10008.5.1.4.1.1.88.33"),  # Comprehensive SR
    }
)
_MANUFACTURER = "dvdexit"

# Patient and General Study module attributes copied from the reference instance.
_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "OtherPatientIDsSequence",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
)
_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def _base(
    reference: Dataset, sop_class: UID, modality: str, series_number: int, now: datetime
) -> Dataset:
    if "StudyInstanceUID" not in reference:
        raise ValueError("the reference instance has no Study Instance UID")
    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    if "SpecificCharacterSet" in reference:
        ds.SpecificCharacterSet = reference.SpecificCharacterSet
    for keyword in _PATIENT_STUDY:
        if keyword in reference:
            setattr(ds, keyword, reference[keyword].value)
        elif keyword in _TYPE2:
            setattr(ds, keyword, "")
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    ds.Modality = modality
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = series_number
    ds.InstanceNumber = 1
    ds.Manufacturer = _MANUFACTURER
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    return ds


def encapsulated_pdf(
    pdf: Path,
    *,
    reference: Dataset,
    title: str,
    series_number: int = 9001,
    now: datetime | None = None,
) -> Dataset:
    """Wrap the PDF at ``pdf`` as an Encapsulated PDF instance in the reference's study.

    Raises ValueError when the file is not a PDF.
    """
    data = pdf.read_bytes()
    if not data.startswith(b"%PDF-"):
        raise ValueError(f"{pdf} is not a PDF file (no %PDF- header)")
    return encapsulated_pdf_bytes(
        data, reference=reference, title=title, series_number=series_number, now=now
    )


def encapsulated_pdf_bytes(
    data: bytes,
    *,
    reference: Dataset,
    title: str,
    series_number: int = 9001,
    now: datetime | None = None,
) -> Dataset:
    """Wrap the PDF document ``data`` as an Encapsulated PDF instance in the reference's study."""
    if not data.startswith(b"%PDF-"):
        raise ValueError("not a PDF document (no %PDF- header)")
    moment = now or datetime.now()
    ds = _base(reference, ENCAPSULATED_PDF, "DOC", series_number, moment)
    ds.ConversionType = "WSD"
    ds.AcquisitionDateTime = moment.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = title
    _unicode_if_needed(ds, [title])
    ds.ConceptNameCodeSequence = DicomSequence()
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    # PS3.3 C.24.2.1: the value is padded to even length with one NULL; the length
    # attribute keeps the document's own size so a reader can strip the padding.
    ds.EncapsulatedDocumentLength = len(data)
    ds.EncapsulatedDocument = data + (b"\x00" if len(data) % 2 else b"")
    return ds


def _code(code: object) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value  # type: ignore[attr-defined]
    item.CodingSchemeDesignator = code.scheme_designator  # type: ignore[attr-defined]
    item.CodeMeaning = code.meaning  # type: ignore[attr-defined]
    return item


def basic_text_sr(
    paragraphs: Sequence[str],
    *,
    reference: Dataset,
    title: str = "Diagnostic Imaging Report",
    heading: str = "findings",
    series_number: int = 9002,
    now: datetime | None = None,
) -> Dataset:
    """A Basic Text SR with the text as TEXT items under one heading.

    ``heading`` is ``findings`` (a report) or ``reason`` (a sender's transfer note:
    reason for the referral). Raises ValueError for empty text.
    """
    concept = codes.DCM.Findings if heading == "findings" else codes.DCM.ReasonForStudy
    texts = [p.strip() for p in paragraphs if p.strip()]
    if not texts:
        raise ValueError("the report text is empty")
    return _text_sr(
        [(concept, text) for text in texts],
        reference=reference,
        title=title,
        series_number=series_number,
        now=now,
    )


def transfer_note_sr(
    *,
    reference: Dataset,
    note: str | None = None,
    reason: str | None = None,
    recipient: str | None = None,
    series_number: int = 9003,
    now: datetime | None = None,
) -> Dataset:
    """The sender's transfer note as a Basic Text SR in the reference's study.

    The reason is a "Reason for Study" item, the note and the recipient "Comment"
    items (the recipient prefixed ``Recipient:``). Raises ValueError when all are empty.
    """
    items = []
    if reason and reason.strip():
        items.append((codes.DCM.ReasonForStudy, reason.strip()))
    if recipient and recipient.strip():
        items.append((codes.DCM.Comment, f"Recipient: {recipient.strip()}"))
    if note and note.strip():
        items.append((codes.DCM.Comment, note.strip()))
    if not items:
        raise ValueError("the transfer note is empty: give a note, reason or recipient")
    return _text_sr(
        items, reference=reference, title="Transfer note", series_number=series_number, now=now
    )


def _text_sr(
    items: Sequence[tuple[object, str]],
    *,
    reference: Dataset,
    title: str,
    series_number: int,
    now: datetime | None,
) -> Dataset:
    moment = now or datetime.now()
    ds = _base(reference, BASIC_TEXT_SR, "SR", series_number, moment)
    ds.ReferencedPerformedProcedureStepSequence = DicomSequence()
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.PerformedProcedureCodeSequence = DicomSequence()
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.ConceptNameCodeSequence = DicomSequence([_code(codes.LN.DiagnosticImagingReport)])
    content = []
    for concept, text in items:
        item = Dataset()
        item.RelationshipType = "CONTAINS"
        item.ValueType = "TEXT"
        item.ConceptNameCodeSequence = DicomSequence([_code(concept)])
        item.TextValue = text
        content.append(item)
    ds.ContentSequence = DicomSequence(content)
    if title:
        ds.SeriesDescription = title
    _unicode_if_needed(ds, [text for _, text in items])
    return ds


def _unicode_if_needed(ds: Dataset, texts: Sequence[str]) -> None:
    """Declare UTF-8 when text we add is not ASCII and the reference declared no Unicode.

    Values copied from the reference are decoded already, so they re-encode in UTF-8.
    """
    if all(text.isascii() for text in texts):
        return
    if ds.get("SpecificCharacterSet") not in ("ISO_IR 192",):
        ds.SpecificCharacterSet = "ISO_IR 192"


TRANSFER_NOTE_TITLE = "Transfer note"
_RECIPIENT_PREFIX = "Recipient: "
_NOTE_LIMIT = 1024
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True)
class TransferNote:
    """A sender's note, reason and recipient, as read from a transfer-note SR."""

    note: str | None
    reason: str | None
    recipient: str | None


def clean_note_text(text: str | None) -> str | None:
    """Untrusted text made safe to show and to put in an environment variable."""
    if text is None:
        return None
    text = _CONTROL.sub(" ", text).strip()[:_NOTE_LIMIT]
    return text or None


def read_transfer_note(ds: Dataset) -> TransferNote | None:
    """The note of a transfer-note SR as ``transfer_note_sr`` writes it; None for any other.

    It is one only when all of these hold: Basic Text SR, Manufacturer ``dvdexit``, Series
    Description ``Transfer note``, document title (LN) Diagnostic Imaging Report, and a
    content tree of TEXT items that are each a "Reason for Study" or a "Comment" (DCM).
    The first Comment starting with ``Recipient: `` is the recipient; the other Comments,
    joined, the note. Text is cleaned of control characters and cut at 1,024 characters.
    """
    if str(ds.get("SOPClassUID", "")) != BASIC_TEXT_SR:
        return None
    if str(ds.get("Manufacturer", "")) != _MANUFACTURER:
        return None
    if str(ds.get("SeriesDescription", "")) != TRANSFER_NOTE_TITLE:
        return None
    title = ds.get("ConceptNameCodeSequence")
    wanted = codes.LN.DiagnosticImagingReport
    if not title or str(title[0].get("CodeValue", "")) != wanted.value:
        return None
    reason_code = codes.DCM.ReasonForStudy.value
    comment_code = codes.DCM.Comment.value
    reasons: list[str] = []
    comments: list[str] = []
    for item in ds.get("ContentSequence") or ():
        concept = item.get("ConceptNameCodeSequence")
        if str(item.get("ValueType", "")) != "TEXT" or not concept:
            return None
        code = str(concept[0].get("CodeValue", ""))
        scheme = str(concept[0].get("CodingSchemeDesignator", ""))
        if scheme != "DCM" or code not in (reason_code, comment_code):
            return None
        (reasons if code == reason_code else comments).append(str(item.get("TextValue", "")))
    if not reasons and not comments:
        return None
    recipient = None
    for index, text in enumerate(comments):
        if text.startswith(_RECIPIENT_PREFIX):
            recipient = text[len(_RECIPIENT_PREFIX) :]
            del comments[index]
            break
    return TransferNote(
        note=clean_note_text("\n".join(comments)) if comments else None,
        reason=clean_note_text("\n".join(reasons)) if reasons else None,
        recipient=clean_note_text(recipient),
    )
