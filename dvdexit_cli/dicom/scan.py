"""Find the instances to send in files, folders and DICOMDIR media.

Every input is untrusted. A file that is not DICOM at all (a viewer, a README, an empty
file) is *skipped* with a reason. A file that is DICOM, or that a DICOMDIR names, but
cannot be sent as it is (truncated, broken header, invalid UID, missing) is *failed*
with a reason: it is part of a study that will not arrive whole, and the caller must say
so. Nothing here stops the scan of the other inputs.
"""

from __future__ import annotations

import os
import stat
import struct
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Literal

import pydicom

from dvdexit_cli.dicom.archives import ArchiveLimits, archive_kind, unpack, unpack_folder
from dvdexit_cli.dicom.digest import (
    FileMeta,
    MalformedFileError,
    NotPart10Error,
    check_structure,
    digest_stream,
    read_file_meta,
)
from dvdexit_cli.dicom.uids import is_valid_uid
from dvdexit_cli.errors import InputError
from dvdexit_cli.fsmode import PRIVATE

__all__ = ["Instance", "Rejected", "ScanResult", "UnsendableFile", "read_instance", "scan"]

_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
_DEFLATED = "1.2.840.10008.1.2.1.99"
_DICOMDIR_REASON = "a DICOMDIR (media index), not an instance"
_HEADER_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "SeriesNumber",
    "InstanceNumber",
]


