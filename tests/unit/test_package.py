"""Transfer packages: a DVD-like tree any viewer reads, and a manifest that proves it whole."""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pydicom
import pytest
from peers import require_tool
from pydicom.fileset import FileSet

from dvdexit_cli.dicom.digest import dataset_digest
from dvdexit_cli.dicom.scan import scan
from dvdexit_cli.engine import SendSettings, send
from dvdexit_cli.errors import NoDicomFoundError
from dvdexit_cli.exitcodes import ExitCode
from dvdexit_cli.journal import Journal
from dvdexit_cli.package import MANIFEST_NAME, Manifest, verify_package, write_package
from dvdexit_cli.package.writer import PackageWriteError
from dvdexit_cli.samples import make_sample_dvd, write_study
from dvdexit_cli.transport.memory import MemoryPeer, MemoryTransport


def _manifest() -> Manifest:
    return Manifest(created_at="2026-11-25T10:00:00Z", sender_ae="DVDEXIT", note="second opinion")


@pytest.fixture
def package(tmp_path: Path) -> Path:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=4, sc_images=2)
    found = scan([media.root])
    return write_package(found.instances, tmp_path / "pkg", manifest=_manifest()).path


def test_package_holds_every_instance_byte_for_byte_and_verifies_intact(
    tmp_path: Path, package: Path
) -> None:
    check = verify_package(package)

    assert check.verdict == "intact", check.problems
    assert check.checked == 6
    fs = FileSet(pydicom.dcmread(package / "DICOMDIR"))
    assert len(fs) == 6
    for instance in fs:
        assert all(len(part) <= 8 and part.upper() == part for part in Path(instance.FileID).parts)
    source = {i.sop_instance_uid: i.digest for i in scan([tmp_path / "dvd"]).instances}
    packaged = {i.sop_instance_uid: i.digest for i in scan([package]).instances}
    assert packaged == source
    document = json.loads((package / MANIFEST_NAME).read_text())
    assert document["instance_count"] == 6
    assert document["note"] == "second opinion"


def test_one_flipped_byte_is_named_as_tampered(package: Path) -> None:
    victim = next(p for p in sorted(package.rglob("IM*")) if p.is_file())
    data = bytearray(victim.read_bytes())
    data[-3] ^= 0x01
    victim.write_bytes(bytes(data))

    check = verify_package(package)

    assert check.verdict == "tampered"
    assert [(k, Path(n).name) for k, n, _ in check.problems] == [("tampered", victim.name)]


def test_a_missing_instance_makes_the_package_incomplete(package: Path) -> None:
    victim = next(p for p in sorted(package.rglob("IM*")) if p.is_file())
    victim.unlink()

    check = verify_package(package)

    assert check.verdict == "incomplete"
    assert ("missing", victim.relative_to(package).as_posix()) in [
        (k, n) for k, n, _ in check.problems
    ]


def test_an_edited_manifest_is_detected(package: Path) -> None:
    manifest = package / MANIFEST_NAME
    manifest.write_text(manifest.read_text().replace("second opinion", "other"))
    assert verify_package(package).verdict == "tampered"


def test_zip_package_verifies_like_the_folder(tmp_path: Path) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=2, sc_images=1)
    found = scan([media.root])
    zipped = write_package(found.instances, tmp_path / "pkg.zip", manifest=_manifest(), as_zip=True)

    assert zipfile.is_zipfile(zipped.path)
    assert verify_package(zipped.path).verdict == "intact"


def test_an_existing_target_is_never_overwritten(tmp_path: Path, package: Path) -> None:
    found = scan([package])
    before = sorted(p.name for p in package.rglob("*"))
    with pytest.raises(PackageWriteError, match="already exists"):
        write_package(found.instances, package, manifest=_manifest())
    assert sorted(p.name for p in package.rglob("*")) == before
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_dicomdir_passes_dciodvfy_and_dcmdump(package: Path) -> None:
    dciodvfy = require_tool("dciodvfy")
    dcmdump = require_tool("dcmdump")
    done = subprocess.run([dciodvfy, str(package / "DICOMDIR")], capture_output=True, text=True)
    assert [line for line in (done.stdout + done.stderr).splitlines() if "Error" in line] == []
    dumped = subprocess.run([dcmdump, str(package / "DICOMDIR")], capture_output=True, text=True)
    assert dumped.returncode == 0, dumped.stderr
    assert "DirectoryRecordSequence" in dumped.stdout


