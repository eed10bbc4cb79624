"""Zip files and ISO images as inputs: unpacked safely, member by member, then scanned.

A hospital gets studies as a zip from a portal or as the ISO image of a DVD. Both are
untrusted: a member named ``../../etc/cron.d/x`` or ``/etc/passwd`` must be refused on
its own, and the rest of the archive must still be found.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from media_builders import build_iso, medium
from pydicom.data import get_testdata_file

from dvdexit_cli.dicom.archives import archive_kind, safe_member_parts
from dvdexit_cli.dicom.scan import scan
from dvdexit_cli.samples import write_study


def test_member_names_that_leave_the_archive_are_refused() -> None:
    assert safe_member_parts("A/B/IM1.dcm") == ["A", "B", "IM1.dcm"]
    assert safe_member_parts("A\\B\\IM1") == ["A", "B", "IM1"]
    for bad in ("../x", "a/../../x", "/etc/passwd", "\\\\server\\share", "C:\\x", "", "./"):
        assert safe_member_parts(bad) is None, bad


def test_zip_with_hostile_names_unpacks_the_rest_and_refuses_each_hostile_member(
    tmp_path: Path,
) -> None:
    files = write_study(tmp_path / "study", n_instances=3, seed="zip")
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            zf.write(f, f"STUDY/{f.name}")
        zf.writestr("../../escaped.dcm", files[0].read_bytes())
        zf.writestr("/abs/escaped.dcm", files[0].read_bytes())
        zf.writestr("README.TXT", "open index.htm")

    result = scan([archive], unpack_dir=tmp_path / "unpacked")

    assert sorted(i.path.name for i in result.instances) == sorted(f.name for f in files)
    assert all(i.path.is_relative_to(tmp_path / "unpacked") for i in result.instances)
    refused = {str(r.path): r for r in result.rejected if r.disposition == "failed"}
    assert set(refused) == {f"{archive}!/../../escaped.dcm", f"{archive}!/abs/escaped.dcm"}
    assert all("leaves the archive" in r.reason for r in refused.values())
    skipped = [r for r in result.rejected if r.disposition == "skipped"]
    assert [str(r.path) for r in skipped] == [f"{archive}!/README.TXT"]
    assert not (tmp_path / "escaped.dcm").exists()
    assert not list(tmp_path.parent.glob("escaped.dcm"))


def test_a_damaged_zip_is_one_failure_and_the_other_inputs_are_found(tmp_path: Path) -> None:
    files = write_study(tmp_path / "study", n_instances=2, seed="damaged-zip")
    archive = tmp_path / "study" / "broken.zip"
    archive.write_bytes(b"PK\x03\x04" + b"\x00" * 100)

    result = scan([tmp_path / "study"], unpack_dir=tmp_path / "unpacked")

    assert len(result.instances) == len(files)
    (failure,) = result.rejected
    assert failure.path == archive and "damaged zip" in failure.reason


def test_dicomdir_medium_as_folder_zip_and_iso_yields_the_same_instances(tmp_path: Path) -> None:
    folder = medium(tmp_path / "medium")
    archive = tmp_path / "medium.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    image = tmp_path / "medium.iso"
    build_iso(folder, image)

    as_folder = scan([folder])
    as_zip = scan([archive], unpack_dir=tmp_path / "u1")
    as_iso = scan([image], unpack_dir=tmp_path / "u2")

    assert (archive_kind(archive), archive_kind(image), archive_kind(folder / "DICOMDIR")) == (
        "zip",
        "iso",
        None,
    )

    def found(result: object) -> set[tuple[str, str]]:
        return {(i.sop_instance_uid, i.digest) for i in result.instances}  # type: ignore[attr-defined]

    assert len(as_folder.instances) == 31
    assert found(as_zip) == found(as_folder) == found(as_iso)
    assert [r.reason for r in as_iso.rejected] == [r.reason for r in as_folder.rejected]


# -- property-based: hostile archives never crash the scan nor escape its folder -------------

_NAME_PART = st.sampled_from(["..", ".", "", "a", "B", "IM1.dcm", "x:y", "C:", "~", "DICOMDIR"])
_MEMBER_NAME = st.lists(_NAME_PART, min_size=1, max_size=4).flatmap(
    lambda parts: st.sampled_from(["/", "\\"]).map(lambda sep: sep.join(parts))
)


def _dicom_bytes() -> bytes:
    return Path(get_testdata_file("CT_small.dcm")).read_bytes()  # type: ignore[arg-type]


@settings(
    max_examples=int(os.environ.get("DVDEXIT_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    members=st.lists(
        st.tuples(
            _MEMBER_NAME,
            st.one_of(
                st.binary(max_size=64),
                st.integers(min_value=0, max_value=2000).map(lambda cut: _dicom_bytes()[:cut]),
                st.just(b"dicom"),
            ),
        ),
        max_size=6,
    ),
    absolute_prefix=st.booleans(),
)
@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_hostile_zip_files_never_crash_the_scan_nor_escape_and_every_member_is_accounted(
    tmp_path: Path, members: list[tuple[str, bytes]], absolute_prefix: bool
) -> None:
    with tempfile.TemporaryDirectory(dir=tmp_path) as work:
        root = Path(work)
        archive = root / "in" / "export.zip"
        archive.parent.mkdir()
        with zipfile.ZipFile(archive, "w") as zf:
            for n, (name, data) in enumerate(members):
                member = ("/" if absolute_prefix and n == 0 else "") + name
                zf.writestr(zipfile.ZipInfo(member), _dicom_bytes() if data == b"dicom" else data)
        before = {p for p in root.rglob("*")}

        result = scan([archive], unpack_dir=root / "unpacked")

        created = {p for p in root.rglob("*")} - before
        assert all(p.is_relative_to(root / "unpacked") for p in created)
        assert all(i.path.is_relative_to(root / "unpacked") for i in result.instances)
        files_or_refusals = len(result.instances) + len(result.rejected)
        # Every member ends as an instance, a refusal, or was overwritten by a later
        # member of the same name (zip allows duplicates): never silently dropped.
        unpacked_files = [p for p in (root / "unpacked").rglob("*") if p.is_file()]
        assert files_or_refusals >= len(unpacked_files)
        hostile = sum(
            safe_member_parts(zi.filename) is None
            for zi in zipfile.ZipFile(archive).infolist()
            if not zi.filename.endswith("/")
        )
        refused = [r for r in result.rejected if "leaves the archive" in r.reason]
        assert len(refused) == hostile
