"""Zip files and ISO images as inputs: unpacked safely, member by member, then scanned.

A hospital gets studies as a zip from a portal or as the ISO image of a DVD. Both are
untrusted: a member named ``../../etc/cron.d/x`` or ``/etc/passwd`` must be refused on
its own, and the rest of the archive must still be found.
"""

from __future__ import annotations

import os
import shutil
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


# -- archives that expand without limit (docs/security.md, "zip bombs") ------------------


def _zip_with_bomb(tmp_path: Path, bomb_size: int) -> Path:
    files = write_study(tmp_path / "study", n_instances=2, seed="bomb")
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(files[0], "A/IM1")
        with zf.open("A/BOMB", "w") as member:
            zeros = bytes(1 << 20)
            for _ in range(bomb_size >> 20):
                member.write(zeros)
        zf.write(files[1], "A/IM2")
    return archive


def test_a_zip_bomb_member_is_refused_and_the_other_members_are_found(tmp_path: Path) -> None:
    archive = _zip_with_bomb(tmp_path, 64 << 20)
    assert archive.stat().st_size < 1 << 20

    result = scan([archive], unpack_dir=tmp_path / "unpacked")

    assert sorted(i.path.name for i in result.instances) == ["IM1", "IM2"]
    (refused,) = result.rejected
    assert str(refused.path) == f"{archive}!/A/BOMB"
    assert refused.disposition == "failed"
    assert "times its compressed size" in refused.reason
    assert not [p for p in (tmp_path / "unpacked").rglob("BOMB*")]


def _lie_about_size(archive: Path, name: str, declared: int) -> None:
    """Make the local and central headers of ``name`` declare ``declared`` bytes."""
    data = bytearray(archive.read_bytes())
    encoded = name.encode()
    for signature, size_at, name_at in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
        start = 0
        while (start := data.find(signature, start)) >= 0:
            if data[start + name_at : start + name_at + len(encoded)] == encoded:
                data[start + size_at : start + size_at + 4] = declared.to_bytes(4, "little")
            start += 4
    archive.write_bytes(bytes(data))


def test_a_member_larger_than_its_header_says_is_refused_and_leaves_no_partial_file(
    tmp_path: Path,
) -> None:
    files = write_study(tmp_path / "study", n_instances=2, seed="liar")
    archive = tmp_path / "liar.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(files[0], "IM1")
        zf.writestr("LIAR", os.urandom(1 << 20))
        zf.write(files[1], "IM2")
    _lie_about_size(archive, "LIAR", 1000)
    with zipfile.ZipFile(archive) as zf:
        assert zf.getinfo("LIAR").file_size == 1000

    result = scan([archive], unpack_dir=tmp_path / "unpacked")

    assert sorted(i.path.name for i in result.instances) == ["IM1", "IM2"]
    (refused,) = result.rejected
    assert str(refused.path) == f"{archive}!/LIAR"
    assert refused.disposition == "failed"
    assert "declared size" in refused.reason
    assert not [p for p in (tmp_path / "unpacked").rglob("LIAR*")]


def test_members_are_refused_when_the_disk_would_be_left_without_its_margin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = write_study(tmp_path / "study", n_instances=2, seed="full")
    archive = tmp_path / "full.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            zf.write(f, f.name)
    image = tmp_path / "full.iso"
    build_iso(tmp_path / "study", image)
    real_usage = shutil.disk_usage

    def nearly_full(path: str | os.PathLike[str]) -> object:
        usage = real_usage(path)
        return usage._replace(free=64 << 20)  # below the margin kept for the journal

    monkeypatch.setattr(shutil, "disk_usage", nearly_full)

    result = scan([archive, image], unpack_dir=tmp_path / "unpacked")

    assert result.instances == []
    assert len(result.rejected) == 2 * len(files)
    for refused in result.rejected:
        assert refused.disposition == "failed"
        assert "free" in refused.reason and "not unpacked" in refused.reason
    assert not [p for p in (tmp_path / "unpacked").rglob("*") if p.is_file()]
