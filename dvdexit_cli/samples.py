"""Synthetic DICOM studies and DVD-like media for tests, demos and benchmarks.

Everything here is made up: patients are called ``DEMO^PATIENT`` with IDs such as
``DEMO0001``, pixels are a small deterministic pattern, and every UID is derived from a
seed, so the same call writes the same objects (and the same digests) every time.

The module never prints; it only writes files and returns their paths.
"""

from __future__ import annotations

import os
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.fileset import FileSet
from pydicom.filewriter import write_data_element, write_dataset, write_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

__all__ = [
    "DEFAULT_PATIENT_ID",
    "DEFAULT_PATIENT_NAME",
    "SUPPORTED_TRANSFER_SYNTAXES",
    "SampleMedia",
    "make_sample_dvd",
    "make_small_instances",
    "sample_uid",
    "synthetic_instance",
    "write_large_instance",
    "write_study",
]

DEFAULT_PATIENT_NAME = "DEMO^PATIENT"
DEFAULT_PATIENT_ID = "DEMO0001"

#: Transfer syntaxes :func:`synthetic_instance` can write without third-party codecs.
SUPPORTED_TRANSFER_SYNTAXES: frozenset[str] = frozenset(
    {
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
        RLELossless,
    }
)

# Fixed dates and times keep the files byte-for-byte reproducible.
_STUDY_DATE = "20240115"
_BIRTH_DATE = "19700101"
_MANUFACTURER = "dvdexit synthetic samples"
_README_TXT = """\
DEMO MEDIA - SYNTHETIC DATA ONLY

This disc was written by dvdexit (dvdexit_cli.samples) to look like the DVD a patient
brings from another hospital. The patient and every image on it are made up.
Open DICOMDIR with a DICOM viewer, or send it with: dvdexit send <this folder> --to PEER
"""
_AUTORUN_INF = "[autorun]\r\nopen=VIEWER\\VIEWER.EXE\r\nlabel=DEMO PATIENT\r\n"


@dataclass(frozen=True)
class SampleMedia:
    """A DVD-like medium written by :func:`make_sample_dvd`."""

    root: Path
    dicomdir: Path
    instances: list[Path]
    study_uids: list[str]
    instance_count: int
    path_by_sop_uid: dict[str, Path]


def sample_uid(*parts: str) -> UID:
    """Return a UID derived only from ``parts``: same parts, same UID."""
    # generate_uid() concatenates its sources; length prefixes keep ("ab",) and ("a", "b") apart.
    return generate_uid(entropy_srcs=["dvdexit-samples", *(f"{len(p)}:{p}" for p in parts)])


def _normalise_modality(modality: str) -> str:
    key = modality.upper()
    if key == "CT":
        return "CT"
    if key in {"OT", "SC"}:
        return "OT"
    raise ValueError(f"unsupported sample modality {modality!r}: use 'CT' or 'OT'")