def test_package_digests_match_the_sources(tmp_path: Path) -> None:
    media = make_sample_dvd(tmp_path / "dvd", ct_slices=2, sc_images=1)
    found = scan([media.root])
    written = write_package(found.instances, tmp_path / "pkg", manifest=_manifest())
    for entry in written.manifest.entries:
        assert dataset_digest(written.path / entry.file_id)[1] == entry.digest


def test_kill_9_while_writing_leaves_no_package_at_the_target_name(tmp_path: Path) -> None:
    import signal
    import sys
    import time

    from dvdexit_cli.samples import make_small_instances

    make_small_instances(tmp_path / "many", 300, seed="kill-package")
    script = (
        "import sys; from pathlib import Path\n"
        "from dvdexit_cli.dicom.scan import scan\n"
        "from dvdexit_cli.package import Manifest, write_package\n"
        "found = scan([Path(sys.argv[1])])\n"
        "print('scanned', flush=True)\n"
        "write_package(found.instances, Path(sys.argv[2]),\n"
        "              manifest=Manifest(created_at='t', sender_ae='A'))\n"
    )
    target = tmp_path / "pkg"
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "many"), str(target)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "scanned"
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".pkg.partial-*/media/PT*")):
            assert proc.poll() is None, "the writer finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not target.exists()


# -- sending a package onward: the manifest vouches for each instance first ------------


def _send_onward(tmp_path: Path, package: Path) -> tuple[object, MemoryPeer]:
    peer = MemoryPeer()
    with Journal(tmp_path / "journal.sqlite") as journal:
        result = send(
            SendSettings(inputs=(package,), peer_name="memory", peer_address="", retries=0),
            journal=journal,
            transport=MemoryTransport(peer),
        )
    return result, peer


def test_an_intact_package_is_sent_onward_whole(tmp_path: Path, package: Path) -> None:
    result, peer = _send_onward(tmp_path, package)

    assert result.exit_code == ExitCode.OK  # type: ignore[attr-defined]
    manifest = Manifest.from_bytes((package / MANIFEST_NAME).read_bytes())
    assert set(peer.stored) == {e.sop_instance_uid for e in manifest.entries}


def test_an_edited_manifest_vouches_for_nothing_and_nothing_is_sent(
    tmp_path: Path, package: Path
) -> None:
    data = (package / MANIFEST_NAME).read_bytes()
    (package / MANIFEST_NAME).write_bytes(data.replace(b"second opinion", b"third opinion"))

    with pytest.raises(NoDicomFoundError):
        _send_onward(tmp_path, package)


def test_a_file_added_to_a_package_or_missing_from_it_is_refused_the_rest_sent(
    tmp_path: Path, package: Path
) -> None:
    manifest = Manifest.from_bytes((package / MANIFEST_NAME).read_bytes())
    gone, copied = manifest.entries[0], manifest.entries[1]
    (package / gone.file_id).unlink()
    extra = write_study(package / "EXTRA", n_instances=1, seed="smuggled")[0]

    result, peer = _send_onward(tmp_path, package)

    assert result.exit_code == ExitCode.PARTIAL_FAILURE  # type: ignore[attr-defined]
    reasons = {f.sop_instance_uid: f.reason for f in result.failures}  # type: ignore[attr-defined]
    smuggled = str(pydicom.dcmread(extra, stop_before_pixels=True).SOPInstanceUID)
    # The scan already leaves out a file the medium's DICOMDIR does not name.
    skipped = {Path(s.path).name: s.reason for s in result.skipped_files}  # type: ignore[attr-defined]
    assert "not named by the medium's DICOMDIR" in skipped[extra.name]
    assert "missing" in reasons[gone.sop_instance_uid]
    assert len(reasons) == 1  # reported once, though both DICOMDIR and manifest name it
    assert copied.sop_instance_uid in peer.stored
    assert smuggled not in peer.stored
    assert len(peer.stored) == len(manifest.entries) - 1


def test_a_dvd_image_package_verifies_and_names_a_tampered_instance(
    tmp_path: Path, package: Path
) -> None:
    from dvdexit_cli.package.verify import is_package
    from dvdexit_cli.package.writer import _write_iso

    found = scan([package])
    image = write_package(
        found.instances, tmp_path / "disc.iso", manifest=_manifest(), as_iso=True
    ).path
    manifest = Manifest.from_bytes((package / MANIFEST_NAME).read_bytes())
    victim = package / manifest.entries[0].file_id
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    _write_iso(package, tmp_path / "tampered.iso")

    assert is_package(image) and not is_package(victim)
    assert verify_package(image).verdict == "intact"
    check = verify_package(tmp_path / "tampered.iso")
    assert check.verdict == "tampered"
    assert [(k, f) for k, f, _ in check.problems] == [("tampered", manifest.entries[0].file_id)]


