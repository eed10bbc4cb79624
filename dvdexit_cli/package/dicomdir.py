"""Build a media tree and its DICOMDIR in one pass, in time linear in the instances.

pydicom's ``FileSet`` keeps its record tree as lists and, for every instance added, looks
up each level's record by recomputing every sibling's key: quadratic in the instances
per series (1,000 instances: ~20 s). Here records are grouped with dictionaries, file IDs
are the ones ``FileSet`` would choose (``PT000000/ST000000/SE000000/IM000000``, prefix
per record type, index among siblings, in input order) and the DICOMDIR is encoded once,
its offsets computed from the encoded byte positions (PS3.10 section 7, PS3.3 Annex F).

The record contents come from pydicom's public ``DIRECTORY_RECORDERS`` (the keys each
record type requires), so a DICOMDIR written here equals the one ``FileSet`` writes.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO

# The SOP class -> record type tables and file ID prefixes are private in pydicom 3.0
# (pinned <3.1); they are PS3.3 Table F.4-1 and FileSet's naming, not worth copying.
from pydicom.fileset import (
    _PREFIXES,
    DIRECTORY_RECORDERS,
    _four_level_record_type,
    _single_level_record_type,
)
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, MediaStorageDirectoryStorage, generate_uid

__all__ = ["DicomdirError", "MediaFile", "MediaPlan", "plan_media", "write_dicomdir"]

_NEXT = Tag(0x0004, 0x1400)
_LOWER = Tag(0x0004, 0x1420)
_MAX_INDEX = 10**6  # six decimal digits after a two-letter prefix


class DicomdirError(Exception):
    """An instance cannot be indexed (a key its directory record requires is missing)."""

    def __init__(self, message: str, source: Path | None = None) -> None:
        super().__init__(message)
        self.source = source
        """The file that cannot be indexed, when one file is to blame."""


@dataclass
class _Node:
    record: Dataset
    component: str
    children: dict[str, _Node] = field(default_factory=dict)
    offset: int = 0
    encoded: bytes = b""
    next_at: int = 0
    lower_at: int = 0


@dataclass(frozen=True)
class MediaFile:
    """Where one source file goes in the media tree."""

    source: Path
    file_id: str
    """POSIX path relative to the media root, e.g. ``PT000000/ST000000/SE000000/IM000000``."""


@dataclass
class MediaPlan:
    """The files of a media tree, in DICOMDIR order, and the DICOMDIR's record tree."""

    files: list[MediaFile]
    roots: list[_Node]


def _record_types(ds: Dataset) -> list[str]:
    """The instance's record types, from the highest level down to its leaf."""
    single = _single_level_record_type(ds)
    if single != "PATIENT":
        return [single]
    return ["PATIENT", "STUDY", "SERIES", _four_level_record_type(ds)]


def _record(record_type: str, ds: Dataset, path: Path) -> Dataset:
    try:
        record = DIRECTORY_RECORDERS[record_type](ds)
    except (ValueError, KeyError, AttributeError) as exc:
        raise DicomdirError(
            f"{path} cannot be indexed in a DICOMDIR ({record_type} record): {exc}", path
        ) from exc
    record.OffsetOfTheNextDirectoryRecord = 0
    record.RecordInUseFlag = 0xFFFF
    record.OffsetOfReferencedLowerLevelDirectoryEntity = 0
    record.DirectoryRecordType = record_type
    if "SpecificCharacterSet" in ds:
        record.SpecificCharacterSet = ds.SpecificCharacterSet
    if record_type == "SR DOCUMENT" and "ContentSequence" in record:
        _title_modifiers_only(record)
    if record_type not in ("PATIENT", "STUDY", "SERIES"):
        record.ReferencedSOPClassUIDInFile = ds.SOPClassUID
        record.ReferencedSOPInstanceUIDInFile = ds.SOPInstanceUID
        record.ReferencedTransferSyntaxUIDInFile = ds.file_meta.TransferSyntaxUID
    return record


def _title_modifiers_only(record: Dataset) -> None:
    """Keep only the document title modifiers in an SR DOCUMENT record's Content Sequence.

    PS3.3 F.5.18: the record's Content Sequence (1C) holds the HAS CONCEPT MOD items
    only. pydicom's recorder copies the whole document content, which dciodvfy rejects
    ("Unrecognized enumerated value <CONTAINS>") and which would put the report's text
    into the index.
    """
    modifiers = [
        item for item in record.ContentSequence if item.get("RelationshipType") == "HAS CONCEPT MOD"
    ]
    if modifiers:
        record.ContentSequence = modifiers
    else:
        del record.ContentSequence


def _key(record_type: str, ds: Dataset) -> str:
    # The keys FileSet uses, read from the instance: unique per level within the parent
    # (PS3.3 F.5). Only the first instance of a patient, study or series builds its record.
    if record_type == "PATIENT":
        return str(ds.get("PatientID", ""))
    if record_type == "STUDY":
        return str(ds.get("StudyInstanceUID", ""))
    if record_type == "SERIES":
        return str(ds.get("SeriesInstanceUID", ""))
    return str(ds.SOPInstanceUID)


