"""The synthetic studies and DVD media that every other test and the demo build on."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from peers import require_tool, run_dcmsend
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.fileset import FileSet
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    SecondaryCaptureImageStorage,
)

from dvdexit_cli.samples import (
    SUPPORTED_TRANSFER_SYNTAXES,
    make_sample_dvd,
    make_small_instances,
    sample_uid,
    synthetic_instance,
    write_study,
)

UID_GRAMMAR = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def dicom_files_under(root: Path) -> set[Path]:
    found = set()
    for path in root.rglob("*"):
        if not path.is_file() or path.name == "DICOMDIR":
            continue
        try:
            dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            continue
        found.add(path.resolve())
    return found


def dciodvfy_errors(path: Path) -> list[str]:
    tool = require_tool("dciodvfy")
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if "Error" in line]


def test_sample_dvd_dicomdir_references_exactly_the_instances_on_the_medium(tmp_path: Path):
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=5, sc_images=3)

    fs = FileSet(dcmread(media.root / "DICOMDIR"))

    assert media.dicomdir == media.root / "DICOMDIR"
    assert len(fs) == media.instance_count == len(media.instances) == 8
    indexed = {str(i.SOPInstanceUID): Path(i.path).resolve() for i in fs}
    assert indexed == media.path_by_sop_uid
    assert set(indexed.values()) == set(media.instances) == dicom_files_under(media.root)


def test_sample_dvd_holds_one_patient_with_a_ct_and_a_secondary_capture_study(tmp_path: Path):
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=4, sc_images=2)

    datasets = [dcmread(p, stop_before_pixels=True) for p in media.instances]

    assert {ds.PatientID for ds in datasets} == {"DEMO0001"}
    assert {str(ds.PatientName) for ds in datasets} == {"DEMO^PATIENT"}
    assert [str(ds.StudyInstanceUID) for ds in datasets] == [media.study_uids[0]] * 4 + [
        media.study_uids[1]
    ] * 2
    assert [ds.SOPClassUID for ds in datasets] == [CTImageStorage] * 4 + [
        SecondaryCaptureImageStorage
    ] * 2
    assert [ds.InstanceNumber for ds in datasets] == [1, 2, 3, 4, 1, 2]


def test_sample_dvd_carries_non_dicom_files_like_a_real_disc(tmp_path: Path):
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=1, sc_images=1)

    for name in ("README.TXT", "AUTORUN.INF"):
        extra = media.root / name
        assert extra.is_file()
        assert extra not in media.instances
        with pytest.raises(InvalidDicomError):
            dcmread(extra)


def test_sample_dvd_refuses_to_overwrite_an_existing_medium(tmp_path: Path):
    make_sample_dvd(tmp_path / "dvd", ct_slices=1, sc_images=1)

    with pytest.raises(FileExistsError):
        make_sample_dvd(tmp_path / "dvd", ct_slices=1, sc_images=1)


def test_same_seed_writes_the_same_media_byte_for_byte(tmp_path: Path):
    first = make_sample_dvd(tmp_path / "a", seed="repeat", ct_slices=3, sc_images=2)
    second = make_sample_dvd(tmp_path / "b", seed="repeat", ct_slices=3, sc_images=2)

    assert first.study_uids == second.study_uids
    assert list(first.path_by_sop_uid) == list(second.path_by_sop_uid)
    for a, b in zip(first.instances, second.instances, strict=True):
        assert a.relative_to(first.root) == b.relative_to(second.root)
        assert a.read_bytes() == b.read_bytes()
    assert first.dicomdir.read_bytes() == second.dicomdir.read_bytes()


def test_other_seed_writes_other_uids(tmp_path: Path):
    first = make_sample_dvd(tmp_path / "a", seed="one", ct_slices=2, sc_images=1)
    second = make_sample_dvd(tmp_path / "b", seed="two", ct_slices=2, sc_images=1)

    assert not set(first.study_uids) & set(second.study_uids)
    assert not set(first.path_by_sop_uid) & set(second.path_by_sop_uid)


def test_uids_are_valid_and_distinct_across_instances(tmp_path: Path):
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=24, sc_images=4)
    datasets = [dcmread(p, stop_before_pixels=True) for p in media.instances]

    sop_uids = [str(ds.SOPInstanceUID) for ds in datasets]
    series_uids = {str(ds.SeriesInstanceUID) for ds in datasets}
    all_uids = [*sop_uids, *series_uids, *media.study_uids]

    assert len(set(sop_uids)) == len(sop_uids) == 28
    assert len(series_uids) == 2
    assert len(set(all_uids)) == len(all_uids)
    for uid in all_uids:
        assert len(uid) <= 64 and UID_GRAMMAR.match(uid), uid
    for ds in datasets:
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def test_sample_uid_depends_only_on_its_parts():
    assert sample_uid("a", "b") == sample_uid("a", "b")
    assert sample_uid("a", "b") != sample_uid("a", "c")
    assert sample_uid("ab") != sample_uid("a", "b")


def test_write_study_is_deterministic_and_names_files_in_order(tmp_path: Path):
    first = write_study(tmp_path / "a", n_instances=3, modality="CT", seed="s")
    second = write_study(tmp_path / "b", n_instances=3, modality="CT", seed="s")

    assert [p.name for p in first] == ["CT00001.dcm", "CT00002.dcm", "CT00003.dcm"]
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    studies = {str(dcmread(p).StudyInstanceUID) for p in first}
    assert studies == {sample_uid("s", "CT", "study")}


@pytest.mark.parametrize("syntax", sorted(SUPPORTED_TRANSFER_SYNTAXES))
@pytest.mark.parametrize("modality", ["CT", "OT"])
def test_instances_can_be_written_in_every_supported_transfer_syntax(
    tmp_path: Path, syntax: str, modality: str
):
    [path] = write_study(
        tmp_path, n_instances=1, modality=modality, seed="ts", transfer_syntax=syntax
    )

    ds = dcmread(path)

    assert ds.file_meta.TransferSyntaxUID == syntax
    assert ds.Modality == modality
    if syntax != RLELossless:
        frame = ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated // 8
        assert len(ds.PixelData) == frame


def test_big_endian_pixels_hold_the_same_values_as_little_endian(tmp_path: Path):
    uids = {"study_uid": "1.2.3", "series_uid": "1.2.3.4", "sop_uid": "1.2.3.4.5"}
    little = synthetic_instance(**uids, transfer_syntax=ExplicitVRLittleEndian)
    big = synthetic_instance(**uids, transfer_syntax=ExplicitVRBigEndian)
    big.save_as(tmp_path / "big.dcm", enforce_file_format=True)

    read_back = dcmread(tmp_path / "big.dcm").PixelData

    swapped = bytearray(read_back)
    swapped[0::2], swapped[1::2] = read_back[1::2], read_back[0::2]
    assert bytes(swapped) == little.PixelData


def test_unknown_modality_or_syntax_is_refused():
    uids = {"study_uid": "1.2.3", "series_uid": "1.2.3.4", "sop_uid": "1.2.3.4.5"}
    with pytest.raises(ValueError, match="modality"):
        synthetic_instance(**uids, modality="MR")
    with pytest.raises(ValueError, match="transfer syntax"):
        synthetic_instance(**uids, transfer_syntax=JPEGBaseline8Bit)


def test_small_instances_are_one_study_with_distinct_uids(tmp_path: Path):
    paths = make_small_instances(tmp_path, 300, seed="many")

    datasets = [dcmread(p) for p in paths]

    assert len(paths) == 300
    assert paths[0].name == "IM000001.dcm"
    assert len({ds.SOPInstanceUID for ds in datasets}) == 300
    assert len({ds.StudyInstanceUID for ds in datasets}) == 1
    assert [ds.InstanceNumber for ds in datasets] == list(range(1, 301))
    assert all(ds.Rows == ds.Columns == 8 for ds in datasets)
    assert all(ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID for ds in datasets)


def test_small_instances_are_what_pydicom_itself_would_write(tmp_path: Path):
    paths = make_small_instances(tmp_path / "fast", 3, seed="bytes")

    for path in paths:
        ds = dcmread(path)
        again = tmp_path / f"again-{path.name}"
        ds.save_as(again, enforce_file_format=True)
        assert again.read_bytes() == path.read_bytes()


def test_ct_and_secondary_capture_instances_pass_dciodvfy(tmp_path: Path):
    ct = write_study(tmp_path / "ct", n_instances=1, modality="CT", seed="v")[0]
    sc = write_study(tmp_path / "sc", n_instances=1, modality="OT", seed="v")[0]
    small = make_small_instances(tmp_path / "small", 1, seed="v")[0]

    for path in (ct, sc, small):
        assert dciodvfy_errors(path) == [], path


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian, RLELossless])
def test_instances_in_other_syntaxes_pass_dciodvfy(tmp_path: Path, syntax: str):
    # dicom3tools cannot read Deflated Explicit VR Little Endian, so it is left out.
    assert syntax != DeflatedExplicitVRLittleEndian
    [path] = write_study(tmp_path, n_instances=1, modality="CT", seed="v", transfer_syntax=syntax)

    assert dciodvfy_errors(path) == []


def test_sample_dvd_dicomdir_passes_dciodvfy(tmp_path: Path):
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=2, sc_images=1)

    assert dciodvfy_errors(media.dicomdir) == []


@pytest.mark.peer
def test_dcmtk_reads_the_dicomdir_and_sends_every_instance(tmp_path: Path, storescp):
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=6, sc_images=2)
    peer = storescp(tmp_path / "received")

    result = run_dcmsend(
        media.dicomdir, peer.port, called_ae=peer.ae, extra=["--read-from-dicomdir"]
    )

    assert result.returncode == 0, result.stderr
    received = {str(dcmread(p).SOPInstanceUID) for p in peer.stored_files()}
    assert received == set(media.path_by_sop_uid)