# -- the DICOMDIR: our own writer, checked by dciodvfy, FileSet and DCMTK ---------------


def test_a_study_of_several_series_and_mixed_sop_classes_is_indexed_whole(
    tmp_path: Path,
) -> None:
    from dvdexit_cli.dicom.reports import ENCAPSULATED_PDF, basic_text_sr, encapsulated_pdf_bytes

    ct = write_study(tmp_path / "src" / "ct", n_instances=3, seed="mixed")
    reference = pydicom.dcmread(ct[0], stop_before_pixels=True)
    pdf = encapsulated_pdf_bytes(b"%PDF-1.4\n%%EOF\n", reference=reference, title="Referral")
    sr = basic_text_sr(["No change since the prior study."], reference=reference)
    pdf.save_as(tmp_path / "src" / "doc.dcm", enforce_file_format=True)
    sr.save_as(tmp_path / "src" / "sr.dcm", enforce_file_format=True)
    found = scan([tmp_path / "src"])
    assert len(found.instances) == 5

    written = write_package(found.instances, tmp_path / "pkg", manifest=_manifest())

    fs = FileSet(pydicom.dcmread(written.path / "DICOMDIR"))
    assert {i.SOPInstanceUID for i in fs} == {i.sop_instance_uid for i in found.instances}
    assert {i.SOPInstanceUID: i.FileID.replace("\\", "/") for i in fs} == {
        e.sop_instance_uid: e.file_id for e in written.manifest.entries
    }
    records = {i.SOPInstanceUID: i.DirectoryRecordType for i in fs}
    assert records[pdf.SOPInstanceUID] == "ENCAP DOC"
    assert records[sr.SOPInstanceUID] == "SR DOCUMENT"
    assert sorted(records.values()).count("IMAGE") == 3
    # one patient, one study, three series: CT, DOC and SR
    assert len({Path(e.file_id).parts[:3] for e in written.manifest.entries}) == 3
    assert {Path(e.file_id).name[:2] for e in written.manifest.entries} == {"IM", "ED", "SR"}
    assert pdf.SOPClassUID == ENCAPSULATED_PDF
    for instance in fs:
        assert instance.load().SOPInstanceUID == instance.SOPInstanceUID
    dciodvfy = require_tool("dciodvfy")
    done = subprocess.run(
        [dciodvfy, str(written.path / "DICOMDIR")], capture_output=True, text=True
    )
    assert [line for line in (done.stdout + done.stderr).splitlines() if "Error" in line] == []
    # DCMTK reads the whole record tree (following its offsets) before it appends
    copy = tmp_path / "dcmgpdir"
    shutil.copytree(written.path, copy)
    first = written.manifest.entries[0].file_id
    appended = subprocess.run(
        [require_tool("dcmgpdir"), "+A", "-nb", "+D", "DICOMDIR", first],
        cwd=copy,
        capture_output=True,
        text=True,
    )
    assert appended.returncode == 0, appended.stderr
    assert not [line for line in appended.stderr.splitlines() if line[:2] in ("E:", "F:")]
    assert "Cannot resolve offset" not in appended.stderr  # only a warning to dcmgpdir


def test_a_file_the_dicomdir_cannot_index_is_a_clear_error_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    paths = write_study(tmp_path / "src", n_instances=2, seed="no-patient-id")
    ds = pydicom.dcmread(paths[1])
    ds.PatientID = ""
    ds.save_as(paths[1], enforce_file_format=True)
    found = scan([tmp_path / "src"])

    with pytest.raises(PackageWriteError, match="Patient ID"):
        write_package(found.instances, tmp_path / "pkg", manifest=_manifest())
    assert not (tmp_path / "pkg").exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_the_dicomdir_equals_the_one_pydicom_fileset_writes_offsets_included(
    tmp_path: Path, package: Path
) -> None:
    found = scan([tmp_path / "dvd"])
    reference = FileSet()
    for instance in found.instances:
        reference.add(pydicom.dcmread(instance.path))
    reference.write(tmp_path / "fileset")

    ours = pydicom.dcmread(package / "DICOMDIR")
    theirs = pydicom.dcmread(tmp_path / "fileset" / "DICOMDIR")

    assert [str(r) for r in ours.DirectoryRecordSequence] == [
        str(r) for r in theirs.DirectoryRecordSequence
    ]
    for keyword in (
        "OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity",
        "OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity",
    ):
        assert ours[keyword].value == theirs[keyword].value
    assert ours.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.1.3.10"
    assert ours.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
