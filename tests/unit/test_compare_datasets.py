"""Element-by-element comparison: re-encoded copies are equivalent, edits are named."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.uid import ImplicitVRLittleEndian

from dvdexit_cli.dicom.digest import dataset_digest
from dvdexit_cli.samples import make_sample_dvd
from dvdexit_cli.transport.dimse_query import compare_datasets


def _one_file(tmp_path: Path) -> Path:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=1, sc_images=1)
    return next(iter(media.path_by_sop_uid.values()))


def test_a_copy_in_another_transfer_syntax_has_other_bytes_but_no_differing_element(
    tmp_path: Path,
) -> None:
    sent = _one_file(tmp_path)
    ds = pydicom.dcmread(sent)
    for n, syntax in enumerate((ImplicitVRLittleEndian,)):
        ds.file_meta.TransferSyntaxUID = syntax
        copy = tmp_path / f"copy{n}.dcm"
        ds.save_as(copy, enforce_file_format=True)
        assert dataset_digest(copy)[1] != dataset_digest(sent)[1]
        assert compare_datasets(sent, copy) == []


def test_an_edited_copy_names_the_elements_never_their_values(tmp_path: Path) -> None:
    sent = _one_file(tmp_path)
    ds = pydicom.dcmread(sent)
    ds.SeriesDescription = "SECRET-VALUE"
    del ds.InstanceNumber
    copy = tmp_path / "copy.dcm"
    ds.save_as(copy, enforce_file_format=True)

    differing = compare_datasets(sent, copy)

    assert set(differing) == {"SeriesDescription", "InstanceNumber"}
    assert not any("SECRET" in d for d in differing)


def test_a_sent_file_that_is_gone_is_an_input_error_not_a_crash(tmp_path: Path) -> None:
    import pytest

    from dvdexit_cli.errors import InputError

    retrieved = _one_file(tmp_path)
    with pytest.raises(InputError, match="cannot be read for comparison"):
        compare_datasets(tmp_path / "ejected-dvd" / "IM0001", retrieved)