def _component(record_type: str, index: int) -> str:
    if index >= _MAX_INDEX:
        raise DicomdirError("more than 1,000,000 records in one folder of the media tree")
    return f"{_PREFIXES[record_type]}{index:06d}"


def plan_media(sources: Sequence[Path]) -> MediaPlan:
    """Read the header of each file (never its pixel data) and place it in the tree.

    Raises DicomdirError when a file lacks a key its directory records require, or two
    files share a SOP Instance UID.
    """
    roots: dict[str, _Node] = {}
    files: dict[str, MediaFile] = {}
    for source in sources:
        ds = pydicom.dcmread(source, stop_before_pixels=True)
        level = roots
        parts: list[str] = []
        leaf: _Node | None = None
        types = _record_types(ds)
        for depth, record_type in enumerate(types):
            key = _key(record_type, ds)
            node = level.get(key)
            if node is None:
                record = _record(record_type, ds, source)
                node = _Node(record, _component(record_type, len(level)))
                level[key] = node
            elif depth == len(types) - 1 or node.record.DirectoryRecordType != record_type:
                raise DicomdirError(f"two files share the SOP Instance UID {key}")
            parts.append(node.component)
            level = node.children
            leaf = node
        assert leaf is not None
        file_id = "/".join(parts)
        leaf.record.ReferencedFileID = parts
        files[file_id] = MediaFile(source, file_id)
    ordered = [files["/".join(p)] for p in _leaf_paths(list(roots.values()), [])]
    return MediaPlan(ordered, list(roots.values()))


def _leaf_paths(nodes: list[_Node], prefix: list[str]) -> list[list[str]]:
    out: list[list[str]] = []
    for node in nodes:
        path = [*prefix, node.component]
        if node.children:
            out.extend(_leaf_paths(list(node.children.values()), path))
        else:
            out.append(path)
    return out


def _encode(node: _Node) -> None:
    """Encode the record (Explicit VR Little Endian) and note where its offsets go."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    encoding = node.record.get("SpecificCharacterSet", "ISO_IR 6")
    for tag in sorted(node.record.keys()):
        # An UL element's value starts 8 bytes after its tag in Explicit VR.
        if tag == _NEXT:
            node.next_at = fp.tell() + 8
        elif tag == _LOWER:
            node.lower_at = fp.tell() + 8
        write_data_element(fp, node.record[tag], encoding)
    node.encoded = fp.getvalue()


def _walk(nodes: list[_Node]) -> list[_Node]:
    out: list[_Node] = []
    stack = list(reversed(nodes))
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(reversed(list(node.children.values())))
    return out


def _item(node: _Node) -> bytes:
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(node.encoded)) + node.encoded


def write_dicomdir(plan: MediaPlan, target: Path) -> None:
    """Write the DICOMDIR of ``plan`` at ``target``.

    Offsets (0004,1200), (0004,1202), (0004,1400) and (0004,1420) count bytes from the
    start of the file (preamble included), as PS3.10 section 7.5 and FileSet have them.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    head = DicomBytesIO()
    head.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    head.is_little_endian = True
    head.is_implicit_VR = False
    top = Dataset()
    top.FileSetID = None
    top.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    top.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    top.FileSetConsistencyFlag = 0
    first_at = last_at = 0
    for elem in top:
        if elem.tag == 0x00041200:
            first_at = head.tell() + 8
        elif elem.tag == 0x00041202:
            last_at = head.tell() + 8
        write_data_element(head, elem)
    # Directory Record Sequence of defined length: tag, "SQ", 2 reserved, UL length.
    seq_header_at = head.tell()
    nodes = _walk(plan.roots)
    offset = seq_header_at + 12
    for node in nodes:
        _encode(node)
        node.offset = offset
        offset += 8 + len(node.encoded)
    for siblings in [plan.roots, *(list(n.children.values()) for n in nodes)]:
        for this, following in itertools.pairwise(siblings):
            this.encoded = _patched(this.encoded, this.next_at, following.offset)
        for node in siblings:
            if node.children:
                lower = next(iter(node.children.values())).offset
                node.encoded = _patched(node.encoded, node.lower_at, lower)
    body = b"".join(_item(node) for node in nodes)
    data = bytearray(head.getvalue())
    if plan.roots:
        struct.pack_into("<I", data, first_at, plan.roots[0].offset)
        struct.pack_into("<I", data, last_at, plan.roots[-1].offset)
    data += struct.pack("<HH2sHI", 0x0004, 0x1220, b"SQ", 0, len(body)) + body
    target.write_bytes(bytes(data))


def _patched(encoded: bytes, at: int, value: int) -> bytes:
    buffer = bytearray(encoded)
    struct.pack_into("<I", buffer, at, value)
    return bytes(buffer)
