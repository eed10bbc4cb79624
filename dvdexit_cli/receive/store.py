"""The durable instance store: ``STORE/<study>/<series>/<sop>.dcm``, written atomically.

An instance is written to a temporary file in its final folder (our File Meta
Information, then the received dataset bytes unchanged), fsynced, renamed into place,
and the folder entry fsynced; only then is it reported stored. Every path part is a UID
that passed the UID check, so nothing a peer sends can name a path outside the store.

Duplicates: the same SOP Instance UID with the same dataset digest is stored once and
reported ``duplicate``; with different content the newcomer goes to ``conflicts/`` and
is reported ``conflict``; the first instance is never overwritten.

A caller that journals what it stored passes ``record``: it is called with the result
while the store still holds its lock, and if it raises, an instance this call placed is
removed again. So an instance is in the store and in the journal, or in neither (a
``kill -9`` between the two leaves a file that was never answered as stored: the
sender's resend is then journaled as stored, see ``Journal.record_received``).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import string
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatch
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, DeflatedExplicitVRLittleEndian

from dvdexit_cli.dicom.digest import (
    CHUNK_SIZE,
    FileMeta,
    MalformedFileError,
    NotPart10Error,
    check_structure,
    dataset_digest,
    digest_stream,
    read_file_meta,
)
from dvdexit_cli.dicom.uids import is_valid_uid
from dvdexit_cli.fsmode import PRIVATE, Access

__all__ = [
    "DEFAULT_LAYOUT",
    "IMPLEMENTATION_VERSION",
    "SPOOL_DIR",
    "TEMPORARY_GLOB",
    "InstanceStore",
    "PutResult",
    "RefusedInstance",
    "StoreWriteError",
    "is_store_temporary",
    "validate_layout",
]

IMPLEMENTATION_VERSION = "DVDEXIT_010"
_HEADER_TAGS = [
    "SOPInstanceUID",
    "SOPClassUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "StudyDate",
]
#: The default ``--layout``; fields: study, series, sop (UIDs), study_date, received_date.
DEFAULT_LAYOUT = "{study}/{series}/{sop}.dcm"
_LAYOUT_FIELDS = frozenset({"study", "series", "sop", "study_date", "received_date"})
_LAYOUT_TEXT = re.compile(r"^[A-Za-z0-9._/-]*$")
_DATE = re.compile(r"^[0-9]{8}$")

#: Folder in the store where pynetdicom spools incoming datasets (same filesystem as
#: the store, so the free-disk floor covers it and /tmp in RAM does not hold 2 GB).
SPOOL_DIR = ".incoming"
#: The store's other temporaries: an instance is written as ``.UID.RANDOM.tmp`` beside
#: its final name, then renamed (below).
TEMPORARY_GLOB = ".*.tmp"


def is_store_temporary(path: Path) -> bool:
    """Whether ``path`` is one of a store's own temporaries, never an instance.

    That is a dot-prefixed file in the spool folder, or a dot-prefixed ``.tmp`` file
    in a folder that has the spool folder above it (a store: its layout never gives an
    instance a dot-prefixed name). The same name elsewhere is a user's file.
    """
    if not path.name.startswith("."):
        return False
    if path.parent.name == SPOOL_DIR:
        return True
    return fnmatch(path.name, TEMPORARY_GLOB) and any(
        (folder / SPOOL_DIR).is_dir() for folder in path.parents
    )


def validate_layout(layout: str) -> str:
    """Check a path template; ValueError saying what is wrong.

    Only the UID and date fields may appear, literal text is limited to letters, digits,
    ``.``, ``_``, ``-`` and ``/``, and the file name must hold ``{sop}`` (one file per
    instance), so no attribute a peer chooses freely can shape a path.
    """
    try:
        parts = list(string.Formatter().parse(layout))
    except ValueError as exc:
        raise ValueError(f"malformed template: {exc}") from exc
    for literal, field, spec, conversion in parts:
        if not _LAYOUT_TEXT.match(literal):
            raise ValueError(
                f"only letters, digits, '.', '_', '-' and '/' may be literal: {literal!r}"
            )
        if field is None:
            continue
        if field not in _LAYOUT_FIELDS or spec or conversion:
            raise ValueError(
                f"{{{field}}} is not allowed; fields: "
                + ", ".join(f"{{{f}}}" for f in sorted(_LAYOUT_FIELDS))
            )
    components = layout.split("/")
    if layout.startswith("/") or any(c in ("", ".", "..") for c in components):
        raise ValueError("the template must be a relative path without empty, '.' or '..' parts")
    if "{sop}" not in components[-1]:
        raise ValueError("the file name must contain {sop}")
    if components[0].startswith(".") or components[0] == "conflicts":
        raise ValueError("the first folder may not start with '.' or be 'conflicts'")
    return layout


class RefusedInstance(Exception):
    """The incoming instance cannot be stored as it is (bad UID, unparsable, mismatch)."""


class StoreWriteError(Exception):
    """The store could not write or sync an instance (disk full, I/O error)."""


@dataclass(frozen=True)
class PutResult:
    outcome: str  # stored, duplicate, conflict
    path: Path
    digest: str
    size: int
    study_uid: str
    series_uid: str


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    if vr == b"OB":
        return head + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def file_meta_bytes(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, calling_ae: str
) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information (PS3.10 7.1), explicit VR LE.

    Encoded directly: pydicom's writer costs more than the rest of a small instance's
    store. The values are UIDs already checked and an AE title (at most 16 characters).
    """

    def uid(value: str) -> bytes:
        raw = value.encode("ascii")
        return raw + b"\x00" if len(raw) % 2 else raw

    def text(value: str) -> bytes:
        raw = value.encode("ascii", "replace")
        return raw + b" " if len(raw) % 2 else raw

    body = b"".join(
        [
            _element(0x00020001, b"OB", b"\x00\x01"),
            _element(0x00020002, b"UI", uid(sop_class_uid)),
            _element(0x00020003, b"UI", uid(sop_instance_uid)),
            _element(0x00020010, b"UI", uid(transfer_syntax)),
            _element(0x00020012, b"UI", uid(PYDICOM_IMPLEMENTATION_UID)),
            _element(0x00020013, b"SH", text(IMPLEMENTATION_VERSION)),
            *([_element(0x00020016, b"AE", text(calling_ae))] if calling_ae else []),
        ]
    )
    group_length = _element(0x00020000, b"UL", struct.pack("<I", len(body)))
    return b"\x00" * 128 + b"DICM" + group_length + body


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class InstanceStore:
    """Stores received instances durably under ``root``."""

    def __init__(
        self,
        root: Path,
        *,
        fsync: bool = True,
        layout: str = DEFAULT_LAYOUT,
        access: Access = PRIVATE,
    ) -> None:
        self.root = root
        self.fsync = fsync
        self.layout = validate_layout(layout)
        self.access = access
        """Modes of what the store creates: owner-only unless a group is configured."""
        self._lock = threading.Lock()

    def make_root(self) -> None:
        """Create the root (with its parents) or give an existing one the store's mode.

        An older version left the root readable by every user; closing the root closes
        everything below it. Raises OSError.
        """
        self.access.make_dir(self.root)
        self.access.restrict(self.root)

    def path_for(
        self,
        study_uid: str,
        series_uid: str,
        sop_instance_uid: str,
        *,
        study_date: str = "",
        received_date: str = "",
    ) -> Path:
        for uid in (study_uid, series_uid, sop_instance_uid):
            if not is_valid_uid(uid):
                raise RefusedInstance(f"{uid!r} is not a valid UID")
        fields = {
            "study": study_uid,
            "series": series_uid,
            "sop": sop_instance_uid,
            "study_date": study_date if _DATE.match(study_date) else "nodate",
            "received_date": received_date or datetime.now(UTC).strftime("%Y%m%d"),
        }
        return self.root / self.layout.format(**fields)

    def study_folder(self, path: Path, study_uid: str) -> Path:
        """The folder holding a study: the first below the root named with its UID."""
        parts = path.relative_to(self.root).parts[:-1]
        for index, part in enumerate(parts):
            if study_uid in part:
                return self.root.joinpath(*parts[: index + 1])
        return path.parent

    def put(
        self,
        source: Path,
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax: str,
        calling_ae: str,
        record: Callable[[PutResult], None] | None = None,
    ) -> PutResult:
        """Store the received dataset in ``source`` (a Part 10 file pynetdicom wrote).

        Raises RefusedInstance for content that must not be stored (invalid UIDs, a
        dataset cut short or unparsable), StoreWriteError when the disk fails (the caller
        answers "out of resources"). ``record`` (see the module docstring) may raise
        anything; the instance is then not kept, and the exception propagates.
        """
        try:
            return self._put(
                source, sop_class_uid, sop_instance_uid, transfer_syntax, calling_ae, record
            )
        except OSError as exc:
            raise StoreWriteError(f"could not store: {exc.strerror or exc}") from exc

    def _put(
        self,
        source: Path,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax: str,
        calling_ae: str,
        record: Callable[[PutResult], None] | None,
    ) -> PutResult:
        for name, uid in (
            ("Affected SOP Instance UID", sop_instance_uid),
            ("Affected SOP Class UID", sop_class_uid),
            ("transfer syntax", transfer_syntax),
        ):
            if not is_valid_uid(uid):
                raise RefusedInstance(f"{name} is not a valid UID")
        with source.open("rb") as src:
            try:
                meta = read_file_meta(src)
            except (NotPart10Error, MalformedFileError) as exc:
                raise RefusedInstance(f"received data could not be framed: {exc}") from exc
            offset = meta.dataset_offset
            self._check_whole(src, meta)
            header = self._header(src)
            dataset_sop = str(header.get("SOPInstanceUID", ""))
            if dataset_sop != sop_instance_uid:
                raise RefusedInstance(
                    "the dataset's SOP Instance UID differs from the C-STORE request's"
                )
            study = str(header.get("StudyInstanceUID", ""))
            series = str(header.get("SeriesInstanceUID", ""))
            final = self.path_for(
                study, series, sop_instance_uid, study_date=str(header.get("StudyDate", "") or "")
            )
            self._ensure_dir(final.parent)
            tmp = final.parent / f".{sop_instance_uid}.{secrets.token_hex(4)}.tmp"
            try:
                src.seek(offset)
                digest, size = self._write(
                    tmp, src, sop_class_uid, sop_instance_uid, transfer_syntax, calling_ae
                )
                return self._commit(
                    tmp, final, digest, size, study, series, sop_instance_uid, record
                )
            finally:
                tmp.unlink(missing_ok=True)

    def _ensure_dir(self, folder: Path) -> None:
        """Create ``folder`` below the root, syncing each parent whose entries changed."""
        if folder.is_dir():
            return
        self._ensure_dir(folder.parent)
        try:
            self.access.mkdir(folder)
        except FileExistsError:
            return  # another association created it meanwhile
        if self.fsync:
            _fsync_dir(folder.parent)

    @staticmethod
    def _check_whole(src: BinaryIO, meta: FileMeta) -> None:
        """Refuse a dataset cut short: the sender's own structure walk (dicom/digest.py).

        An element whose length runs past the end of what arrived makes an instance
        that ``verify`` calls invalid and that can never be sent onward.
        """
        size = os.fstat(src.fileno()).st_size
        try:
            if meta.transfer_syntax == DeflatedExplicitVRLittleEndian:
                src.seek(meta.dataset_offset)
                digest_stream(src, deflated=True)
            else:
                check_structure(src, meta, size)
        except MalformedFileError as exc:
            why = str(exc)  # the walk speaks of a file; here it is what arrived
            raise RefusedInstance(
                "dataset " + why.removeprefix("file ")
                if why.startswith("file is ")
                else f"dataset cannot be stored: {why}"
            ) from exc

    @staticmethod
    def _header(src: BinaryIO) -> pydicom.Dataset:
        src.seek(0)
        try:
            return pydicom.dcmread(src, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        except Exception as exc:  # pydicom raises many types on garbage; all mean "refuse"
            raise RefusedInstance(f"received dataset cannot be parsed: {exc}") from exc

    def _write(
        self,
        tmp: Path,
        src: BinaryIO,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax: str,
        calling_ae: str,
    ) -> tuple[str, int]:
        meta = file_meta_bytes(sop_class_uid, sop_instance_uid, transfer_syntax, calling_ae)
        sha = hashlib.sha256()
        with self.access.open_new(tmp, exclusive=True) as out:
            out.write(meta)
            while chunk := src.read(CHUNK_SIZE):
                sha.update(chunk)
                out.write(chunk)
            out.flush()
            if self.fsync:
                os.fsync(out.fileno())
            size = out.tell()
        return sha.hexdigest(), size

    def _commit(
        self,
        tmp: Path,
        final: Path,
        digest: str,
        size: int,
        study: str,
        series: str,
        sop: str,
        record: Callable[[PutResult], None] | None,
    ) -> PutResult:
        with self._lock:
            if final.exists():
                _, existing = dataset_digest(final)
                if existing == digest:
                    # Not placed by this call: whoever placed it journaled it (or, cut off
                    # before it could, never answered success; record() sees to that).
                    return _recorded(
                        PutResult("duplicate", final, digest, size, study, series),
                        record,
                        placed=False,
                    )
                conflicts = self.root / "conflicts"
                if not conflicts.is_dir():
                    self.access.make_dir(conflicts)
                aside = conflicts / f"{sop}.{digest[:16]}.dcm"
                placed = not aside.exists()  # the same conflict again replaces its copy
                os.replace(tmp, aside)
                if self.fsync:
                    _fsync_dir(conflicts)
                return _recorded(
                    PutResult("conflict", aside, digest, size, study, series),
                    record,
                    placed=placed,
                )
            os.replace(tmp, final)
            if self.fsync:
                _fsync_dir(final.parent)
            return _recorded(
                PutResult("stored", final, digest, size, study, series), record, placed=True
            )


def _recorded(
    result: PutResult, record: Callable[[PutResult], None] | None, *, placed: bool
) -> PutResult:
    """Let the caller journal ``result``; if it cannot, remove what this put placed."""
    if record is None:
        return result
    try:
        record(result)
    except BaseException:
        if placed:
            result.path.unlink(missing_ok=True)
        raise
    return result