def _ct_pixels(rows: int, cols: int, instance_number: int, *, big_endian: bool) -> bytes:
    """A 12-bit pattern: a soft gradient with a bright disc whose size changes per slice."""
    cy, cx = rows / 2, cols / 2
    radius = max(rows, cols) * (0.15 + 0.05 * (instance_number % 5))
    r2 = radius * radius
    values = array("H")
    for y in range(rows):
        dy2 = (y - cy) ** 2
        for x in range(cols):
            if dy2 + (x - cx) ** 2 <= r2:
                values.append(2048 + (instance_number * 37) % 512)
            else:
                values.append((x * 1024 // max(cols, 1) + y * 512 // max(rows, 1)) % 4096)
    if big_endian != (sys.byteorder == "big"):
        values.byteswap()
    return values.tobytes()


def _rgb_pixels(rows: int, cols: int, instance_number: int) -> bytes:
    """Eight vertical colour bars, shifted by the instance number."""
    bars = (
        (255, 255, 255),
        (255, 255, 0),
        (0, 255, 255),
        (0, 255, 0),
        (255, 0, 255),
        (255, 0, 0),
        (0, 0, 255),
        (0, 0, 0),
    )
    row = bytearray()
    for x in range(cols):
        row.extend(bars[(x * len(bars) // max(cols, 1) + instance_number) % len(bars)])
    return bytes(row) * rows


def synthetic_instance(
    *,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    modality: str = "CT",
    rows: int = 64,
    cols: int = 64,
    instance_number: int = 1,
    patient_name: str = DEFAULT_PATIENT_NAME,
    patient_id: str = DEFAULT_PATIENT_ID,
    study_description: str = "DEMO SYNTHETIC STUDY",
    series_number: int = 1,
    transfer_syntax: str = ExplicitVRLittleEndian,
    frame_of_reference_uid: str | None = None,
    study_id: str = "1",
    accession_number: str = "DEMOACC0001",
    study_time: str = "093000",
) -> Dataset:
    """Build one synthetic instance with File Meta Information, ready for ``save_as``.

    ``modality`` "CT" gives CT Image Storage (16-bit MONOCHROME2); "OT" (or "SC") gives
    Secondary Capture Image Storage (8-bit RGB). Raises ValueError for other modalities,
    for transfer syntaxes outside :data:`SUPPORTED_TRANSFER_SYNTAXES` and for empty images.
    Write the result with ``ds.save_as(path, enforce_file_format=True)``.
    """
    modality = _normalise_modality(modality)
    if transfer_syntax not in SUPPORTED_TRANSFER_SYNTAXES:
        raise ValueError(f"unsupported transfer syntax for samples: {transfer_syntax}")
    if rows < 1 or cols < 1:
        raise ValueError("rows and cols must be positive")
    sop_class = CTImageStorage if modality == "CT" else SecondaryCaptureImageStorage
    syntax = UID(transfer_syntax)
    # RLE is applied after the dataset is built; its pixels start out native little endian.
    big_endian = syntax == ExplicitVRBigEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian if syntax == RLELossless else syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.InstanceCreationDate = _STUDY_DATE
    ds.InstanceCreationTime = study_time
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = _STUDY_DATE
    ds.StudyTime = study_time
    ds.ContentDate = _STUDY_DATE
    ds.ContentTime = study_time
    ds.AccessionNumber = accession_number
    ds.Modality = modality
    ds.Manufacturer = _MANUFACTURER
    ds.InstitutionName = "DEMO HOSPITAL"
    ds.ReferringPhysicianName = "DEMO^REFERRER"
    ds.StudyDescription = study_description
    ds.SeriesDescription = "DEMO CT SERIES" if modality == "CT" else "DEMO SCANNED IMAGES"
    # Without it dciodvfy asks for Laterality (a chest is not a paired body part).
    ds.BodyPartExamined = "CHEST"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = _BIRTH_DATE
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = study_id
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.Rows = rows
    ds.Columns = cols
    ds.PixelRepresentation = 0

    if modality == "CT":
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.KVP = "120"
        ds.AcquisitionNumber = 1
        ds.PatientPosition = "HFS"
        ds.FrameOfReferenceUID = frame_of_reference_uid or sample_uid(study_uid, "frame")
        ds.PositionReferenceIndicator = ""
        ds.SliceThickness = "2.5"
        ds.PixelSpacing = ["0.7", "0.7"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        z = f"{-2.5 * (instance_number - 1):.1f}"
        ds.ImagePositionPatient = [f"{-0.35 * cols:.2f}", f"{-0.35 * rows:.2f}", z]
        ds.SliceLocation = z
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.PixelData = _ct_pixels(rows, cols, instance_number, big_endian=big_endian)
    else:
        ds.ConversionType = "WSD"
        ds.PatientOrientation = ""
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
        ds.BitsAllocated = 8
        ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelData = _rgb_pixels(rows, cols, instance_number)

    if syntax == RLELossless:
        ds.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
    return ds


def _study_datasets(
    *,
    n_instances: int,
    modality: str,
    seed: str,
    patient_name: str,
    patient_id: str,
    study_description: str | None,
    rows: int,
    cols: int,
    transfer_syntax: str,
    study_index: int,
) -> list[Dataset]:
    modality = _normalise_modality(modality)
    if n_instances < 1:
        raise ValueError("n_instances must be at least 1")
    study_uid = sample_uid(seed, modality, "study")
    series_uid = sample_uid(seed, modality, "series")
    frame_uid = sample_uid(seed, modality, "frame")
    if study_description is None:
        study_description = "DEMO CT CHEST" if modality == "CT" else "DEMO SCANNED DOCUMENTS"
    return [
        synthetic_instance(
            study_uid=study_uid,
            series_uid=series_uid,
            sop_uid=sample_uid(seed, modality, "instance", str(number)),
            modality=modality,
            rows=rows,
            cols=cols,
            instance_number=number,
            patient_name=patient_name,
            patient_id=patient_id,
            study_description=study_description,
            series_number=1,
            transfer_syntax=transfer_syntax,
            frame_of_reference_uid=frame_uid,
            study_id=f"{modality}{study_index}",
            accession_number=f"DEMO{modality}{study_index:04d}",
            study_time=f"{9 + study_index % 10:02d}3000",
        )
        for number in range(1, n_instances + 1)
    ]


def _default_size(modality: str) -> int:
    return 64 if _normalise_modality(modality) == "CT" else 32


def write_study(
    folder: Path,
    *,
    n_instances: int,
    modality: str = "CT",
    seed: str,
    patient_name: str = DEFAULT_PATIENT_NAME,
    patient_id: str = DEFAULT_PATIENT_ID,
    study_description: str | None = None,
    rows: int | None = None,
    cols: int | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> list[Path]:
    """Write one study of one series into ``folder`` and return the files in order.

    UIDs come from ``seed`` and ``modality``, so the same arguments write the same study.
    Files are named ``CT00001.dcm`` (or ``OT00001.dcm``), one per instance.
    """
    prefix = _normalise_modality(modality)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    size = _default_size(modality)
    datasets = _study_datasets(
        n_instances=n_instances,
        modality=modality,
        seed=seed,
        patient_name=patient_name,
        patient_id=patient_id,
        study_description=study_description,
        rows=size if rows is None else rows,
        cols=size if cols is None else cols,
        transfer_syntax=transfer_syntax,
        study_index=1,
    )
    paths: list[Path] = []
    for ds in datasets:
        path = folder / f"{prefix}{int(ds.InstanceNumber):05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def make_sample_dvd(
    root: Path,
    *,
    seed: str = "dvdexit-demo",
    ct_slices: int = 24,
    sc_images: int = 4,
) -> SampleMedia:
    """Write a DVD-like medium at ``root``: a DICOMDIR, two studies, and non-DICOM extras.

    One patient with a CT study (``ct_slices`` slices) and a secondary-capture study
    (``sc_images`` RGB images), in pydicom's File-set layout (``PT000000/ST000000/...``),
    plus ``README.TXT`` and ``AUTORUN.INF`` as real discs carry them. Raises
    FileExistsError if ``root`` already holds a DICOMDIR.
    """
    root = Path(root).resolve()
    if (root / "DICOMDIR").exists():
        raise FileExistsError(f"{root / 'DICOMDIR'} already exists")
    root.mkdir(parents=True, exist_ok=True)

    studies: Sequence[tuple[str, int]] = (("CT", ct_slices), ("OT", sc_images))
    fs = FileSet()
    fs.UID = sample_uid(seed, "file-set")
    fs.ID = "DVDEXIT_DEMO"
    study_uids: list[str] = []
    order: list[str] = []
    for index, (modality, count) in enumerate(studies, start=1):
        datasets = _study_datasets(
            n_instances=count,
            modality=modality,
            seed=seed,
            patient_name=DEFAULT_PATIENT_NAME,
            patient_id=DEFAULT_PATIENT_ID,
            study_description=None,
            rows=_default_size(modality),
            cols=_default_size(modality),
            transfer_syntax=ExplicitVRLittleEndian,
            study_index=index,
        )
        study_uids.append(str(datasets[0].StudyInstanceUID))
        for ds in datasets:
            fs.add(ds)
            order.append(str(ds.SOPInstanceUID))
    fs.write(root)

    by_uid: dict[str, Path] = {}
    for instance in fs:
        path = Path(instance.path).resolve()
        if not path.is_relative_to(root):  # pragma: no cover - pydicom guarantees this
            raise RuntimeError(f"File-set wrote {path} outside {root}")
        by_uid[str(instance.SOPInstanceUID)] = path

    (root / "README.TXT").write_text(_README_TXT, encoding="ascii")
    (root / "AUTORUN.INF").write_bytes(_AUTORUN_INF.encode("ascii"))

    instances = [by_uid[uid] for uid in order]
    return SampleMedia(
        root=root,
        dicomdir=root / "DICOMDIR",
        instances=instances,
        study_uids=study_uids,
        instance_count=len(instances),
        path_by_sop_uid={uid: by_uid[uid] for uid in order},
    )


_SMALL_VARYING = ("SOPInstanceUID", "InstanceNumber", "ImagePositionPatient", "SliceLocation")


def _encode_explicit_le(ds: Dataset) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_dataset(buffer, ds)
    return buffer.getvalue()


def make_small_instances(folder: Path, n: int, *, seed: str) -> list[Path]:
    """Write ``n`` tiny (8x8) CT instances of one study into ``folder``, quickly.

    Meant for stress tests with thousands of instances. Files are ``IM000001.dcm`` onwards
    and are byte-for-byte what ``save_as(path, enforce_file_format=True)`` would write.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    template = synthetic_instance(
        study_uid=sample_uid(seed, "small", "study"),
        series_uid=sample_uid(seed, "small", "series"),
        sop_uid=sample_uid(seed, "small", "instance", "1"),
        rows=8,
        cols=8,
        study_description="DEMO MANY SMALL SLICES",
        frame_of_reference_uid=sample_uid(seed, "small", "frame"),
    )
    # pydicom spends milliseconds per file walking ~60 elements; only four of them change
    # per instance, so encode the constant runs between them once and splice.
    varying = {Tag(keyword) for keyword in _SMALL_VARYING}
    constant_runs: list[bytes] = []
    run = Dataset()
    for elem in template:
        if elem.tag in varying:
            constant_runs.append(_encode_explicit_le(run))
            run = Dataset()
        else:
            run.add(elem)
    constant_runs.append(_encode_explicit_le(run))
    meta = template.file_meta

    paths: list[Path] = []
    for number in range(1, n + 1):
        sop_uid = sample_uid(seed, "small", "instance", str(number))
        z = f"{-1.0 * (number - 1):.1f}"
        changed = Dataset()
        changed.SOPInstanceUID = sop_uid
        changed.InstanceNumber = number
        changed.ImagePositionPatient = ["-2.80", "-2.80", z]
        changed.SliceLocation = z
        meta.MediaStorageSOPInstanceUID = sop_uid
        out = DicomBytesIO()
        out.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(out, meta, enforce_standard=True)
        for run_bytes, elem in zip(constant_runs, changed, strict=False):
            out.write(run_bytes)
            out.is_little_endian = True
            out.is_implicit_VR = False
            write_data_element(out, elem)
        out.write(constant_runs[-1])
        path = folder / f"IM{number:06d}.dcm"
        path.write_bytes(out.getvalue())
        paths.append(path)
    return paths


_FRAME_512 = 512 * 512 * 2


def write_large_instance(path: Path, size_mb: int, *, seed: str = "large") -> Path:
    """Write one multi-frame 512x512 16-bit CT of about ``size_mb`` MB to ``path``.

    The frames are written one at a time (one random frame, repeated), so an instance of
    gigabytes costs no more memory to make than a single frame.
    """
    frames = max(1, size_mb * 1024 * 1024 // _FRAME_512)
    ds = synthetic_instance(
        study_uid=sample_uid(seed, "large", "study"),
        series_uid=sample_uid(seed, "large", "series"),
        sop_uid=sample_uid(seed, "large", str(size_mb)),
        rows=512,
        cols=512,
    )
    del ds.PixelData
    ds.NumberOfFrames = frames
    ds.save_as(path, enforce_file_format=True)
    frame = os.urandom(_FRAME_512)
    with Path(path).open("ab") as fh:
        # Pixel Data is the dataset's last element: its header, then the frames.
        fh.write(b"\xe0\x7f\x10\x00OW\x00\x00" + (frames * _FRAME_512).to_bytes(4, "little"))
        for _ in range(frames):
            fh.write(frame)
    return Path(path)
