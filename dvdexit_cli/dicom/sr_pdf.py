"""Render a structured report (Basic Text, Enhanced or Comprehensive SR) as a PDF.

For PACS that cannot show SR: the PDF lists the report's title, the study it belongs to,
and its content tree as indented headings and values. Uses fpdf2 (pure Python; see
docs/reports.md for why). The built-in PDF fonts cover Latin-1 only; other characters
are shown as ``?`` rather than failing the send.
"""

from __future__ import annotations

from collections.abc import Iterator

from fpdf import FPDF
from pydicom.dataset import Dataset

from dvdexit_cli.dicom.reports import SR_CLASSES

__all__ = ["SR_CLASSES", "render_sr_pdf"]

_MAX_DEPTH = 16  # a content tree deeper than this is shown cut off, not recursed into


def _latin1(text: str) -> str:
    return text.encode("latin-1", "replace").decode("latin-1")


def _meaning(item: Dataset, keyword: str = "ConceptNameCodeSequence") -> str:
    codes = item.get(keyword)
    if codes:
        return str(codes[0].get("CodeMeaning", "")).strip()
    return ""


def _value(item: Dataset) -> str:
    kind = str(item.get("ValueType", ""))
    if kind == "TEXT":
        return str(item.get("TextValue", ""))
    if kind == "CODE":
        return _meaning(item, "ConceptCodeSequence")
    if kind == "NUM":
        measured = item.get("MeasuredValueSequence")
        if measured:
            unit = _meaning(measured[0], "MeasurementUnitsCodeSequence")
            return f"{measured[0].get('NumericValue', '')} {unit}".strip()
        return ""
    if kind in ("DATE", "TIME", "DATETIME", "PNAME", "UIDREF"):
        keyword = {
            "DATE": "Date",
            "TIME": "Time",
            "DATETIME": "DateTime",
            "PNAME": "PersonName",
            "UIDREF": "UID",
        }[kind]
        return str(item.get(keyword, ""))
    if kind in ("IMAGE", "COMPOSITE", "WAVEFORM"):
        refs = item.get("ReferencedSOPSequence")
        return f"(reference to {refs[0].ReferencedSOPInstanceUID})" if refs else "(reference)"
    return ""


def _lines(items: object, depth: int) -> Iterator[tuple[int, str, str]]:
    for item in items or ():  # type: ignore[attr-defined]
        heading, value = _meaning(item), _value(item)
        if depth >= _MAX_DEPTH:
            yield depth, "(content nested too deeply; not shown)", ""
            return
        yield depth, heading, value
        if "ContentSequence" in item:
            yield from _lines(item.ContentSequence, depth + 1)


def render_sr_pdf(sr: Dataset) -> bytes:
    """The SR ``sr`` rendered as PDF bytes; ValueError when it has no content."""
    if "ContentSequence" not in sr:
        raise ValueError("the SR has no content to render")
    pdf = FPDF(format="A4")
    pdf.set_compression(False)  # small documents; keeps the text searchable as it is
    pdf.set_creator("dvdexit")
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()
    width = pdf.w - pdf.l_margin - pdf.r_margin
    title = _meaning(sr) or str(sr.get("SeriesDescription", "")) or "Structured report"
    pdf.set_font("Helvetica", "B", 14)
    pdf.multi_cell(width, 8, _latin1(title), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 9)
    facts = [
        ("Patient", f"{sr.get('PatientName', '')} ({sr.get('PatientID', '')})"),
        ("Study date", str(sr.get("StudyDate", ""))),
        ("Accession number", str(sr.get("AccessionNumber", ""))),
        ("Study", str(sr.get("StudyDescription", ""))),
        ("Completion / verification", f"{sr.get('CompletionFlag', '')} / "
         f"{sr.get('VerificationFlag', '')}"),
        ("Rendered from SR", str(sr.get("SOPInstanceUID", ""))),
    ]  # fmt: skip
    for label, text in facts:
        pdf.multi_cell(width, 5, _latin1(f"{label}: {text}"), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    for depth, heading, value in _lines(sr.ContentSequence, 0):
        indent = min(depth, 8) * 6
        pdf.set_x(pdf.l_margin + indent)
        if heading:
            pdf.set_font("Helvetica", "B", 10)
            pdf.multi_cell(width - indent, 6, _latin1(heading), new_x="LMARGIN", new_y="NEXT")
        if value:
            pdf.set_x(pdf.l_margin + indent)
            pdf.set_font("Helvetica", "", 10)
            pdf.multi_cell(width - indent, 5, _latin1(value), new_x="LMARGIN", new_y="NEXT")
        pdf.ln(1)
    return bytes(pdf.output())
