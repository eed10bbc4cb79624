"""Decompression for peers that accept a SOP class only uncompressed.

Lossless syntaxes (JPEG lossless, JPEG-LS lossless, JPEG 2000 lossless, RLE, HTJ2K
lossless) are decompressed with pydicom's pixel handlers (pylibjpeg plugins): the image
is the same, only its encoding changes. A lossy file is decompressed only when the user
allows it, because re-encoding a lossy image as if it were the original hides that it
was compressed.

Decompression holds the instance's pixel data in memory, unlike a normal send, which
streams the file.
"""

from __future__ import annotations

import pydicom
from pydicom.uid import UID

__all__ = ["LOSSLESS_COMPRESSED", "LOSSY_COMPRESSED", "TranscodeError", "decompressed"]

LOSSLESS_COMPRESSED = frozenset(
    {
        "1.2.840.10008.1.2.4.57",  # JPEG lossless, non-hierarchical (process 14)
        "1.2.840.10008.1.2.4.70",  # JPEG lossless, first-order prediction (SV1)
        "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless only
        "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
        "1.2.840.10008.1.2.4.202",  # HTJ2K lossless RPCL
        "1.2.840.10008.1.2.5",  # RLE lossless
    }
)
LOSSY_COMPRESSED = frozenset(
    {
        "1.2.840.10008.1.2.4.50",  # JPEG baseline
        "1.2.840.10008.1.2.4.51",  # JPEG extended
        "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
        "1.2.840.10008.1.2.4.91",  # JPEG 2000 (may be lossy)
        "1.2.840.10008.1.2.4.203",  # HTJ2K
    }
)


class TranscodeError(Exception):
    """The file could not be decompressed (no handler for it, or damaged pixel data)."""


def decompressed(path: object, transfer_syntax: str) -> pydicom.Dataset:
    """The instance at ``path``, decompressed to explicit VR little endian."""
    try:
        ds = pydicom.dcmread(path)  # type: ignore[arg-type]
        # pydicom gives a decompressed dataset a new SOP Instance UID unless told not to;
        # the receiver must get the instance under its own UID.
        ds.decompress(generate_instance_uid=False)
    except Exception as exc:  # pixel handlers raise many kinds; all mean "cannot decode"
        raise TranscodeError(f"cannot decompress {UID(transfer_syntax).name}: {exc}") from exc
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    return ds