@dataclass(frozen=True)
class Instance:
    """One sendable DICOM instance: where it is, what it is, and its digest."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax: str
    size: int
    dataset_offset: int
    digest: str
    modality: str = ""
    series_number: int | None = None
    instance_number: int | None = None
    meta_mismatch: str | None = None
    """Set when the File Meta Information disagrees with the dataset; the dataset wins."""


@dataclass(frozen=True)
class Rejected:
    """An input file that will not be sent, and why."""

    path: Path
    reason: str
    disposition: Literal["skipped", "failed"]
    sop_instance_uid: str | None = None


@dataclass
class ScanResult:
    """What a scan found: instances in sending order, and the files left out."""

    instances: list[Instance] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    unpacked: list[Path] = field(default_factory=list)
    """Folders that archives among the inputs were unpacked into."""

    @property
    def total_bytes(self) -> int:
        return sum(i.size for i in self.instances)


class UnsendableFile(Exception):
    """A file that will not be sent; ``disposition`` says whether that is a failure."""

    def __init__(
        self,
        reason: str,
        disposition: Literal["skipped", "failed"],
        sop_instance_uid: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.disposition: Literal["skipped", "failed"] = disposition
        self.sop_instance_uid = sop_instance_uid


def _int_or_none(value: object) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def read_instance(path: Path, *, known_dicom: bool = False) -> Instance:
    """Read one file's header and digest; raise UnsendableFile with the reason it can't be sent.

    ``known_dicom`` marks a file that a DICOMDIR names: if it is not DICOM after all,
    that is a failure of the medium, not a file to skip.
    """
    not_dicom: Literal["skipped", "failed"] = "failed" if known_dicom else "skipped"
    named: str | None = None  # the SOP Instance UID the File Meta names, once known
    try:
        with path.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            try:
                meta = read_file_meta(fh)
            except NotPart10Error as exc:
                if _looks_like_bare_dataset(fh):
                    raise UnsendableFile(_BARE_DATASET_REASON, "failed") from exc
                raise UnsendableFile(str(exc), not_dicom) from exc
            if meta.sop_class_uid == _DICOMDIR_CLASS:
                raise UnsendableFile(_DICOMDIR_REASON, "skipped")
            if is_valid_uid(meta.sop_instance_uid):
                named = meta.sop_instance_uid
            check_structure(fh, meta, size)
            header = _read_header(fh)
            meta_mismatch = _check_identity(meta, header)
            fh.seek(meta.dataset_offset)
            digest = digest_stream(fh, deflated=meta.transfer_syntax == _DEFLATED)
    except MalformedFileError as exc:
        raise UnsendableFile(str(exc), "failed", named) from exc
    except OSError as exc:
        raise UnsendableFile(f"cannot read file: {exc.strerror or exc}", "failed", named) from exc
    return Instance(
        path=path,
        sop_class_uid=str(header.SOPClassUID),
        sop_instance_uid=str(header.SOPInstanceUID),
        study_uid=str(header.StudyInstanceUID),
        series_uid=str(header.SeriesInstanceUID),
        transfer_syntax=meta.transfer_syntax,
        size=size,
        dataset_offset=meta.dataset_offset,
        digest=digest,
        modality=str(header.get("Modality", "") or ""),
        series_number=_int_or_none(header.get("SeriesNumber")),
        instance_number=_int_or_none(header.get("InstanceNumber")),
        meta_mismatch=meta_mismatch,
    )


_BARE_DATASET_REASON = (
    "a DICOM dataset without the File Meta Information (no Part 10 header): its transfer "
    "syntax is unknown, so it is not sent; rewrite it as a Part 10 file (e.g. DCMTK "
    "'dcmconv +F in out') and send that"
)


def _looks_like_bare_dataset(fh: BinaryIO) -> bool:
    """Whether a file without 'DICM' starts like a little endian dataset (group 0008 first).

    A stray byte or three before it (seen in the wild, and in pydicom's no_meta.dcm) is
    tolerated: the file is still reported as a dataset without File Meta.
    """
    fh.seek(0)
    head = fh.read(12)
    for offset in range(4):
        chunk = head[offset : offset + 8]
        if len(chunk) < 8:
            return False
        group, element = struct.unpack("<HH", chunk[:4])
        if group != 0x0008 or element > 0x00FF:
            continue
        vr = chunk[4:6]
        if vr.isalpha() and vr.isupper():  # explicit VR
            return True
        (length,) = struct.unpack("<I", chunk[4:8])  # implicit VR: a short value follows
        if length < 1024:
            return True
    return False


def _read_header(fh: BinaryIO) -> pydicom.Dataset:
    try:
        fh.seek(0)
        return pydicom.dcmread(
            fh,
            stop_before_pixels=True,
            specific_tags=_HEADER_TAGS,
        )
    except Exception as exc:  # pydicom raises many kinds on damaged input; all mean "bad file"
        raise MalformedFileError(f"cannot parse the DICOM header: {exc}") from exc


def _check_identity(meta: FileMeta, header: pydicom.Dataset) -> str | None:
    """Raise for missing or invalid UIDs; describe a File Meta / dataset disagreement."""
    for name in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID"):
        value = header.get(name)
        if value is None:
            raise MalformedFileError(f"the dataset has no {name}")
        if not is_valid_uid(str(value)):
            raise MalformedFileError(f"{name} is not a valid UID")
    for name, value in (
        ("Transfer Syntax UID", meta.transfer_syntax),
        ("Media Storage SOP Instance UID", meta.sop_instance_uid),
        ("Media Storage SOP Class UID", meta.sop_class_uid),
    ):
        if not is_valid_uid(value):
            raise MalformedFileError(f"File Meta {name} is not a valid UID")
    differs = [
        label
        for label, in_meta, in_dataset in (
            ("SOP Instance UID", meta.sop_instance_uid, str(header.SOPInstanceUID)),
            ("SOP Class UID", meta.sop_class_uid, str(header.SOPClassUID)),
        )
        if in_meta != in_dataset
    ]
    if differs:
        return f"the File Meta Information names another {' and '.join(differs)} than the dataset"
    return None


_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _special_reason(mode: int) -> str:
    kind = next((name for test, name in _SPECIAL_KINDS if test(mode)), "not a file nor a folder")
    return f"not a regular file ({kind}); not read"


def _inside(real: Path, roots: Sequence[Path]) -> bool:
    return any(real.is_relative_to(root) for root in roots)


def _look(path: Path, roots: Sequence[Path]) -> tuple[Literal["file", "dir"], Path] | Rejected:
    """What ``path`` is (a file or a folder, and a folder's real path), found without opening it.

    A link is followed only when its target lies inside ``roots`` (the real paths of the
    inputs). Any other link fails: it may hold part of a study, and reading beyond what
    the user named could send a file nobody meant to send. A FIFO, socket or device is
    skipped: opening one can block forever and none holds an instance.
    """
    try:
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            shown = os.readlink(path)
            try:
                real = Path(os.path.realpath(path, strict=True))
            except OSError:
                return Rejected(
                    path, f"a link to {shown}, which does not exist or loops; not read", "failed"
                )
            if not _inside(real, roots):
                return Rejected(
                    path,
                    f"a link to {real}, outside the inputs given; not read (to send it, give "
                    "its target as an input too)",
                    "failed",
                )
            info = os.stat(real)
        elif stat.S_ISDIR(info.st_mode):
            real = path.resolve()
        else:
            real = path  # not needed for a file: spare the resolve
    except OSError as exc:
        return Rejected(path, f"cannot read: {exc.strerror or exc}", "failed")
    if stat.S_ISDIR(info.st_mode):
        return "dir", real
    if stat.S_ISREG(info.st_mode):
        return "file", real
    return Rejected(path, _special_reason(info.st_mode), "skipped")


def _walk(root: Path, roots: Sequence[Path], walked: set[Path]) -> Iterator[Path | Rejected]:
    """The files under ``root`` (each folder's files, then its subfolders, by name).

    ``walked`` holds the real folders entered so far: a link to one of them (a loop,
    or a folder read already) is skipped instead of being read again.
    """
    walked.add(root.resolve())
    try:
        names = sorted(os.listdir(root))
    except OSError as exc:
        yield Rejected(root, f"cannot list the folder: {exc.strerror or exc}", "failed")
        return
    folders: list[Path] = []
    for name in names:
        path = root / name
        found = _look(path, roots)
        if isinstance(found, Rejected):
            yield found
        elif found[0] == "file":
            yield path
        elif found[1] not in walked:
            folders.append(path)
        else:
            yield Rejected(path, f"a link to {found[1]}, a folder already read", "skipped")
    for folder in folders:
        if folder.resolve() in walked:  # reached meanwhile through a link
            continue
        yield from _walk(folder, roots, walked)


def _resolve_case_insensitive(root: Path, parts: Sequence[str]) -> Path | None:
    """Find ``root/parts`` even when the medium's names changed case (ISO 9660 mounts)."""
    current = root
    for part in parts:
        candidate = current / part
        if candidate.exists():
            current = candidate
            continue
        try:
            matches = [p for p in current.iterdir() if p.name.upper() == part.upper()]
        except OSError:
            return None
        if len(matches) != 1:
            return None
        current = matches[0]
    return current


class _NotAnIndex(Exception):
    """A file named DICOMDIR that holds no directory records."""


_NOT_AN_INDEX = (
    "named DICOMDIR but not a media index (no directory records); the folder is scanned "
    "as a plain folder"
)


def _dicomdir_references(
    dicomdir: Path, roots: Sequence[Path]
) -> tuple[list[Path], list[Rejected]]:
    """The files a DICOMDIR names, resolved inside its medium; refusals for the others.

    A file ID that is a link is followed by the rule of ``_look`` (inside ``roots``
    only); a named file that is not a regular file fails, as the medium promised one.
    """
    root = dicomdir.parent
    try:
        ds = pydicom.dcmread(dicomdir)
    except Exception as exc:  # as above: a damaged DICOMDIR is a failure of the medium
        return [], [Rejected(dicomdir, f"cannot read DICOMDIR: {exc}", "failed")]
    files: list[Path] = []
    rejected: list[Rejected] = []
    if "DirectoryRecordSequence" not in ds:
        raise _NotAnIndex
    for record in ds.get("DirectoryRecordSequence", []):
        file_id = record.get("ReferencedFileID")
        if file_id is None:
            continue
        parts = [file_id] if isinstance(file_id, str) else [str(p) for p in file_id]
        uid = record.get("ReferencedSOPInstanceUIDInFile")
        uid_text = str(uid) if uid is not None else None
        shown = Path(*parts) if parts else Path("?")
        if any(p in ("", ".", "..") or "/" in p or "\\" in p for p in parts) or not parts:
            rejected.append(
                Rejected(
                    root / shown.name,
                    f"DICOMDIR file ID {'/'.join(parts)!r} points outside the medium",
                    "failed",
                    uid_text,
                )
            )
            continue
        found = _resolve_case_insensitive(root, parts)
        if found is None:
            rejected.append(
                Rejected(root / shown, "file named by the DICOMDIR is missing", "failed", uid_text)
            )
            continue
        looked = _look(found, roots)
        if isinstance(looked, Rejected):
            rejected.append(replace(looked, disposition="failed", sop_instance_uid=uid_text))
            continue
        if looked[0] != "file":
            rejected.append(
                Rejected(found, "named by the DICOMDIR but a folder", "failed", uid_text)
            )
            continue
        if not _inside(found.resolve(), roots):  # through a linked folder on its way
            rejected.append(
                Rejected(
                    found,
                    f"reached through a link to {found.resolve().parent}, outside the inputs "
                    "given; not read (to send it, give that folder as an input too)",
                    "failed",
                    uid_text,
                )
            )
            continue
        files.append(found)
    return files, rejected


def _candidates(paths: Iterable[Path]) -> Iterator[tuple[Path, bool] | Rejected]:
    """Yield (file, named_by_dicomdir) pairs and refusals, in a stable order.

    Only regular files are yielded, and links only when they lead inside ``paths``.
    """
    paths = list(paths)
    # A path the user named is taken as it resolves (a link there is the user's choice).
    roots = [path.resolve() for path in paths]
    seen: set[Path] = set()
    walked: set[Path] = set()
    refused: set[Path] = set()  # refused through a DICOMDIR: not again by the walk
    for path in paths:
        found = _look(path.resolve(), roots)
        if isinstance(found, Rejected):
            yield replace(found, path=path)
            continue
        if found[0] == "dir":
            dicomdir = _resolve_case_insensitive(path, ["DICOMDIR"])
            named: set[Path] = set()
            looked = None if dicomdir is None else _look(dicomdir, roots)
            if isinstance(looked, Rejected):  # e.g. a link out of the inputs: no index
                yield looked
                refused.add(looked.path)
                dicomdir = None
            elif dicomdir is not None and looked is not None and looked[0] == "file":
                try:
                    files, refusals = _dicomdir_references(dicomdir, roots)
                except _NotAnIndex:
                    yield Rejected(dicomdir, _NOT_AN_INDEX, "failed")
                    seen.add(dicomdir.resolve())
                    dicomdir, files, refusals = None, [], []
                yield from refusals
                refused.update(r.path for r in refusals)
                for f in files:
                    key = f.resolve()
                    named.add(key)
                    if key not in seen:
                        seen.add(key)
                        yield f, True
                if dicomdir is not None:
                    seen.add(dicomdir.resolve())
            for entry in _walk(path, roots, walked):
                if isinstance(entry, Rejected):
                    if entry.path in refused:
                        continue
                    if dicomdir is not None and entry.disposition == "failed":
                        # The DICOMDIR says what the medium holds: the rest is extras.
                        entry = replace(
                            entry,
                            reason=f"not named by the medium's DICOMDIR; {entry.reason}",
                            disposition="skipped",
                        )
                    yield entry
                    continue
                f = entry
                key = f.resolve()
                if key in seen:
                    continue
                seen.add(key)
                if dicomdir is not None and key not in named:
                    yield Rejected(f, "not named by the medium's DICOMDIR", "skipped")
                else:
                    yield f, False
        else:
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                yield path, False


def _sort_key(i: Instance) -> tuple[str, int, str, int, str]:
    return (
        i.study_uid,
        i.series_number if i.series_number is not None else 1 << 30,
        i.series_uid,
        i.instance_number if i.instance_number is not None else 1 << 30,
        str(i.path),
    )


_MAX_ARCHIVE_DEPTH = 3


def scan(
    paths: Sequence[Path],
    *,
    deduplicate: bool = True,
    unpack_dir: Path | None = None,
    archive_limits: ArchiveLimits | None = None,
) -> ScanResult:
    """Scan ``paths`` (files, folders, DICOMDIR media, zip files, ISO images) for instances.

    Raises InputError when a path does not exist; everything else becomes a per-file
    refusal in the result. Instances come back grouped by study, in series and instance
    order. With ``deduplicate`` (for sending), two files with the same SOP Instance UID
    are sent once when their content is identical, and both fail as a conflict when it
    differs; without it (for verifying), every file is reported on its own.

    Archives (found as inputs or inside folders) are unpacked member by member under
    ``unpack_dir`` (a temporary folder when None) and scanned like a folder there; the
    folders made are listed in ``ScanResult.unpacked``. A member that would expand past
    ``archive_limits`` (the documented defaults when None) fails on its own.
    """
    for path in paths:
        if not path.exists():
            raise InputError(f"input path does not exist: {path}", hint="check the path")
    result = ScanResult()
    found: list[Instance] = []
    roots: list[Path] = list(paths)
    origins: dict[Path, Path] = {}
    for depth in range(_MAX_ARCHIVE_DEPTH + 1):
        archives: list[Path] = []
        for item in _candidates(roots):
            if isinstance(item, Rejected):
                result.rejected.append(item)
                continue
            path, known = item
            if known is False and path.name.upper() == "DICOMDIR":
                result.rejected.append(Rejected(path, _DICOMDIR_REASON, "skipped"))
                continue
            if not known and archive_kind(path) is not None:
                archives.append(path)
                continue
            try:
                found.append(read_instance(path, known_dicom=known))
            except UnsendableFile as exc:
                result.rejected.append(
                    Rejected(path, exc.reason, exc.disposition, exc.sop_instance_uid)
                )
        roots = []
        for archive in archives:
            if depth == _MAX_ARCHIVE_DEPTH:
                result.rejected.append(
                    Rejected(archive, "archive nested too deeply; not unpacked", "failed")
                )
                continue
            if unpack_dir is None:
                unpack_dir = Path(tempfile.mkdtemp(prefix="dvdexit-unpacked-"))
            PRIVATE.make_dir(unpack_dir)
            PRIVATE.restrict(unpack_dir)  # an older version's unpacked/ was 0755
            target = unpack_folder(unpack_dir, archive)
            kind = archive_kind(archive)
            assert kind is not None
            for problem in unpack(archive, kind, target, limits=archive_limits):
                result.rejected.append(Rejected(problem.path, problem.reason, "failed"))
            result.unpacked.append(target)
            origins[target] = archive
            roots.append(target)
        if not roots:
            break
    if result.unpacked:
        result.rejected = [_shown_in_archive(r, origins) for r in result.rejected]
    if deduplicate:
        found = _deduplicate(found, result.rejected)
    result.instances = sorted(found, key=_sort_key)
    return result


def _shown_in_archive(rejected: Rejected, origins: dict[Path, Path]) -> Rejected:
    """Name a refused file of an unpacked archive as ``ARCHIVE!/MEMBER`` for the user."""
    for target, archive in origins.items():
        if rejected.path.is_relative_to(target):
            member = rejected.path.relative_to(target).as_posix()
            return replace(rejected, path=Path(f"{archive}!/{member}"))
    return rejected


def _deduplicate(found: list[Instance], rejected: list[Rejected]) -> list[Instance]:
    by_uid: dict[str, Instance] = {}
    conflicted: set[str] = set()
    for instance in found:
        first = by_uid.get(instance.sop_instance_uid)
        if first is None:
            by_uid[instance.sop_instance_uid] = instance
        elif first.digest == instance.digest:
            rejected.append(
                Rejected(
                    instance.path,
                    f"same instance as {first.path}",
                    "skipped",
                    first.sop_instance_uid,
                )
            )
        else:
            conflicted.add(instance.sop_instance_uid)
            rejected.append(
                Rejected(
                    instance.path,
                    f"same SOP Instance UID as {first.path} but different content",
                    "failed",
                    instance.sop_instance_uid,
                )
            )
    for uid in conflicted:
        first = by_uid.pop(uid)
        rejected.append(
            Rejected(
                first.path,
                "another input has the same SOP Instance UID but different content",
                "failed",
                uid,
            )
        )
    return list(by_uid.values())
