"""The instance digest, and the cheap checks that a DICOM file is whole.

The digest is SHA-256 over the encoded dataset bytes that follow the File Meta
Information, exactly as they are in the file. A DIMSE transfer that keeps the transfer
syntax carries exactly these bytes, so sender, receiver and journal agree on it.

The structure check walks the dataset's element headers (seeking over values, never
decoding them) to prove that every declared length fits in the file: a truncated file is
caught before it is sent, without reading its pixel data into memory.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "CHUNK_SIZE",
    "FileMeta",
    "MalformedFileError",
    "NotPart10Error",
    "check_structure",
    "dataset_digest",
    "digest_stream",
    "needs_padding",
    "read_file_meta",
]

CHUNK_SIZE = 1 << 20
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_ITEM = (0xFFFE, 0xE000)
_ITEM_END = (0xFFFE, 0xE00D)
_SEQ_END = (0xFFFE, 0xE0DD)
_DEFLATED = "1.2.840.10008.1.2.1.99"
_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
_MAX_DEPTH = 64


class NotPart10Error(ValueError):
    """The file is not a DICOM Part 10 file (empty, or no 'DICM' after the preamble)."""


class MalformedFileError(ValueError):
    """The file starts like DICOM but its structure is broken (truncated, bad lengths)."""


@dataclass(frozen=True)
class FileMeta:
    """What the File Meta Information says, and where the dataset starts."""

    transfer_syntax: str
    sop_class_uid: str
    sop_instance_uid: str
    dataset_offset: int


def _text(value: bytes) -> str:
    return value.rstrip(b"\x00 ").decode("ascii", errors="replace")


def read_file_meta(fh: BinaryIO) -> FileMeta:
    """Parse the File Meta Information group of an open Part 10 file.

    Raises NotPart10Error when there is no preamble and 'DICM' prefix, and
    MalformedFileError when the group is broken or lacks a required element.
    """
    head = fh.read(132)
    if len(head) == 0:
        raise NotPart10Error("empty file (0 bytes)")
    if len(head) < 132 or head[128:132] != b"DICM":
        raise NotPart10Error("not a DICOM Part 10 file (no 'DICM' prefix after the preamble)")
    values: dict[int, bytes] = {}
    pos = 132
    while True:
        header = fh.read(8)
        if len(header) < 8:
            if len(header) == 0 and values:
                break  # a file holding only File Meta Information
            raise MalformedFileError("file ends inside its File Meta Information")
        group, elem = struct.unpack("<HH", header[:4])
        if group != 0x0002:
            break
        vr = header[4:6]
        if vr in _LONG_VRS:
            more = fh.read(4)
            if len(more) < 4:
                raise MalformedFileError("file ends inside its File Meta Information")
            (length,) = struct.unpack("<I", more)
            header_len = 12
        else:
            (length,) = struct.unpack("<H", header[6:8])
            header_len = 8
        if length == _UNDEFINED or length > 1 << 16:
            raise MalformedFileError(f"File Meta element (0002,{elem:04X}) has a bad length")
        value = fh.read(length)
        if len(value) < length:
            raise MalformedFileError("file ends inside its File Meta Information")
        values[elem] = value
        pos += header_len + length
    missing = [name for tag, name in _REQUIRED_META.items() if tag not in values]
    if missing:
        raise MalformedFileError(f"File Meta Information lacks {', '.join(missing)}")
    return FileMeta(
        transfer_syntax=_text(values[0x0010]),
        sop_class_uid=_text(values[0x0002]),
        sop_instance_uid=_text(values[0x0003]),
        dataset_offset=pos,
    )


_REQUIRED_META = {
    0x0002: "Media Storage SOP Class UID",
    0x0003: "Media Storage SOP Instance UID",
    0x0010: "Transfer Syntax UID",
}


class _Walker:
    """Walks element headers of an uncompressed (not deflated) dataset."""

    def __init__(self, fh: BinaryIO, end: int, transfer_syntax: str) -> None:
        self.fh = fh
        self.end = end
        self.implicit = transfer_syntax == _IMPLICIT_LE
        self.endian = ">" if transfer_syntax == _EXPLICIT_BE else "<"

    def _read(self, pos: int, n: int, where: str) -> bytes:
        if pos + n > self.end:
            raise MalformedFileError(f"file is truncated: it ends inside {where}")
        self.fh.seek(pos)
        data = self.fh.read(n)
        if len(data) < n:
            raise MalformedFileError(f"file is truncated: it ends inside {where}")
        return data

    def _tag(self, pos: int, where: str) -> tuple[int, int, bytes]:
        raw = self._read(pos, 8, where)
        group, elem = struct.unpack(self.endian + "HH", raw[:4])
        return group, elem, raw

    def dataset(self, pos: int, *, in_item: bool, depth: int) -> int:
        if depth > _MAX_DEPTH:
            raise MalformedFileError("sequences are nested too deeply")
        while pos < self.end:
            group, elem, raw = self._tag(pos, "an element header")
            if in_item and (group, elem) == _ITEM_END:
                return pos + 8
            where = f"element ({group:04X},{elem:04X})"
            if self.implicit or group == 0xFFFE:
                (length,) = struct.unpack(self.endian + "I", raw[4:8])
                header_len = 8
            elif raw[4:6] in _LONG_VRS:
                (length,) = struct.unpack(self.endian + "I", self._read(pos + 8, 4, where))
                header_len = 12
            else:
                (length,) = struct.unpack(self.endian + "H", raw[6:8])
                header_len = 8
            pos += header_len
            if length == _UNDEFINED and header_len == 12 and raw[4:6] == b"UN":
                # PS3.5 6.2.2: a UN element of undefined length holds a sequence encoded
                # in implicit VR little endian, whatever the transfer syntax.
                implicit = _Walker(self.fh, self.end, _IMPLICIT_LE)
                pos = implicit.sequence(pos, depth=depth + 1, where=where)
            elif length == _UNDEFINED:
                pos = self.sequence(pos, depth=depth + 1, where=where)
            else:
                if pos + length > self.end:
                    raise MalformedFileError(
                        f"file is truncated: {where} declares {length} bytes but only "
                        f"{self.end - pos} remain"
                    )
                pos += length
        if in_item:
            raise MalformedFileError("file is truncated: an item has no end delimiter")
        return pos

    def sequence(self, pos: int, *, depth: int, where: str) -> int:
        while True:
            group, elem, raw = self._tag(pos, where)
            (length,) = struct.unpack(self.endian + "I", raw[4:8])
            if (group, elem) == _SEQ_END:
                return pos + 8
            if (group, elem) != _ITEM:
                raise MalformedFileError(f"unexpected ({group:04X},{elem:04X}) inside {where}")
            pos += 8
            if length == _UNDEFINED:
                pos = self.dataset(pos, in_item=True, depth=depth)
            elif pos + length > self.end:
                raise MalformedFileError(f"file is truncated: an item of {where} is cut short")
            else:
                pos += length


def check_structure(fh: BinaryIO, meta: FileMeta, size: int) -> None:
    """Raise MalformedFileError unless every element length fits in the file.

    Deflated datasets are checked while digesting instead (see dataset_digest).
    """
    if meta.transfer_syntax == _DEFLATED:
        return
    _Walker(fh, size, meta.transfer_syntax).dataset(meta.dataset_offset, in_item=False, depth=0)


def digest_stream(fh: BinaryIO, *, deflated: bool = False) -> str:
    """SHA-256 (hex) of everything left in ``fh``; for deflated data, prove the stream ends.

    A deflated dataset of odd length is hashed with the one trailing NULL byte that
    PS3.5 A.5 requires of its encoding: that padded stream is what goes on the wire and
    what a receiver stores, so sender and receiver agree on the digest.
    """
    sha = hashlib.sha256()
    inflater = zlib.decompressobj(-zlib.MAX_WBITS) if deflated else None
    length = 0
    while chunk := fh.read(CHUNK_SIZE):
        sha.update(chunk)
        length += len(chunk)
        if inflater is not None:
            try:
                # Bounded output: we only need to know the stream is complete and valid.
                inflater.decompress(chunk, CHUNK_SIZE)
                while inflater.unconsumed_tail:
                    inflater.decompress(inflater.unconsumed_tail, CHUNK_SIZE)
            except zlib.error as exc:
                raise MalformedFileError(f"deflated dataset is corrupt: {exc}") from exc
    if inflater is not None and not inflater.eof:
        raise MalformedFileError("file is truncated: the deflated dataset stream does not end")
    if deflated and length % 2:
        sha.update(b"\x00")
    return sha.hexdigest()


def needs_padding(transfer_syntax: str, dataset_length: int) -> bool:
    """True for a deflated dataset of odd length, which must be sent with one NULL more."""
    return transfer_syntax == _DEFLATED and dataset_length % 2 == 1


def dataset_digest(path: Path) -> tuple[FileMeta, str]:
    """Return the File Meta Information and the dataset digest of the file at ``path``."""
    with path.open("rb") as fh:
        meta = read_file_meta(fh)
        fh.seek(meta.dataset_offset)
        return meta, digest_stream(fh, deflated=meta.transfer_syntax == _DEFLATED)
