"""Objects that travel with a send: PDF and text reports, and the sender's transfer note.

An :class:`Attachments` is handed to ``send`` (``SendSettings.attach``). Once the inputs
are scanned, it learns which studies they hold, writes each report or note as a DICOM
file into its own folder (under the data directory, so ``--retry-failed`` finds the files
again), and returns their paths: ``send`` then journals and sends them like any other
instance, after the study's images.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from dvdexit_cli.dicom.reports import (
    SR_CLASSES,
    basic_text_sr,
    encapsulated_pdf,
    encapsulated_pdf_bytes,
    transfer_note_sr,
)
from dvdexit_cli.dicom.scan import Instance
from dvdexit_cli.dicom.uids import is_valid_uid
from dvdexit_cli.errors import InputError, UsageError
from dvdexit_cli.fsmode import PRIVATE

__all__ = ["Attachments", "ReportFile", "parse_report_option", "sr_as_encapsulated_pdf"]


@dataclass(frozen=True)
class ReportFile:
    """A report file given on the command line, and the study it belongs to (if said)."""

    path: Path
    study_uid: str | None = None


def parse_report_option(value: str, *, option: str) -> ReportFile:
    """``FILE`` or ``STUDY_UID=FILE`` -> ReportFile; UsageError / InputError when wrong."""
    path_text, study = value, None
    if not Path(value).exists() and "=" in value:
        study, path_text = (part.strip() for part in value.split("=", 1))
        if not is_valid_uid(study):
            raise UsageError(
                f"{option} {value!r}: {study!r} is not a Study Instance UID",
                hint=f"use {option} FILE or {option} STUDY_UID=FILE",
            )
    path = Path(path_text)
    if not path.is_file():
        raise InputError(f"{option}: report file not found: {path}", hint="check the path")
    return ReportFile(path, study)


def sr_as_encapsulated_pdf(sr: Dataset, series_number: int = 9004) -> Dataset:
    """An Encapsulated PDF of ``sr``, in its study, that names the SR as its source."""
    # Imported here: fpdf2 (and Pillow under it) load only when a PDF is rendered.
    from dvdexit_cli.dicom.sr_pdf import render_sr_pdf

    title = str(sr.get("SeriesDescription", "")) or "Structured report"
    ds = encapsulated_pdf_bytes(
        render_sr_pdf(sr),
        reference=sr,
        title=f"{title} (rendered from SR)"[:1024],
        series_number=series_number,
    )
    source = Dataset()
    source.ReferencedSOPClassUID = sr.SOPClassUID
    source.ReferencedSOPInstanceUID = sr.SOPInstanceUID
    ds.SourceInstanceSequence = [source]
    return ds


def _paragraphs(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"--report-text {path} is not UTF-8 text", hint="save the report as UTF-8 text"
        ) from exc
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    paragraphs = [" ".join(block.split()) for block in text.split("\n\n")]
    if not any(paragraphs):
        raise InputError(f"--report-text {path} is empty", hint="give a file with the report")
    return paragraphs


@dataclass(frozen=True)
class Attachments:
    """What to add to a send, and where to write it (``folder`` must not exist yet)."""

    folder: Path
    pdf_reports: tuple[ReportFile, ...] = ()
    text_reports: tuple[ReportFile, ...] = ()
    note: str | None = None
    reason: str | None = None
    recipient: str | None = None
    note_as_sr: bool = False
    sr_to_pdf: bool = False
    """Also send each SR (among the inputs, or made here) rendered as an Encapsulated PDF."""

    @classmethod
    def under(cls, parent: Path, **fields: object) -> Attachments:
        """Attachments written into a new, uniquely named folder under ``parent``."""
        return cls(folder=parent / f"attached-{secrets.token_hex(6)}", **fields)  # type: ignore[arg-type]

    @property
    def empty(self) -> bool:
        return not (self.pdf_reports or self.text_reports or self.note_as_sr or self.sr_to_pdf)

    def check(self) -> None:
        """Refuse unusable files before anything is scanned or sent (InputError)."""
        for report in self.pdf_reports:
            try:
                with report.path.open("rb") as fh:
                    head = fh.read(5)
            except OSError as exc:
                raise InputError(f"cannot read {report.path}: {exc.strerror or exc}") from exc
            if head != b"%PDF-":
                raise InputError(
                    f"--report {report.path} is not a PDF file (no %PDF- header)",
                    hint="give a PDF, or a text file with --report-text",
                )
        for report in self.text_reports:
            _paragraphs(report.path)
        if self.note_as_sr and not (self.note or self.reason or self.recipient):
            raise UsageError(
                "--note-as-sr needs --note, --reason or --recipient",
                hint="add the note to send, or drop --note-as-sr",
            )

    def __call__(self, instances: Sequence[Instance]) -> list[Path]:
        """Write the objects for the studies in ``instances``; return the files written.

        Raises UsageError when a report does not say which of several studies it belongs
        to, or names a study the inputs do not hold; nothing is written then.
        """
        first: dict[str, Instance] = {}
        for inst in instances:
            first.setdefault(inst.study_uid, inst)
        jobs: list[tuple[str, str, ReportFile | None]] = []
        for kind, option, reports in (
            ("pdf", "--report", self.pdf_reports),
            ("text", "--report-text", self.text_reports),
        ):
            for given in reports:
                jobs.append((kind, self._study_for(given, first, option), given))
        if self.note_as_sr:
            jobs.extend(("note", study, None) for study in first)
        srs = [i for i in instances if i.sop_class_uid in SR_CLASSES] if self.sr_to_pdf else []
        if not jobs and not srs:
            return []
        try:
            PRIVATE.make_dir(self.folder.parent)
            PRIVATE.mkdir(self.folder)
        except OSError as exc:
            raise InputError(
                f"cannot create {self.folder}: {exc.strerror or exc}",
                hint="check free space and permissions of the data directory",
            ) from exc
        references: dict[str, Dataset] = {}
        made: list[tuple[str, Dataset]] = []
        series: dict[str, int] = {}

        def next_series(study: str) -> int:
            series[study] = series.get(study, 9000) + 1
            return series[study]

        for kind, study, report in jobs:
            if study not in references:
                references[study] = pydicom.dcmread(first[study].path, stop_before_pixels=True)
            reference = references[study]
            if kind == "pdf" and report is not None:
                ds = encapsulated_pdf(
                    report.path,
                    reference=reference,
                    title=report.path.stem[:64] or "Report",
                    series_number=next_series(study),
                )
            elif kind == "text" and report is not None:
                ds = basic_text_sr(
                    _paragraphs(report.path), reference=reference, series_number=next_series(study)
                )
            else:
                ds = transfer_note_sr(
                    reference=reference,
                    note=self.note,
                    reason=self.reason,
                    recipient=self.recipient,
                    series_number=next_series(study),
                )
            made.append((kind, ds))
        if self.sr_to_pdf:
            sources: list[Dataset] = [pydicom.dcmread(i.path) for i in srs]
            sources += [ds for kind, ds in made if kind in ("text", "note")]
            for sr in sources:
                in_series = next_series(str(sr.StudyInstanceUID))
                made.append(("srpdf", sr_as_encapsulated_pdf(sr, in_series)))
        written: list[Path] = []
        try:
            for number, (kind, ds) in enumerate(made, 1):
                target = self.folder / f"{number:03d}-{kind}.dcm"
                with PRIVATE.open_new(target, exclusive=True) as out:
                    ds.save_as(out, enforce_file_format=True)
                written.append(target)
        except OSError as exc:
            raise InputError(
                f"cannot write the report objects into {self.folder}: {exc.strerror or exc}",
                hint="check free space and permissions of the data directory",
            ) from exc
        return written

    @staticmethod
    def _study_for(report: ReportFile, first: dict[str, Instance], option: str) -> str:
        if report.study_uid is not None:
            if report.study_uid not in first:
                raise UsageError(
                    f"{option} names study {report.study_uid}, which the inputs do not hold",
                    hint="check the Study Instance UID with 'dvdexit send ... --dry-run'",
                )
            return report.study_uid
        if len(first) != 1:
            raise UsageError(
                f"{option} {report.path}: the inputs hold {len(first)} studies; say which "
                f"study the report belongs to",
                hint=f"use {option} STUDY_UID=FILE (the studies are listed by "
                "'dvdexit send ... --dry-run')",
            )
        return next(iter(first))
