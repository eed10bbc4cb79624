"""The sender's note for a received study: from a transfer-note SR, or a package manifest.

A sender using ``dvdexit send --note ... --note-as-sr`` puts a Basic Text SR "Transfer
note" in the study (dicom/reports.py). When the receiver stores one, it reads the note,
reason and recipient from it and records them for the study in the journal; status shows
them and the on-complete hook gets them as DVDEXIT_NOTE, DVDEXIT_REASON and
DVDEXIT_RECIPIENT. They are untrusted text typed at the sending site.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom

from dvdexit_cli.dicom.reports import BASIC_TEXT_SR, TransferNote, read_transfer_note
from dvdexit_cli.journal import Journal

__all__ = ["record_note_from_instance"]

log = logging.getLogger(__name__)

#: A transfer note is a few kilobytes; a larger Basic Text SR is a report, not read here.
_MAX_NOTE_FILE = 1024 * 1024


def _read(path: Path) -> TransferNote | None:
    try:
        if path.stat().st_size > _MAX_NOTE_FILE:
            return None
        return read_transfer_note(pydicom.dcmread(path))
    except Exception as exc:  # pydicom raises many types on odd input; a note is optional
        log.info("could not read a transfer note from %s: %s", path.name, exc)
        return None


def record_note_from_instance(
    journal: Journal, *, study_uid: str, sop_class_uid: str, path: Path, sender_ae: str
) -> TransferNote | None:
    """If ``path`` is a transfer-note SR, record its note for ``study_uid`` and return it."""
    if sop_class_uid != BASIC_TEXT_SR:
        return None
    note = _read(path)
    if note is not None:
        journal.set_study_note(
            study_uid,
            note=note.note,
            reason=note.reason,
            recipient=note.recipient,
            source="sr",
            sender_ae=sender_ae,
        )
    return note
