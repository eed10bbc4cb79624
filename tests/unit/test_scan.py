"""Scanning inputs: what a hospital's DVDs and folders really hold, good and bad."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

from dvdexit_cli.dicom.digest import dataset_digest
from dvdexit_cli.dicom.scan import scan
from dvdexit_cli.errors import InputError
from dvdexit_cli.samples import make_sample_dvd, sample_uid, synthetic_instance, write_study


def bundled(name: str) -> Path:
    """A test file that ships inside pydicom (never one it would download)."""
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} is not bundled with pydicom"
    return Path(path)


def test_dvd_is_read_through_its_dicomdir_and_extras_are_skipped(tmp_path: Path) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=5, sc_images=2)

    result = scan([media.root])

    assert {i.sop_instance_uid for i in result.instances} == set(media.path_by_sop_uid)
    skipped = {r.path.name: r for r in result.rejected}
    assert set(skipped) == {"README.TXT", "AUTORUN.INF"}
    assert all(r.disposition == "skipped" for r in skipped.values())


def test_instances_come_grouped_by_study_in_series_and_instance_order(tmp_path: Path) -> None:
    write_study(tmp_path / "ct", n_instances=12, seed="order", modality="CT")
    write_study(tmp_path / "sc", n_instances=3, seed="order", modality="OT")

    result = scan([tmp_path])

    studies = [i.study_uid for i in result.instances]
    assert studies == sorted(studies, key=studies.index)  # each study contiguous
    ct = [i.instance_number for i in result.instances if i.modality == "CT"]
    assert ct == list(range(1, 13))


def test_digest_is_sha256_of_the_dataset_bytes_after_the_file_meta(tmp_path: Path) -> None:
    import hashlib

    path = write_study(tmp_path, n_instances=1, seed="digest")[0]
    raw = path.read_bytes()
    (instance,) = scan([path]).instances
    # An independent oracle: the group length element says where File Meta ends.
    group_length = int(pydicom.dcmread(path).file_meta.FileMetaInformationGroupLength)
    assert instance.dataset_offset == 128 + 4 + 12 + group_length
    assert instance.digest == hashlib.sha256(raw[instance.dataset_offset :]).hexdigest()
    assert dataset_digest(path)[1] == instance.digest


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("MR_truncated.dcm", "truncated"),
        ("rtplan_truncated.dcm", "truncated"),
        ("meta_missing_tsyntax.dcm", "Transfer Syntax"),
    ],
)
def test_a_broken_dicom_file_fails_with_its_reason_and_the_rest_is_found(
    tmp_path: Path, name: str, reason: str
) -> None:
    good = write_study(tmp_path, n_instances=3, seed="mixed")
    shutil.copy(bundled(name), tmp_path / name)

    result = scan([tmp_path])

    assert len(result.instances) == len(good)
    (rejected,) = result.rejected
    assert rejected.path.name == name
    assert rejected.disposition == "failed"
    assert reason in rejected.reason


def test_file_cut_in_the_middle_of_its_pixel_data_is_caught_before_sending(
    tmp_path: Path,
) -> None:
    path = write_study(tmp_path, n_instances=1, seed="cut")[0]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])

    result = scan([path])

    assert not result.instances
    assert "truncated" in result.rejected[0].reason
    assert "(7FE0,0010)" in result.rejected[0].reason


def test_empty_and_text_files_are_skipped_and_a_dataset_without_file_meta_fails_clearly(
    tmp_path: Path,
) -> None:
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("referral letter")
    shutil.copy(bundled("no_meta.dcm"), tmp_path / "no_meta.dcm")

    result = scan([tmp_path])

    assert not result.instances
    reasons = {r.path.name: (r.disposition, r.reason) for r in result.rejected}
    assert reasons["empty.dcm"] == ("skipped", "empty file (0 bytes)")
    assert reasons["notes.txt"][0] == "skipped"
    assert reasons["no_meta.dcm"][0] == "failed"
    assert "without the File Meta Information" in reasons["no_meta.dcm"][1]


def test_missing_input_path_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        scan([tmp_path / "nowhere"])


def test_same_instance_twice_is_sent_once(tmp_path: Path) -> None:
    path = write_study(tmp_path / "a", n_instances=1, seed="twice")[0]
    (tmp_path / "b").mkdir()
    shutil.copy(path, tmp_path / "b" / "copy.dcm")

    result = scan([tmp_path])

    assert len(result.instances) == 1
    assert result.rejected[0].disposition == "skipped"
    assert "same instance" in result.rejected[0].reason


def test_same_uid_with_other_content_fails_both_files(tmp_path: Path) -> None:
    path = write_study(tmp_path / "a", n_instances=1, seed="conflict")[0]
    ds = pydicom.dcmread(path)
    ds.StudyDescription = "CHANGED"
    (tmp_path / "b").mkdir()
    ds.save_as(tmp_path / "b" / "other.dcm", enforce_file_format=True)

    result = scan([tmp_path])

    assert not result.instances
    assert len(result.rejected) == 2
    assert all(r.disposition == "failed" for r in result.rejected)


def test_invalid_uid_in_a_file_is_refused(tmp_path: Path) -> None:
    ds = synthetic_instance(
        study_uid=sample_uid("bad", "study"),
        series_uid=sample_uid("bad", "series"),
        sop_uid=sample_uid("bad", "sop"),
    )
    ds.SeriesInstanceUID = "1.2.3/../../etc"
    ds.save_as(tmp_path / "bad.dcm", enforce_file_format=True)

    (rejected,) = scan([tmp_path]).rejected

    assert rejected.disposition == "failed"
    assert "SeriesInstanceUID is not a valid UID" in rejected.reason


def test_dicomdir_entries_that_are_missing_or_leave_the_medium_are_failures(
    tmp_path: Path,
) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=3, sc_images=1)
    victim = media.instances[0]
    victim.unlink()
    ds = pydicom.dcmread(media.dicomdir)
    records = [r for r in ds.DirectoryRecordSequence if "ReferencedFileID" in r]
    records[1].ReferencedFileID = ["..", "..", "etc", "passwd"]
    ds.save_as(media.dicomdir)

    result = scan([media.root])

    failed = [r for r in result.rejected if r.disposition == "failed"]
    assert len(failed) == 2
    assert any("missing" in r.reason for r in failed)
    assert any("outside the medium" in r.reason for r in failed)
    assert len(result.instances) == media.instance_count - 2


def test_media_names_in_another_case_are_still_found(tmp_path: Path) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=2, sc_images=1)
    lower = tmp_path / "mounted"
    shutil.copytree(media.root, lower)
    for path in sorted(lower.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        path.rename(path.with_name(path.name.lower()))

    result = scan([lower])

    assert len(result.instances) == media.instance_count


def test_file_meta_that_disagrees_with_the_dataset_is_sent_as_the_dataset_says() -> None:
    (instance,) = scan([bundled("rtplan.dcm")]).instances
    assert instance.sop_instance_uid == str(pydicom.dcmread(bundled("rtplan.dcm")).SOPInstanceUID)
    assert instance.meta_mismatch is not None


@settings(
    max_examples=int(os.environ.get("DVDEXIT_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(cut=st.integers(min_value=0, max_value=4000), flips=st.binary(min_size=0, max_size=8))
def test_damaged_files_never_crash_the_scan(tmp_path: Path, cut: int, flips: bytes) -> None:
    """Whatever the bytes, a file is an instance, a skip or a failure with a reason."""
    source = bundled("CT_small.dcm").read_bytes()
    data = bytearray(source[: max(0, len(source) - cut)])
    for offset, value in enumerate(flips):
        position = 132 + offset * 97
        if position < len(data):
            data[position] = value
    target = tmp_path / "damaged.dcm"
    target.write_bytes(bytes(data))

    result = scan([target])

    assert len(result.instances) + len(result.rejected) == 1
    for rejected in result.rejected:
        assert rejected.reason


def test_zip_file_given_as_input_is_not_mistaken_for_dicom(tmp_path: Path) -> None:
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.txt", "x")
    (rejected,) = scan([archive]).rejected
    assert rejected.disposition == "skipped"
